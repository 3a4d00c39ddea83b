"""On a CUDA host: ``bench/gpu/check.py`` passes on the tiny store (store
resident on the GPU, readout equal to the CPU one, padded blocks
batch-invariant bit for bit), and the service answers from a GPU-resident
store identically with batching on and off. Skipped without CUDA."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from ..service.util import query, serve, strip_volatile


@pytest.mark.gpu
def test_gpu_check_script_passes(tiny_store, tmp_path):
    from bench.gpu.check import main

    out = tmp_path / "gpu.json"
    assert main(["--quick", "--store", str(tiny_store), "--out", str(out), "--append", str(tmp_path / "g.log")]) == 0
    res = json.loads(out.read_text())
    assert res["ok"] and all(c["ok"] for c in res["checks"]), res["checks"]


@pytest.mark.gpu
def test_service_on_gpu_batching_on_equals_off(settings_for, train_x):
    bodies = [{"queries": [query(train_x[i + j]) for j in range(1 + i % 3)], "granularity": "both", "top_k": 5,
               "record": False} for i in range(10)]

    async def fire(base):
        async with httpx.AsyncClient(base_url=base, timeout=60) as c:
            return [r.json() for r in await asyncio.gather(*(c.post("/v1/attributions", json=b) for b in bodies))]

    with serve(settings_for(device="cuda", batching=True, max_wait_ms=40, readout_block=64, cache_ttl_s=0)) as base:
        assert httpx.get(base + "/readyz").json()["device"].startswith("cuda")
        on = asyncio.run(fire(base))
    with serve(settings_for(device="cuda", batching=False, readout_block=64, cache_ttl_s=0)) as base:
        off = asyncio.run(fire(base))
    for a, b in zip(on, off, strict=True):
        assert json.dumps(strip_volatile(a), sort_keys=True) == json.dumps(strip_volatile(b), sort_keys=True)
