"""Overload: past the queue bound the service sheds load with 503 and
``Retry-After`` (nothing else fails), stays responsive on ``/healthz`` while
flooded, and recovers once the load drops: the queue empties and ordinary
requests are answered again."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx

from ..service.util import query, serve


def test_overload_sheds_with_503_stays_live_and_recovers(settings_for, train_x, figures):
    """The flood lasts until it has shown each thing (however slow the
    machine: counts, not a time window, with a generous deadline): answers,
    503 sheds, and ``/healthz`` probes answered while it went on. Every
    answer is a 200 or a well-formed 503; every probe a 200."""
    # a small queue and a readout that waits for full batches: a flood of 64
    # concurrent clients keeps far more queries waiting than the bound allows
    s = settings_for(queue_size=8, max_queries=4, max_batch=4, max_wait_ms=20, retry_after_s=2, cache_ttl_s=0)
    bodies = [{"queries": [query(train_x[(i + j) % len(train_x)]) for j in range(1 + i % 4)], "record": False}
              for i in range(32)]
    statuses: Counter = Counter()
    bad_503: list[dict] = []
    health: list[tuple[int, float]] = []
    enough = {"answered": 40, "shed": 40, "probes": 10, "seconds": 1.5}
    flooded = {}

    async def flood(base: str, clients: int, deadline_s: float = 180.0):
        t0 = time.perf_counter()

        def done() -> bool:
            shown = (statuses[200] >= enough["answered"] and statuses[503] >= enough["shed"]
                     and len(health) >= enough["probes"] and time.perf_counter() - t0 > enough["seconds"])
            return shown or time.perf_counter() - t0 > deadline_s

        limits = httpx.Limits(max_connections=clients + 2)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as c:
            async def client(k: int):
                i = k
                while not done():
                    r = await c.post("/v1/attributions", json=bodies[i % len(bodies)])
                    statuses[r.status_code] += 1
                    if r.status_code == 503 and (r.headers.get("retry-after") != "2"
                                                 or r.json()["error"]["code"] != "overloaded"):
                        bad_503.append({"headers": dict(r.headers), "body": r.text[:200]})
                    i += clients

            async def probe():
                async with httpx.AsyncClient(base_url=base, timeout=30) as h:  # its own connection
                    await asyncio.sleep(0.3)
                    while not done():
                        t1 = time.perf_counter()
                        r = await h.get("/healthz")
                        if not done():  # (answered while the flood still ran)
                            health.append((r.status_code, time.perf_counter() - t1))
                        await asyncio.sleep(0.1)

            await asyncio.gather(probe(), *(client(k) for k in range(clients)))
        flooded["s"] = round(time.perf_counter() - t0, 1)

    with serve(s) as base:
        asyncio.run(flood(base, clients=64))
        deadline = time.time() + 60
        while httpx.get(base + "/v1/stats").json()["queue_queries"] and time.time() < deadline:
            time.sleep(0.05)
        after = [httpx.post(base + "/v1/attributions", json=b).status_code for b in bodies[:8]]
        stats = httpx.get(base + "/v1/stats").json()

    lat = sorted(t for _, t in health)
    figures.append({"scenario": "overload (queue 8, 64 clients)", "requests": sum(statuses.values()),
                    "answered": statuses[200], "shed_503": statuses[503],
                    "failed_requests": sum(v for k, v in statuses.items() if k not in (200, 503)),
                    "lost": 0, "double_counted": 0, "healthz_probes": len(health),
                    "healthz_ok": sum(1 for st, _ in health if st == 200),
                    "healthz_max_ms": round(lat[-1] * 1000, 1) if lat else None,
                    "healthz_p50_ms": round(lat[len(lat) // 2] * 1000, 1) if lat else None,
                    "after_load": after, "queue_after": stats["queue_queries"], "flood_s": flooded["s"]})
    assert statuses[503] >= enough["shed"] and statuses[200] >= enough["answered"], (statuses, flooded)
    assert set(statuses) <= {200, 503}, statuses
    assert bad_503 == []
    assert len(health) >= enough["probes"] and all(st == 200 for st, _ in health), (health, flooded)
    assert after == [200] * 8 and stats["queue_queries"] == 0
