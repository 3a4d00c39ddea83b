"""Several serving processes behind one port (``python -m service --workers
2``: uvicorn's multiprocess supervisor, two real OS processes accepting on
the same socket) keep the single process's guarantees: a Redis outage and
restart under recorded load loses and double-counts nothing (both processes
journal in their own slots and replay them); a store hot swap under load,
asked of one process, switches both before the reload answers, and every
answer comes whole from one version; an identical ``Idempotency-Key`` twin
sent to both processes at the same time computes once and counts once; a
worker killed during an outage with records in its journal slot loses none
of them (the restarted process, or the other one, replays the slot)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from ..service.util import REDIS_URL, free_port, publish_scaled, wait_ready
from .load import Tally, after_answers, compare, run_load
from .test_redis_restart import RedisProcess

REPO = Path(__file__).resolve().parents[2]
WORKERS = 2
START_S = 600
"""How long a group may take to start (the tiny hf store took over 80 s on a
busy 2-core host); a supervisor that exits ends the wait at once."""


@contextmanager
def group(store: Path, data_dir: Path, redis_url: str, prefix: str, log: Path, **settings):
    """``python -m service --workers 2`` on a free loopback port; yields ``(base, supervisor process)``."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "FA_REDIS_PREFIX": prefix,
           "FA_MAX_WAIT_MS": "2", "FA_REPLAY_INTERVAL_S": "0.2", "FA_REDIS_TIMEOUT_S": "1",
           **{f"FA_{k.upper()}": str(v) for k, v in settings.items()}}
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port), "--store", str(store),
           "--data-dir", str(data_dir), "--redis-url", redis_url, "--workers", str(WORKERS), "--log-level", "info"]
    with open(log, "wb") as out:  # cwd: the data dir, so no developer's .env is read
        proc = subprocess.Popen(cmd, cwd=data_dir, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + START_S
        while not wait_ready(base, min(deadline, time.time() + 2), interval=0.1):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"group not ready (supervisor exit status {proc.poll()}):\n"
                                   f"{log.read_text()[-3000:]}")
        if not _all_ready(base, deadline):
            raise RuntimeError(f"group not all ready:\n{log.read_text()[-3000:]}")
        yield base, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _all_ready(base: str, deadline: float) -> bool:
    """Both processes answer /readyz 200 (new connections land on either)."""
    while time.time() < deadline:
        if len(_processes(base)) == WORKERS:
            return True
        time.sleep(0.2)
    return False


def _processes(base: str, tries: int = 40) -> set[int]:
    seen = set()
    for _ in range(tries):
        try:
            r = httpx.get(base + "/readyz", timeout=5)  # a new connection each time
        except httpx.HTTPError:
            continue
        if r.status_code == 200:
            seen.add(r.json()["process"])
    return seen


def _journal(data_dir: Path) -> dict[str, int]:
    """Records waiting in each journal slot on disk."""
    out = {}
    for d in [data_dir / "journal", *sorted((data_dir / "journal").glob("p*"))]:
        out[d.name] = sum(len(p.read_text().splitlines()) for p in d.glob("*.jsonl"))
    return out


def _drained(base: str, data_dir: Path, deadline_s: float = 40) -> bool:
    end = time.time() + deadline_s
    while time.time() < end:
        if not any(_journal(data_dir).values()) and all(
                httpx.get(base + "/readyz", timeout=5).json()["redis"] for _ in range(6)):
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def mp_target(target, tmp_path):
    if target.kind == "text":
        pytest.skip("the vector and hf stores cover the multi-process scenarios (the gpt text store: one process)")
    return target


def test_two_processes_redis_restart_under_load(mp_target, tmp_path, figures):
    target = mp_target
    rs = RedisProcess(tmp_path / "redis")
    rs.dir.mkdir()
    rs.start()
    data = tmp_path / "var"
    journaled = {}

    async def stop():
        await after_answers(tally, 30)
        await asyncio.to_thread(rs.stop, signal.SIGKILL)

    async def look():  # (Redis away: journaled records wait in both slots)
        await after_answers(tally, 40)
        journaled.update(await asyncio.to_thread(_journal, data))

    async def restart():
        await asyncio.to_thread(rs.start)

    async def go_on():
        await after_answers(tally, 30)

    try:
        with group(target.root, data, f"redis://127.0.0.1:{rs.port}/0", "fa:", tmp_path / "group.log",
                   cache_ttl_s=60) as (base, _):
            st = httpx.get(base + "/v1/store").json()
            tally = Tally(st["source_ids"], 1_000_000)
            asyncio.run(run_load(base, tally, target.bodies(), concurrency=8, seconds=0, max_requests=3000,
                                 events=[(0, stop), (0, look), (0, restart), (0, go_on)], keepalive=False))
            drained = _drained(base, data)
            result = compare(tally, base)
            procs = _processes(base)
    finally:
        if rs.proc and rs.proc.poll() is None:
            rs.proc.kill()
            rs.proc.wait()
    figures.append({"scenario": f"redis kill + restart under load, 2 processes ({target.kind} store)",
                    "store_kind": target.kind, "processes": WORKERS, **result, "journaled_per_slot": journaled,
                    "concurrency": 8})
    assert procs == {0, 1}
    assert all(journaled.get(k, 0) > 0 for k in ("journal", "p1")), journaled  # both processes journaled
    assert drained, _journal(data)
    assert tally.failed == []
    assert result["lost"] == result["double_counted"] == 0, result
    assert result["credit_units_lost"] == result["credit_units_double"] == result["hits_mismatch"] == 0, result
    assert tally.queries > 50 and tally.replays > 0


def _scores(out: dict) -> list[list[tuple[str, float]]]:
    return [sorted((s["id"], s["score"]) for s in a["sources"]) for a in out["attributions"]]


def test_two_processes_hot_swap_under_load(mp_target, prefix, tmp_path, figures):
    target = mp_target
    reqs = target.bodies(30)
    swapped = {}
    with group(target.root, tmp_path / "var", REDIS_URL, prefix, tmp_path / "group.log", cache_ttl_s=60,
               request_timeout_s=300) as (base, _):
        st = httpx.get(base + "/v1/store").json()
        old = st["version"]
        ref = [httpx.post(base + "/v1/attributions", json={**b, "record": False}, timeout=300).json() for b in reqs]

        async def swap():  # after 20 answers; 20 more once the reload has answered (counts: a busy host is slower)
            await after_answers(tally, 20)
            swapped["new"] = await asyncio.to_thread(publish_scaled, target.root)
            async with httpx.AsyncClient(base_url=base, timeout=600) as c:
                swapped["reload"] = (await c.post("/v1/admin/reload")).json()
            await after_answers(tally, 20)

        tally = Tally(st["source_ids"], 1_000_000)
        asyncio.run(run_load(base, tally, reqs, concurrency=8, seconds=0, max_requests=3000, events=[(0, swap)],
                             keep=True, keepalive=False))
        result = compare(tally, base)
        after = {httpx.get(base + "/readyz").json()["store_version"] for _ in range(20)}  # new connections each
    new = swapped["new"]
    rel = swapped["reload"]
    assert rel["changed"] and rel["store_version"] == new and rel["processes"] == {"serving": 2, "total": 2}, rel
    assert after == {new}
    assert tally.failed == []
    seen = Counter(out["store_version"] for _, out in tally.answers)
    assert set(seen) == {old, new}, seen
    mixed = 0
    for i, out in tally.answers:
        factor = 1.0 if out["store_version"] == old else 2.0
        mixed += _scores(out) != [[(k, factor * v) for k, v in row] for row in _scores(ref[i])]
    assert mixed == 0
    assert result["lost"] == result["double_counted"] == 0, result
    assert result["credit_units_lost"] == result["credit_units_double"] == result["hits_mismatch"] == 0, result
    figures.append({"scenario": f"store hot swap under load, 2 processes ({target.kind} store)",
                    "store_kind": target.kind, "processes": WORKERS, **result, "answers_per_version": dict(seen),
                    "answers_not_matching_their_version": mixed, "concurrency": 8})


def test_identical_twins_across_processes_compute_once(built_store, prefix, tmp_path, train_x, figures):
    root = tmp_path / "store"
    shutil.copytree(built_store, root)
    from .load import bodies

    reqs = bodies(train_x, 12)
    with group(root, tmp_path / "var", REDIS_URL, prefix, tmp_path / "group.log", cache_ttl_s=0) as (base, _):

        async def twins():
            out = []
            limits = httpx.Limits(max_connections=1)
            clients = [httpx.AsyncClient(base_url=base, timeout=60, limits=limits) for _ in range(8)]
            try:
                for k, body in enumerate(reqs):
                    h = {"Idempotency-Key": f"twin-{k}"}
                    rs = await asyncio.gather(*(c.post("/v1/attributions", json=body, headers=h) for c in clients))
                    out.append(rs)
            finally:
                for c in clients:
                    await c.aclose()
            return out

        answers = asyncio.run(twins())
        other = httpx.post(base + "/v1/attributions", json=reqs[1], headers={"Idempotency-Key": "twin-0"})
        total = httpx.get(base + "/v1/sources").json()["total_queries"]
        procs = _processes(base)
    computed = 0
    for rs in answers:
        assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
        assert len({r.content for r in rs}) == 1  # byte for byte one answer (one request_id)
        fresh = [r for r in rs if r.headers.get("idempotent-replayed") != "true"]
        assert len(fresh) == 1
        computed += len(fresh)
    assert procs == {0, 1}
    assert other.status_code == 422 and other.json()["error"]["fields"][0]["path"] == "Idempotency-Key"
    assert total == sum(len(b["queries"]) for b in reqs)  # each key counted once
    figures.append({"scenario": "identical Idempotency-Key twins, 8 at a time, 2 processes (vector store)",
                    "store_kind": "vector", "processes": WORKERS, "keys": len(reqs), "requests": 8 * len(reqs),
                    "computed": computed, "recorded_queries_service": total,
                    "recorded_queries_expected": sum(len(b["queries"]) for b in reqs)})


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def test_worker_killed_during_outage_loses_no_credit(built_store, tmp_path, train_x, figures):
    """Records journaled by a process that is then killed (SIGKILL) are
    replayed once Redis is back: by the process the supervisor starts in its
    place (it claims the free slot) or by the other one (adoption)."""
    from .load import bodies

    root = tmp_path / "store"
    shutil.copytree(built_store, root)
    rs = RedisProcess(tmp_path / "redis")
    rs.dir.mkdir()
    rs.start()
    data = tmp_path / "var"
    reqs = bodies(train_x, 24)
    try:
        with group(root, data, f"redis://127.0.0.1:{rs.port}/0", "fa:", tmp_path / "group.log",
                   cache_ttl_s=0) as (base, sup):
            st = httpx.get(base + "/v1/store").json()
            tally = Tally(st["source_ids"], 1_000_000)
            rs.stop(signal.SIGKILL)
            with httpx.Client(base_url=base, timeout=60) as c:
                for i, b in enumerate(reqs):
                    tally.add(c.post("/v1/attributions", json=b, headers={"Connection": "close"}), b, i)
            held = _journal(data)
            assert tally.failed == [] and tally.queries > 0
            assert sum(held.values()) == len(reqs) and held["journal"] and held["p1"]  # a record per request
            victim = json.loads((data / "peers" / "p1.json").read_text())["pid"]  # the process of slot 1
            assert victim in _children(sup.pid)
            os.kill(victim, signal.SIGKILL)  # it dies with its journal slot full
            rs.start()
            drained = _drained(base, data, 60)
            result = compare(tally, base)
            back = _all_ready(base, time.time() + 90)  # the supervisor started a process in its place
    finally:
        if rs.proc and rs.proc.poll() is None:
            rs.proc.kill()
            rs.proc.wait()
    log = (tmp_path / "group.log").read_text()
    figures.append({"scenario": "a serving process killed with journaled credit (2 processes, vector store)",
                    "store_kind": "vector", "processes": WORKERS, **result, "journaled_per_slot": held})
    assert drained, (_journal(data), log[-2000:])
    assert back, log[-2000:]
    assert result["lost"] == result["double_counted"] == 0, result
    assert result["credit_units_lost"] == result["credit_units_double"] == 0, result
    assert re.search(r"serving process \d \(pid \d+\) exited with -9: starting it again", log), log[-2000:]
