"""The credit outage journal: a bounded, append-only JSON-lines file per slot.

One record a line, ``json + "\\n"``; a record counts only once its newline
is on disk (``read``: a line that does not parse, or a last line without its
newline, is *torn* and skipped, with a warning).

**A failed append leaves the journal exactly as it was.** The write (and its
fsync) can fail part way, e.g. ``ENOSPC`` after a fragment of the line went
to disk. Left there, the next record would be appended to the fragment and
the replay would skip the merged line as torn, losing a record whose request
had been answered ``recorded: true``. So ``append`` notes the file's length
before writing and, on any ``OSError``, truncates back to it and raises
``JournalError`` (the request answers 503, nothing recorded). Should even the
truncate fail, the journal remembers the length to go back to
(``_torn_at``) and retries it before every later append and rotation: no
record is ever written, and no file rotated out for replay, behind a
fragment. A process killed in the middle of a write leaves the same kind of
fragment; opening the journal finds it (the file does not end in a newline)
and cuts it the same way before the first append.

Why truncate rather than only frame each record (say, a newline before each
one, so that a fragment becomes a torn line of its own): a failed fsync can
leave a *whole* line whose request was answered 503; framing would replay
it as credit nobody was promised (counted twice if the client retries
without an ``Idempotency-Key``). Truncating removes it; the newline rule in
``read`` still keeps a fragment from ever being read as a record.

Several serving processes share the journal root: each claims its own
*slot* (``Journal.claim``: slot 0 is the root itself, slot k ``root/p{k}``),
held by an ``flock`` on the slot's ``.lock`` for the life of the process
(service.ledger's module doc says how a slot left behind is adopted).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger("service.ledger")

_TAIL_CHUNK = 1 << 16  # bytes read at a time when looking back for the last newline


class JournalError(OSError):
    """An append that could not be made durable; the journal is as it was before it."""


def try_lock(directory: Path) -> int | None:
    """An fd holding an exclusive ``flock`` on ``directory/.lock``, or None
    when another open file (any process, this one included) holds it."""
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def slot_dirs(root: Path) -> list[tuple[int, Path]]:
    """Every journal slot under ``root`` that exists: ``(k, directory)``."""
    out = [(0, root)] if root.is_dir() else []
    for d in root.glob("p*") if root.is_dir() else []:
        if d.is_dir() and d.name[1:].isdigit():
            out.append((int(d.name[1:]), d))
    return sorted(out)


def slot_live(directory: Path) -> bool:
    """Whether a process holds the slot (its lock is taken)."""
    fd = try_lock(directory)
    if fd is None:
        return True
    os.close(fd)
    return False


def _record_end(path: Path) -> int | None:
    """The length ``path`` must be cut to so that it ends on a record's
    newline, or None when it already does (or does not exist); bytes."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        end = pos = os.fstat(fd).st_size
        if not end or os.pread(fd, 1, end - 1) == b"\n":
            return None
        while pos > 0:
            start = max(0, pos - _TAIL_CHUNK)
            nl = os.pread(fd, pos - start, start).rfind(b"\n")
            if nl >= 0:
                return start + nl + 1
            pos = start
        return 0
    finally:
        os.close(fd)


class Journal:
    """Bounded append-only JSON-lines file; thread safe (module doc)."""

    slot: int | None = None  # the slot this process holds (``claim``), else None
    root: Path | None = None  # the shared journal root of a claimed slot
    _lock_fd: int | None = None

    def __init__(self, directory: Path, max_entries: int, fsync: bool = True):
        self.dir, self.max_entries, self.fsync = Path(directory), max_entries, fsync
        self.dir.mkdir(parents=True, exist_ok=True)
        self.active = self.dir / "active.jsonl"
        self._lock = threading.Lock()
        self.failed = 0  # appends refused because the disk would not take them (each request answered 503)
        self._torn_at = _record_end(self.active)  # a fragment left by a process killed mid-write
        if self._torn_at is not None:
            log.warning("%s: a torn last line (its request was never answered) is cut before the next append",
                        self.active)
        self.entries = sum(len(self.read(p)) for p in self.dir.glob("*.jsonl"))

    @classmethod
    def claim(cls, root: Path, max_entries: int, fsync: bool = True) -> Journal:
        """The lowest slot under ``root`` no live process holds, locked for
        this process until ``release`` (or its end); its records are this
        journal's (a slot left with records is replayed as one's own)."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        k = 0
        while True:
            d = root if k == 0 else root / f"p{k}"
            d.mkdir(exist_ok=True)
            fd = try_lock(d)
            if fd is not None:
                j = cls(d, max_entries, fsync)
                j.slot, j._lock_fd, j.root = k, fd, root
                return j
            k += 1

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @staticmethod
    def read(path: Path) -> list[dict]:
        """The records of one journal file: its newline-terminated lines that parse."""
        lines = path.read_bytes().split(b"\n")
        if lines[-1]:
            log.warning("%s: skipping a last line without its newline (its append failed)", path)
        out = []
        for line in lines[:-1]:
            try:
                out.append(json.loads(line))
            except ValueError:
                log.warning("%s: skipping a torn line (its request was never answered)", path)
        return out

    def append(self, record: dict) -> bool:
        """False when full (nothing written); raises ``JournalError`` when
        the disk refused the record (nothing written either)."""
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if self.entries >= self.max_entries:
                return False
            try:
                self._write(line)
            except OSError as e:
                self.failed += 1
                raise JournalError(e.errno or errno.EIO, f"journal {self.active}: {e.strerror or e}") from e
            self.entries += 1
            return True

    def _write(self, line: bytes) -> None:
        """Append ``line`` durably, or leave the file as it was (module doc)."""
        fd = os.open(self.active, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self._cut(fd)
            size = os.fstat(fd).st_size
            try:
                view = memoryview(line)
                while view:  # a short write is followed by another try, which raises (ENOSPC) or goes on
                    view = view[os.write(fd, view):]
                if self.fsync:
                    os.fsync(fd)
            except OSError:
                self._torn_at = size
                self._cut(fd)
                raise
        finally:
            os.close(fd)

    def _cut(self, fd: int) -> None:
        """Truncate the active file back to its last record boundary when a
        failed append left something behind; raises if the disk refuses."""
        if self._torn_at is None:
            return
        os.ftruncate(fd, self._torn_at)
        if self.fsync:
            os.fsync(fd)
        self._torn_at = None

    def take(self) -> list[Path]:
        """Rotate the active file out; returns every file waiting for replay
        (the active file stays while a fragment in it cannot be cut)."""
        with self._lock:
            if self.active.exists() and self.active.stat().st_size:
                try:
                    if self._torn_at is not None:
                        fd = os.open(self.active, os.O_WRONLY)
                        try:
                            self._cut(fd)
                        finally:
                            os.close(fd)
                    self.active.rename(self.dir / f"replay-{time.time_ns()}.jsonl")
                except OSError as e:
                    log.warning("%s not rotated for replay yet: %s", self.active, e)
            return sorted(self.dir.glob("replay-*.jsonl"))

    def done(self, path: Path, n: int) -> None:
        with self._lock:
            path.unlink(missing_ok=True)
            self.entries = max(0, self.entries - n)
