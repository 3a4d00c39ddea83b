"""``python -m bench.gpu_suite --device cpu``: the GPU suite's dry run (the
same code on tiny stores, models and loads) runs every part and writes the
results file with its stable keys; a part the budget cannot fit is recorded
as skipped, one past its time limit is killed (its process group) and
recorded as timed out, the file written either way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PARTS = ["builds", "cuda_tests", "gpu_check", "text_readout", "scale_probe", "served"]
KEYS = {"served": {"store_kind", "processes", "concurrency", "queries_per_request", "qps", "p99_ms"},
        "scale_probe": {"model", "trained", "R", "batch", "ms_per_query", "tflops", "peak_fraction"},
        "builds": {"preset", "device", "seconds"}}


@pytest.mark.slow
def test_dry_run_writes_every_part_with_stable_keys(tmp_path):
    out = tmp_path / "gpu_suite.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "bench.gpu_suite", "--device", "cpu", "--out", str(out),
                        "--scratch", str(tmp_path / "scratch")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    res = json.loads(out.read_text())
    assert r.returncode == 0, (r.stderr[-3000:], res["parts"])
    assert res["device"].startswith("cpu") and res["dry_run"] is True
    assert [p["name"] for p in res["parts"]] == PARTS
    assert all(p["ok"] and isinstance(p["seconds"], float) and "error" not in p for p in res["parts"]), res["parts"]
    for section, keys in KEYS.items():
        assert res[section], section
        for rec in res[section]:
            assert keys <= rec.keys(), (section, rec)
    assert {r["store_kind"] for r in res["served"]} == {"vector", "text"}
    assert {r["processes"] for r in res["served"]} == {1}
    assert {(r["trained"], r["R"]) for r in res["scale_probe"]} == {(t, R) for t in ("full", "lora") for R in (3, 8)}
    assert all(0 < r["tflops"] and 0 < r["peak_fraction"] for r in res["scale_probe"])
    assert [b["preset"] for b in res["builds"]] == ["tiny", "tiny-gpt", "tiny-hf"]
    assert all(b["device"] == "cpu" and b["seconds"] > 0 for b in res["builds"])
    # CPU against CPU: float32 equal; bfloat16 tangents within a few 1e-3 of the largest score
    for rec in res["text_readout"]:
        limit = 0.0 if rec["tangent_dtype"] == "float32" else 5e-2
        assert rec["max_rel_diff_sources"] <= limit and rec["max_rel_diff_examples"] <= limit, rec
    assert res["cuda_tests"][0]["returncode"] == 0 and res["gpu_check"][0]["ok"]


def test_a_part_past_the_budget_is_recorded_as_skipped(tmp_path):
    from bench.gpu.suite import main

    out = tmp_path / "s.json"
    assert main(["--device", "cpu", "--parts", "scale_probe", "--budget-s", "1", "--out", str(out),
                 "--scratch", str(tmp_path)]) == 1
    res = json.loads(out.read_text())
    assert res["parts"] == [{"name": "scale_probe", "ok": False, "seconds": 0.0, "limit_s": 0,
                             "error": "skipped: the suite's budget is spent"}]
    assert res["scale_probe"] == [] and res["served"] == [] and res["builds"] == []


def test_a_part_past_its_time_limit_is_killed_and_recorded(tmp_path):
    from bench.gpu.suite import main

    out = tmp_path / "t.json"
    # the part hangs after its work (--stall-s), so it is past its limit however fast the machine
    assert main(["--device", "cpu", "--parts", "scale_probe", "--budget-s", "6", "--stall-s", "120",
                 "--out", str(out), "--scratch", str(tmp_path)]) == 1
    (part,) = json.loads(out.read_text())["parts"]
    assert part["name"] == "scale_probe" and not part["ok"] and part["error"].startswith("timed out after 6 s")
