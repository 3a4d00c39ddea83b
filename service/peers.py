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
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path

from .errors import unavailable
from .journal import slot_dirs, slot_live, try_lock

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

    def announce(self, version: str) -> None:
        _write(self.dir / f"p{self.slot}.json", {"pid": os.getpid(), "version": version, "t": time.time()})

    def desired(self) -> dict | None:
        return _read(self.dir / DESIRED)

    def publish(self, version: str, allow_kind_change: bool, allow_source_change: bool) -> int:
        seq = time.time_ns()
        self.seen = seq
        _write(self.dir / DESIRED, {"seq": seq, "version": version, "allow_kind_change": allow_kind_change,
                                    "allow_source_change": allow_source_change, "by": self.slot})
        return seq

    def serving(self) -> dict[int, str | None]:
        """Live processes (slot -> the version each last reported, None before its first load)."""
        out = {}
        for k, d in slot_dirs(self.journal_root):
            if k == self.slot or slot_live(d):
                got = _read(self.dir / f"p{k}.json")
                out[k] = got.get("version") if got else None
        return out


def clear(directory: Path) -> None:
    """Forget a previous group's desired version and reports (a group starting)."""
    d = Path(directory)
    if d.is_dir():
        for f in d.glob("*.json"):
            f.unlink(missing_ok=True)
