"""Redis stopped and restarted during load: no request fails because of it,
and afterwards every answered, recorded query is counted exactly once in the
aggregates (the client's own count, and its own credit per source computed
from the scores it was served, match the service's totals exactly). On a
vector store and on a text store (``target``)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import redis

from ..service.util import free_port, redis_binary, serve
from .load import Tally, after_answers, compare, run_load, wait_drained


class RedisProcess:
    """A private Redis-compatible server on a free port, AOF fsync always."""

    def __init__(self, workdir: Path):
        self.port, self.dir, self.proc = free_port(), workdir, None

    def start(self) -> None:
        self.proc = subprocess.Popen([redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis did not start")

    def stop(self, sig: int) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(20)


@pytest.mark.parametrize("how", ["kill", "shutdown"])
def test_redis_restart_under_load_counts_every_query_once(how, target, tmp_path, figures):
    """Redis goes away after 30 answers, comes back after 30 more (answered
    during the outage: journaled), and the load goes on for 30 after that:
    counts, not seconds, so a busy machine shows the same scenario, only
    slower."""
    workdir = tmp_path / "redis"
    workdir.mkdir()
    rs = RedisProcess(workdir)
    rs.start()
    s = target.settings(redis_url=f"redis://127.0.0.1:{rs.port}/0", redis_prefix="fa:", cache_ttl_s=60,
                     replay_interval_s=0.2, redis_timeout_s=1.0)
    sig = signal.SIGKILL if how == "kill" else signal.SIGTERM
    outage = {}

    async def stop():
        await after_answers(tally, 30)
        await asyncio.to_thread(rs.stop, sig)
        outage["stopped"] = time.perf_counter()

    async def restart():
        await after_answers(tally, 30)
        await asyncio.to_thread(rs.start)
        outage["restarted"] = time.perf_counter()

    async def go_on():
        await after_answers(tally, 30)

    try:
        with serve(s) as base:
            st = httpx.get(base + "/v1/store").json()
            tally = Tally(st["source_ids"], s.credit_units, s.credit_rule)
            asyncio.run(run_load(base, tally, target.bodies(), concurrency=6, seconds=0, max_requests=3000,
                                 events=[(0, stop), (0, restart), (0, go_on)]))
            ready = wait_drained(base)
            result = compare(tally, base)
            journaled = httpx.get(base + "/v1/stats").json()["journal_replayed"]
    finally:
        if rs.proc and rs.proc.poll() is None:
            rs.proc.kill()
            rs.proc.wait()
    figures.append({"scenario": f"redis {how} + restart under load ({target.kind} store)", "store_kind": target.kind,
                    **result, "journal_replayed": journaled,
                    "outage_s": round(outage["restarted"] - outage["stopped"], 2), "concurrency": 6})
    assert ready["redis"] and ready["journal_entries"] == 0
    assert journaled > 0, "the outage must have sent records to the journal"
    assert tally.failed == []
    assert result["lost"] == result["double_counted"] == 0, result
    assert result["credit_units_lost"] == result["credit_units_double"] == result["hits_mismatch"] == 0, result
    assert tally.queries > 50 and tally.replays > 0
