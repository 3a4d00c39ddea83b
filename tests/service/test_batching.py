"""Micro-batcher: answers are bit-identical with batching on and off,
concurrent requests share readouts, a full queue answers 503 with
Retry-After, and a request past its timeout answers 504."""

from __future__ import annotations

import asyncio
import json

import httpx
import torch

from influence.blocks import batch_invariant, readout_rows
from influence.mlp.attributor import VectorAttributor
from influence.store import open_store

from .util import query, serve, strip_volatile


def _requests(train_x) -> list[dict]:
    """12 requests of 1-3 queries, mixed targets and options."""
    out, i = [], 0
    for n in range(12):
        size = 1 + n % 3
        qs = [query(train_x[(i + j) % len(train_x)], target=(j if n % 2 else None)) for j in range(size)]
        i += size
        out.append({"queries": qs, "granularity": ("sources", "examples", "both")[n % 3], "top_k": 7,
                    "output": ("margin", "margin", "loss", "logprob")[n % 4], "record": False})
    return out


async def _fire(base: str, bodies: list[dict]) -> list[dict]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:
        rs = await asyncio.gather(*(c.post("/v1/attributions", json=b) for b in bodies))
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs if r.status_code != 200]
    return [r.json() for r in rs]


def test_batching_on_equals_off(settings_for, train_x):
    bodies = _requests(train_x)
    with serve(settings_for(batching=True, max_wait_ms=40, max_batch=16, readout_block=4, cache_ttl_s=0,
                            adaptive_wait=False)) as base:
        on = asyncio.run(_fire(base, bodies))
    with serve(settings_for(batching=False, readout_block=4, cache_ttl_s=0)) as base:
        off = [asyncio.run(_fire(base, [b]))[0] for b in bodies]
    assert any(r["timings"]["batch_queries"] > len(b["queries"]) for r, b in zip(on, bodies, strict=True))
    assert all(r["timings"]["batch_queries"] == len(b["queries"]) for r, b in zip(off, bodies, strict=True))
    for a, b in zip(on, off, strict=True):
        assert json.dumps(strip_volatile(a), sort_keys=True) == json.dumps(strip_volatile(b), sort_keys=True)


def test_readout_rows_do_not_depend_on_their_batch(built_store, train_x):
    """Bit-identical scores of a row whatever else shares its blocks and
    wherever in a block it sits, for both response sets."""
    att = VectorAttributor(open_store(built_store), "cpu")
    y = torch.randint(-1, att.spec.n_classes, (len(train_x),), generator=torch.Generator().manual_seed(0))
    for block in (4, 8, 16):
        together = readout_rows(att, train_x[:40], y[:40], "margin", True, block)
        for i in range(40):
            alone = readout_rows(att, train_x[i:i + 1], y[i:i + 1], "margin", True, block)
            for a, b in zip(alone, together, strict=True):
                assert torch.equal(a[0], b[i]), (block, i)
        assert batch_invariant(att, block)


class _PositionDependent(VectorAttributor):
    """A readout whose rows depend on their position, as a bad BLAS kernel's would."""

    def readout(self, x, y=None, kind="margin", examples=True, sources=True):
        sc = super().readout(x, y, kind, examples, sources)
        sc.sources[1:] += 1e-6
        return sc


def test_batch_invariant_detects_a_position_dependent_readout(built_store):
    assert not batch_invariant(_PositionDependent(open_store(built_store), "cpu"), 4)


def test_adaptive_wait_does_not_hold_a_lone_request_but_batches_a_burst(settings_for, train_x):
    """A 300 ms window: a request on its own waits all of it with the fixed
    window and none of it with the adaptive one, which still merges a burst."""
    one = {"queries": [query(train_x[0])], "record": False}

    async def lone_then_burst(base):
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            lone = [(await c.post("/v1/attributions", json=one)).json() for _ in range(3)]
            await asyncio.sleep(0.5)
            burst = await asyncio.gather(*(c.post("/v1/attributions", json=one) for _ in range(16)))
            return lone, [r.json() for r in burst]

    waits = {}
    for adaptive in (True, False):
        with serve(settings_for(max_wait_ms=300, cache_ttl_s=0, adaptive_wait=adaptive)) as base:
            lone, burst = asyncio.run(lone_then_burst(base))
        waits[adaptive] = [r["timings"]["queue_ms"] for r in lone]
        assert max(r["timings"]["batch_queries"] for r in burst) > 1
    assert all(w < 100 for w in waits[True]) and all(w >= 280 for w in waits[False]), waits


def test_full_queue_answers_503_with_retry_after(settings_for, train_x):
    s = settings_for(queue_size=4, max_queries=4, max_batch=64, max_wait_ms=400, retry_after_s=3, cache_ttl_s=0,
                     adaptive_wait=False)
    body = {"queries": [query(train_x[i]) for i in range(3)], "record": False}

    async def go(base):
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            first = asyncio.create_task(c.post("/v1/attributions", json=body))
            await asyncio.sleep(0.15)  # the first waits in the batch window, holding 3 of 4 places
            second = await c.post("/v1/attributions", json=body)
            return await first, second

    with serve(s) as base:
        first, second = asyncio.run(go(base))
    assert first.status_code == 200
    assert second.status_code == 503 and second.headers["retry-after"] == "3"
    assert second.json()["error"]["code"] == "overloaded"


def test_request_timeout_answers_504(settings_for, train_x):
    s = settings_for(request_timeout_s=0.05, max_wait_ms=300, cache_ttl_s=0, adaptive_wait=False)
    with serve(s) as base:
        r = httpx.post(base + "/v1/attributions", json={"queries": [query(train_x[0])], "record": False})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert httpx.get(base + "/v1/sources").json()["total_queries"] == 0


def test_readout_workers_read_batches_out_at_the_same_time():
    """``readout_workers=2``: two batches are read out concurrently (each
    readout waits at a two-party barrier, which only a second concurrent
    readout can release); with one worker the barrier times out."""
    import threading
    from types import SimpleNamespace

    from service.batcher import Batcher

    async def run(workers: int) -> list:
        barrier = threading.Barrier(2, timeout=3)

        def readout(att, rows, examples):
            barrier.wait()
            return [SimpleNamespace(value=r * 10) for r in rows]

        b = Batcher(max_batch=1, max_wait_s=0.0, queue_size=8, workers=workers, timeout_s=10)
        b.start()
        try:
            out = await asyncio.gather(*(b.submit_rows(None, i, 1, ("g",), False, readout) for i in (1, 2)),
                                       return_exceptions=True)
            return [getattr(r, "value", r) for r in out]
        finally:
            await b.stop()

    assert asyncio.run(run(2)) == [10, 20]
    assert all(isinstance(r, threading.BrokenBarrierError) for r in asyncio.run(run(1)))


def test_a_malformed_readout_fails_its_requests_not_the_batcher():
    """A readout whose results cannot take the timings fails those requests;
    the next request is still served by the same worker loop."""
    from types import SimpleNamespace

    from service.batcher import Batcher

    async def run() -> list:
        b = Batcher(max_batch=1, max_wait_s=0.0, queue_size=8, timeout_s=5)
        b.start()
        try:
            bad = await asyncio.gather(b.submit_rows(None, 1, 1, ("g",), False, lambda a, r, e: [1]),
                                       return_exceptions=True)
            good = await b.submit_rows(None, 2, 1, ("g",), False, lambda a, r, e: [SimpleNamespace(v=r[0])])
            return [type(bad[0]).__name__, good.v]
        finally:
            await b.stop()

    assert asyncio.run(run()) == ["AttributeError", 2]
