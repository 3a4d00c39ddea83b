"""How fa-worker publishes: ``influence.store.publish`` / ``republish``, then
its own pruning, which spares a version that a serving process serves.

``influence.store.prune`` keeps the newest ``keep`` versions and CURRENT.
But the service may serve another one: an admin reload to an older version
(a rollback), or a group of serving processes (``--workers``) whose version
is not CURRENT. Deleting it leaves a process that restarts nothing to load
(it stays out of the group: ``service/SETTINGS.md``, Several serving
processes). So every serving process holds a **shared** ``flock`` on the
directory of each version it serves (``service.peers.VersionPin``; a lock
needs no write, so it works on the read-only store mount of
docker-compose, and it goes with the process, so a killed one leaves no
stale mark), and :func:`prune` deletes a version only under an
**exclusive**, non-blocking ``flock`` of its directory: one it cannot take
is in use and stays (logged). Where the filesystem has no ``flock`` (some
network filesystems) pruning is as before, with a warning.

The versions spared come on top of ``keep``; the next publish after the
service has moved on prunes them.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import sys
from pathlib import Path

from influence import store
from influence.errors import StoreError

log = logging.getLogger("worker")

NO_PRUNE = sys.maxsize
"""``keep`` handed to ``influence.store`` so that it prunes nothing (this module prunes)."""


def publish(root: str | Path, *args, keep: int = 3, **kw) -> Path:
    """``influence.store.publish``, then :func:`prune` to ``keep``."""
    path = store.publish(root, *args, keep=NO_PRUNE, **kw)
    prune(root, keep)
    return path


def republish(root: str | Path, *args, keep: int = 3, **kw) -> Path:
    """``influence.store.republish``, then :func:`prune` to ``keep``."""
    path = store.republish(root, *args, keep=NO_PRUNE, **kw)
    prune(root, keep)
    return path


def prune(root: str | Path, keep: int) -> list[str]:
    """Delete the oldest versions beyond ``keep``, never CURRENT nor one a
    serving process holds (module doc); -> the versions deleted."""
    if keep < 1:
        raise ValueError("keep must be >= 1")
    root = Path(root)
    try:
        cur = store.current_version(root)
    except StoreError:
        cur = None
    old = [v for v in store.list_versions(root) if v != cur]
    gone = []
    for v in old[: max(0, len(old) - (keep - 1))]:
        path = root / "versions" / v
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("not pruning %s: a serving process serves it", path)
                continue
            except OSError as e:
                log.warning("cannot tell whether a serving process serves %s (flock: %s): pruning it anyway", path, e)
            shutil.rmtree(path, ignore_errors=True)  # (under the lock: a process loading it waits, then finds none)
            gone.append(v)
        finally:
            os.close(fd)
    return gone
