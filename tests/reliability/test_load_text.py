"""The text-store load path of ``bench.serving.load_text`` end to end, tiny and not
timed: a tiny text store built by the worker, ``python -m service`` on it
(``bench.harness.service``), a few closed-loop text requests through
``bench.serving.load.run_matrix`` (one service process: batching on). Every request answers,
every answer has its queries, every row is tagged ``store_kind: text``. No
speed is asserted (speed targets are the benchmark's, never a test's)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.serving import load
from bench.serving.load_text import readout_flops, text_bodies

from ..service.util import REDIS_URL
from ..text_corpus import build_text_store


@pytest.fixture(scope="module")
def tiny_text_store(tmp_path_factory):
    return build_text_store(tmp_path_factory.mktemp("load-text-store"), "method.compress_rank=8")


@pytest.mark.slow
def test_text_load_rows(tiny_text_store, tmp_path):
    rng = np.random.default_rng(0)
    pool = [f"w{i}" for i in range(60)] + [f"s{s}x{i}" for s in range(3) for i in range(15)]
    texts = [" ".join(rng.choice(pool, size=int(n))) for n in rng.integers(2, 40, size=24)]
    rows = load.run_matrix(tiny_text_store, [{"batching": True, "cache": False}], [2], [1, 3], 0.3, 12,
                           lambda m: None, REDIS_URL, {"readout_block": 4}, "sources",
                           make_bodies=text_bodies(texts), store_kind="text", warmup_s=0.1,
                           service_log=tmp_path / "service.log")
    assert len(rows) == 2
    for r in rows:
        assert r["store_kind"] == "text" and r["granularity"] == "sources"
        assert r["ok"] == r["requests"] > 0 and r["error_rate"] == 0 and r["malformed"] == 0, r
        for k in ("concurrency", "queries_per_request", "batching", "cache", "throughput_qps", "p50_ms", "p95_ms",
                  "p99_ms", "error_rate"):
            assert k in r


def test_readout_flops_count_the_tangents():
    from influence.gpt.model import GPTSpec

    spec = GPTSpec()
    one, two = readout_flops(spec, [1], 450, 312), readout_flops(spec, [2], 450, 312)
    assert two["tangents"] == 2 * one["tangents"] and one["per_tangent"] == one["tangents"]
    # the scale: a forward tangent over a 64-token window of this GPT is some 50-80 MFLOP counted as
    # forward + tangent; the tangent alone is twice the trunk's primal pass
    assert 20e6 < one["per_tangent"] < 80e6
