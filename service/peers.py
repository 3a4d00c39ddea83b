"""The serving processes of one host (``workers`` > 1) agreeing on the
store version they serve.

Each process holds a journal slot (``service.ledger.Journal.claim``), which
names it: slot ``k``. In ``data_dir/peers/`` it writes ``p{k}.json``
(its pid and the version it serves) after every load, and an admin reload
(``POST /v1/admin/reload``, answered by whichever process the connection
reached) writes ``desired.json``: the version and the reload's flags, with
a sequence number. Every process polls that file (``follow_s``) and loads
what it names; the reloading process answers once every live process
(its slot's lock is held) reports the version, or after ``wait_s`` with how
many do. Files only: it works with Redis away, and a process that starts
later (a restarted worker) loads the desired version too. ``__main__``
clears the folder when a group starts.

Admin reloads take turns group-wide (``turn``: an ``flock`` on
``peers/.lock`` held from the decision to the answer), so two reloads sent
to two processes at the same moment run one after the other and the group
ends on the second; a follower reads ``desired.json`` under its own reload
lock, so it never applies an older request after a newer one.

The group's version is always on record: the first process of a group to
load one (CURRENT, nothing being decided yet) writes it to ``desired.json``
(``record_start``), so a process started later (a restart) loads the
group's version, not a CURRENT that moved since. A restarted process that
cannot load it (gone from the store) stays not ready rather than split the
group (``Runtime._initial_load``).

``VersionPin``: a serving process holds a shared ``flock`` on the directory
of the version it serves, and fa-worker's pruning (``worker.publishing``)
spares a version whose directory it cannot lock exclusively.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path

from .errors import unavailable
from .journal import slot_dirs, slot_live, try_lock

log = logging.getLogger("service")

FOLLOW_S = 0.2  # how often a process looks at desired.json, seconds
DESIRED = "desired.json"


def _write(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)  # readers see the old or the new file, never a part


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class Peers:
    def __init__(self, directory: Path, slot: int, journal_root: Path):
        self.dir, self.slot, self.journal_root = Path(directory), slot, Path(journal_root)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.seen = (self.desired() or {}).get("seq")
        self.announce(None)  # (the report of the process this one replaces is not ours)

    @asynccontextmanager
    async def turn(self, wait_s: float):
        """The group's reload turn (module doc); 503 when another reload
        holds it for more than ``wait_s`` seconds."""
        deadline = time.monotonic() + wait_s
        while (fd := try_lock(self.dir)) is None:
            if time.monotonic() > deadline:
                raise unavailable(f"another admin reload has held the group's turn for {wait_s:g} s", 2, "busy")
            await asyncio.sleep(FOLLOW_S / 4)
        try:
            yield
        finally:
            os.close(fd)  # (closing the fd releases the flock)

    def announce(self, version: str | None) -> None:
        _write(self.dir / f"p{self.slot}.json", {"pid": os.getpid(), "version": version, "t": time.time()})

    def desired(self) -> dict | None:
        return _read(self.dir / DESIRED)

    def publish(self, version: str, allow_kind_change: bool, allow_source_change: bool) -> int:
        seq = time.time_ns()
        self.seen = seq
        _write(self.dir / DESIRED, {"seq": seq, "version": version, "allow_kind_change": allow_kind_change,
                                    "allow_source_change": allow_source_change, "by": self.slot})
        return seq

    async def record_start(self, version: str) -> None:
        """``version`` (just loaded from CURRENT) becomes the group's unless
        a decision is on record already (the module doc; under the turn, so
        never over an admin reload's; this process then follows that one)."""
        while True:
            try:
                async with self.turn(3600):
                    if await asyncio.to_thread(self.desired) is None:
                        self.publish(version, False, False)
                    return
            except OSError as e:
                log.error("cannot record the group's version %s in %s (retrying in 2 s): %s", version, self.dir, e)
                await asyncio.sleep(2.0)

    def ready_peer(self) -> int | None:
        """The slot of a live process other than this one that serves a version, or None."""
        return next((k for k, v in self.serving().items() if k != self.slot and v), None)

    def serving(self) -> dict[int, str | None]:
        """Live processes (slot -> the version each last reported, None before its first load)."""
        out = {}
        for k, d in slot_dirs(self.journal_root):
            if k == self.slot or slot_live(d):
                got = _read(self.dir / f"p{k}.json")
                out[k] = got.get("version") if got else None
        return out


class VersionPin:
    """A shared ``flock`` on a served version's directory, held while the
    process serves it (module doc). A lock needs no write permission (the
    store may be mounted read only); where it cannot be taken the version is
    served unpinned, with a warning. An exclusive lock held by a pruner
    (``worker.publishing.prune``) is waited out: the directory is then gone,
    and loading it fails as for any missing version."""

    def __init__(self, path: Path, wait_s: float = 10.0):
        self.fd: int | None = None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return  # (the load says so)
        except OSError as e:
            log.warning("cannot pin %s against pruning (%s): fa-worker may delete it while served", path, e)
            return
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                reason = f"held exclusively for over {wait_s:g} s"
            except OSError as e:
                reason = str(e)
            os.close(fd)
            log.warning("cannot pin %s against pruning (%s): fa-worker may delete it while served", path, reason)
            return
        self.fd = fd

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)  # (releases the flock)


def clear(directory: Path) -> None:
    """Forget a previous group's desired version and reports (a group starting)."""
    d = Path(directory)
    if d.is_dir():
        for f in d.glob("*.json"):
            f.unlink(missing_ok=True)
