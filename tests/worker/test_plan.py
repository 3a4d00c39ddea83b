"""``fa-worker plan`` / ``build --dry-run`` (issue 24 row 4): the counts a plan
states are those a real build records, its store size is that of the built
store's responses file, a dry run writes nothing, and bad inputs are the
build's own clear errors. No timing asserts: the times are only checked to
be the stated formulas of the measured unit times."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from influence.store import open_store

from ..hf.conftest import save_tiny_checkpoint
from ..text_corpus import write_short_and_long

ROOT = Path(__file__).resolve().parents[2]
# the build's own settings, 3-bit codes (the hf default) so the quantised size formula is what is checked
FAST = ["method.rank=32", "method.curvature_subset=8", "method.steps=50", "train.epochs=1", "data.max_blocks=2",
        "store.source_rows=always"]
STORE_FACTOR = 1.05  # predicted / actual responses.safetensors bytes (the rest: the safetensors header)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def _sets(*extra: str) -> list[str]:
    return [x for o in (*FAST, *extra) for x in ("--set", o)]


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plan")
    data = write_short_and_long(tmp / "docs.jsonl")  # long documents cut by max_blocks, short ones padded
    base = save_tiny_checkpoint(tmp / "base", [json.loads(x)["text"] for x in data.read_text().splitlines()])
    args = ["--model", str(base), "--data", str(data), "--store", str(tmp / "store"), *_sets()]
    r = _cli("plan", "--json", *args)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert not (tmp / "store").exists()
    r = _cli("build", "--quiet", *args)
    assert r.returncode == 0, r.stderr
    return tmp, data, base, plan, open_store(tmp / "store")


def test_counts_are_what_the_build_records(planned):
    _, _, _, plan, store = planned
    man, c = store.manifest, plan["corpus"]
    assert (c["documents"], c["blocks"], c["target_tokens"]) == (man.data["n"], man.data["n_blocks"],
                                                                 man.data["n_targets"])
    cov = man.data["coverage"]
    assert c["padded_blocks"] == cov["padded_blocks"] >= 12 and c["tokens_cut"] == cov["tokens_cut"] > 0
    assert c["left_out"] == cov["left_out"] and c["documents_trained"] == cov["documents_trained"] == 52
    assert c["sources"] == len(man.source_ids) == 4 and c["block_tokens"] == man.data["block_tokens"]
    assert plan["model"]["p"] == man.extra["trainable_params"] == man.model.layout().numel
    assert plan["model"]["P"] > plan["model"]["p"] and "c_attn" in plan["model"]["trained"]
    rows = plan["counts"]["store_rows"]
    assert rows["documents"] == len(man.example_source) and store.sources is not None
    assert rows["sources"] == store.sources[0][man.model.names[0]].shape[0] == 4
    k = plan["counts"]
    assert k["curvature_blocks"] == man.extra["members"][0]["curvature_blocks"] == 8
    assert k["basis_columns"] == (1 + 1) * 32  # (power + 1) x rank


def test_store_size_matches_the_built_responses_file(planned):
    _, _, _, plan, store = planned
    actual = (store.path / "responses.safetensors").stat().st_size
    predicted = plan["store_bytes"]["responses"]
    assert 1 <= actual / predicted <= STORE_FACTOR, (predicted, actual)
    assert plan["store_bytes"]["params"] <= (store.path / "params.safetensors").stat().st_size
    total = sum(f.stat().st_size for f in store.path.rglob("*") if f.is_file())
    assert 0.9 <= total / plan["store_bytes"]["total"] <= 1.25, (plan["store_bytes"], total)


def test_times_are_the_stated_formulas(planned):
    _, _, _, plan, _ = planned
    u, k, t = plan["measured"], plan["counts"], plan["time_s"]
    assert all(u[key] > 0 for key in ("step_s", "grad_block_s", "gn_column_block_s", "response_row_s"))
    assert t["gradients"] == pytest.approx(k["gradient_blocks"] * u["grad_block_s"])
    assert t["basis"] == pytest.approx(k["basis_columns"] * k["curvature_blocks"] * u["gn_column_block_s"])
    assert t["fine_tune"] == pytest.approx(u["load_s"] + k["fine_tune_steps"] * u["step_s"])
    assert t["total"] == pytest.approx(sum(t[s] for s in ("fine_tune", "gradients", "basis", "responses")))
    assert k["fine_tune_steps"] == 1 * -(-plan["corpus"]["blocks"] // 8)  # epochs x ceil(blocks / batch)
    mem = plan["memory_bytes"]
    n, p = plan["corpus"]["documents"], plan["model"]["p"]
    assert mem["served"] == plan["model"]["P"] * 4 + (n + 4) * p * 4 and mem["peak"] > mem["probe_peak"] > 0


def test_dry_run_prints_the_plan_and_writes_nothing(planned, tmp_path):
    _, data, base, _, _ = planned
    root = tmp_path / "store"
    r = _cli("build", "--dry-run", "--model", str(base), "--data", str(data), "--store", str(root), *_sets())
    assert r.returncode == 0, r.stderr
    assert "52 of 52 documents trained" in r.stdout and "basis" in r.stdout and "store on disk" in r.stdout
    assert not root.exists() and list(tmp_path.iterdir()) == []


def test_bad_inputs_are_the_builds_clear_errors(planned, tmp_path):
    _, data, base, _, _ = planned
    for cmd in (["plan"], ["build", "--dry-run"]):
        r = _cli(*cmd, "--model", str(tmp_path / "nope"), "--data", str(data))
        assert r.returncode == 2 and "no such model directory" in r.stderr and "Traceback" not in r.stderr
        bad = tmp_path / "bad.jsonl"
        bad.write_text(data.read_text() + '{"text": "hello", "source": 7}\n')
        r = _cli(*cmd, "--model", str(base), "--data", str(bad))
        assert r.returncode == 2 and "line 53" in r.stderr and "source" in r.stderr and "Traceback" not in r.stderr
    r = _cli("plan", "--preset", "tiny")
    assert r.returncode == 2 and "plan: estimates Hugging Face builds" in r.stderr
