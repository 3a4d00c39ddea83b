"""The credit journal on a disk that refuses writes (issue 28, row 1): a
failed append leaves the journal exactly as it was, the request answers 503
with ``Retry-After`` and nothing recorded, and after the replay every answer
that said ``recorded: true`` is credited once. Two ways: ENOSPC injected at
the journal's own write and fsync calls (runs everywhere), and a real full
512 KiB tmpfs under the data dir (where mount is permitted)."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from service.journal import Journal, JournalError
from service.ledger import new_record

from .util import free_port, query, serve, start_redis


def _rec(i: int) -> dict:
    return new_record(1, {"s": 1000 + i}, {"s": 1}, 3600, f"r{i}", now=3600.0)


def _is_journal(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").endswith(".jsonl")
    except OSError:
        return False


class DiskFull:
    """While ``on``, the journal's writes put a fragment of their bytes on
    disk and then fail with ENOSPC, and its fsyncs fail with ENOSPC (other
    files of the process are left alone)."""

    def __init__(self, monkeypatch):
        self.on, self.hits = False, 0
        real_write, real_fsync = os.write, os.fsync

        def write(fd, data):
            if self.on and _is_journal(fd):
                self.hits += 1
                if len(data) > 1:
                    return real_write(fd, bytes(data[:len(data) // 2]))  # the short write; the next one fails
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data)

        def fsync(fd):
            if self.on and _is_journal(fd):
                self.hits += 1
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_fsync(fd)

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "fsync", fsync)


def test_failed_append_leaves_the_journal_as_it_was(tmp_path, monkeypatch):
    j = Journal(tmp_path / "j", 100)
    assert j.append(_rec(0)) and j.append(_rec(1))
    before = j.active.read_bytes()
    disk = DiskFull(monkeypatch)
    disk.on = True
    for i in (2, 3):
        with pytest.raises(JournalError) as e:
            j.append(_rec(i))
        assert e.value.errno == errno.ENOSPC and "journal" in str(e.value)
        assert j.active.read_bytes() == before  # the fragment was cut
    assert disk.hits and (j.entries, j.failed) == (2, 2)
    disk.on = False
    assert j.append(_rec(4))
    assert [r["id"] for r in Journal.read(j.active)] == ["r0", "r1", "r4"]
    assert Journal(tmp_path / "j", 100).entries == 3


def test_a_fragment_that_cannot_be_cut_never_swallows_a_record(tmp_path, monkeypatch):
    """The truncate fails too (it is retried before the next append and
    rotation); a process killed mid-write leaves a fragment that the next
    process cuts before its first append."""
    j = Journal(tmp_path / "j", 100)
    assert j.append(_rec(0))
    disk = DiskFull(monkeypatch)
    disk.on = True

    def no_truncate(fd, size):
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(os, "ftruncate", no_truncate)
    with pytest.raises(OSError):
        j.append(_rec(1))
    assert j.active.read_bytes().count(b"\n") == 1 and not j.active.read_bytes().endswith(b"\n")
    monkeypatch.undo()
    assert j.append(_rec(2)) and j.append(_rec(3))
    (path,) = j.take()
    assert [r["id"] for r in Journal.read(path)] == ["r0", "r2", "r3"]
    j.done(path, 3)

    with open(j.active, "ab") as f:  # a killed process: two whole records, then a fragment
        f.write(b'{"id":"k0","bucket":0,"queries":1,"credit":{},"hits":{}}\n' * 2 + b'{"id":"k1","buck')
    again = Journal(tmp_path / "j", 100)
    assert again.entries == 2
    assert again.append(_rec(5))
    assert [r["id"] for r in Journal.read(again.active)] == ["k0", "k0", "r5"]


class Tally:
    """What the client was told: queries and credited queries of the
    answers that said ``recorded: true``, and the 503s."""

    def __init__(self):
        self.sent = self.credited = self.refused = 0

    def send(self, c: httpx.Client, train_x, i: int) -> None:
        n = 1 + i % 3
        body = {"queries": [query(train_x[(5 * i + j) % len(train_x)]) for j in range(n)], "top_k": 3}
        r = c.post("/v1/attributions", json=body)
        if r.status_code == 503:
            assert r.headers["retry-after"].isdigit(), r.headers
            assert "journal not writable" in r.json()["error"]["message"], r.text
            self.refused += 1
            return
        assert r.status_code == 200 and r.json()["recorded"] is True, r.text
        self.sent += n
        self.credited += sum(1 for a in r.json()["attributions"] if a["sources"][0]["score"] > 0)


def _check_ledger(c: httpx.Client, tally: Tally, units: int) -> None:
    deadline = time.time() + 30
    while c.get("/readyz").json()["journal_entries"] and time.time() < deadline:
        time.sleep(0.1)
    stats, v = c.get("/v1/stats").json(), c.get("/v1/sources").json()
    assert stats["journal_entries"] == 0 and stats["redis"] is True, stats
    assert stats["journal_failed"] == tally.refused, stats
    assert v["total_queries"] == tally.sent  # 0 lost, 0 double
    assert sum(src["credit_units"] for src in v["sources"]) == tally.credited * units


def _outage_run(settings, train_x, port: int, workdir: Path, fill, free) -> Tally:
    """Redis stopped; 6 requests, ``fill()``, requests until 3 are refused
    (at most 60), ``free()``, 10; Redis back."""
    proc, tally = start_redis(port, workdir), Tally()
    try:
        with serve(settings) as base, httpx.Client(base_url=base, timeout=30) as c:
            proc.kill()
            proc.wait()
            for i in range(6):
                tally.send(c, train_x, i)
            fill()
            i = 6
            while tally.refused < 3 and i < 66:
                tally.send(c, train_x, i)
                i += 1
            free()
            for k in range(i, i + 10):
                tally.send(c, train_x, k)
            assert c.get("/readyz").json()["journal_entries"] == i + 10 - tally.refused
            proc = start_redis(port, workdir)
            _check_ledger(c, tally, settings.credit_units)
    finally:
        proc.kill()
        proc.wait()
    return tally


def test_enospc_answers_503_and_every_recorded_answer_is_credited(settings_for, train_x, tmp_path, monkeypatch):
    disk = DiskFull(monkeypatch)
    workdir = tmp_path / "redis"
    workdir.mkdir()
    port = free_port()
    s = settings_for(redis_url=f"redis://127.0.0.1:{port}/0", redis_prefix="fa:", cache_ttl_s=0)
    tally = _outage_run(s, train_x, port, workdir, lambda: setattr(disk, "on", True),
                        lambda: setattr(disk, "on", False))
    assert tally.refused == 3 and tally.sent > 0


@contextmanager
def _tmpfs(path: Path, size: str = "512k"):
    path.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                       capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount permission): "
                    f"{getattr(e, 'stderr', '') or e}".strip())
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(path: Path) -> None:
    """Write ``path`` until the filesystem under it is full."""
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
        for _ in range(64):  # the last partial page
            try:
                f.write(b"\0")
            except OSError:
                break


def test_full_tmpfs_under_the_journal_loses_no_credit(settings_for, train_x, tmp_path):
    with _tmpfs(tmp_path / "small") as data:
        workdir = tmp_path / "redis"
        workdir.mkdir()
        port = free_port()
        s = settings_for(redis_url=f"redis://127.0.0.1:{port}/0", redis_prefix="fa:", cache_ttl_s=0,
                         data_dir=data)
        filler = data / "filler"
        tally = _outage_run(s, train_x, port, workdir, lambda: _fill(filler), lambda: filler.unlink())
    assert tally.refused == 3 and tally.sent > 0
