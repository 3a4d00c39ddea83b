"""What a new user does with their own checkpoint (issue 24; the new-user
check of issue 29): tiny random-config Llama, Qwen2 and GPT-NeoX models
saved with ``save_pretrained`` beside a byte-level BPE, a corpus of short and
long documents, then the README's commands as a user types them:
``python -m worker build --model DIR --data docs.jsonl --store DIR`` with the
defaults (LoRA targets, block length; only the simulation's cost knobs made
small), ``python -m worker score``, the service over real uvicorn and one
query over HTTP. And a damaged checkpoint: an error naming the file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from influence.store import open_store

from ..hf.conftest import save_tiny_checkpoint
from ..service.util import REDIS_URL, serve, settings_factory
from ..text_corpus import write_short_and_long

ROOT = Path(__file__).resolve().parents[2]
# the simulation's cost knobs only: what a user would lower on a laptop, none of them about coverage or targets
FAST = ["method.rank=16", "method.curvature_subset=8", "method.steps=30", "train.epochs=1", "store.quant_bits=0"]
PROJECTIONS = {"llama": "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj",
               "qwen2": "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj",
               "gpt_neox": "query_key_value, dense, dense_h_to_4h, dense_4h_to_h"}


def worker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    data = write_short_and_long(tmp_path_factory.mktemp("corpus") / "docs.jsonl")
    return data, [json.loads(x)["text"] for x in data.read_text().splitlines()]


@pytest.fixture(scope="module", params=list(PROJECTIONS))
def built(request, corpus, tmp_path_factory):
    data, texts = corpus
    tmp = tmp_path_factory.mktemp(request.param)
    base = save_tiny_checkpoint(tmp / "checkpoint", texts, family=request.param)
    r = worker("build", "--model", str(base), "--data", str(data), "--store", str(tmp / "store"),
               *[x for o in FAST for x in ("--set", o)])
    return request.param, tmp, data, base, r


def test_build_with_the_defaults_trains_every_document_on_every_projection(built):
    family, tmp, _, _, r = built
    assert r.returncode == 0, r.stderr[-3000:]
    assert "52 of 52 documents trained" in r.stdout
    assert f"trained: LoRA r=8 alpha=16 on {PROJECTIONS[family]}" in r.stdout
    store = open_store(tmp / "store")
    man = store.manifest
    assert man.model.architecture.lower().startswith(family.replace("_", ""))
    assert ", ".join(man.model.lora.target_modules) == PROJECTIONS[family]
    cov = man.data["coverage"]
    assert cov["documents_trained"] == 52 and cov["left_out"] == [] and cov["empty_sources"] == []
    rows = man.model.layout().flatten(store.examples[0])
    assert (rows.norm(dim=1) > 0).all()


def test_score_and_serve_one_query_over_http(built, tmp_path, redis_prefix):
    family, tmp, _, _, r = built
    assert r.returncode == 0, r.stderr[-3000:]
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"text": "s0x1 s0x2 s0x3 w4 w5"}) + "\n"
                 + json.dumps({"prompt": "s1x1 s1x2", "completion": " s1x3 w3"}) + "\n")
    s = worker("score", "--store", str(tmp / "store"), "--queries", str(q), "--out", str(tmp_path / "out"))
    assert s.returncode == 0, s.stderr[-3000:]
    src = np.load(tmp_path / "out" / "sources.npy")
    assert src.shape == (2, 4) and np.isfinite(src).all() and (np.abs(src).sum(0) > 0).all()

    settings = settings_factory(tmp / "store", redis_prefix, tmp_path)()
    with serve(settings) as base:
        ans = httpx.post(base + "/v1/attributions", json={"queries": [{"text": "s0x1 s0x2 s0x3 w4 w5"}],
                                                           "top_k": 3}, timeout=120)
    assert ans.status_code == 200, ans.text
    (res,) = ans.json()["attributions"]
    assert len(res["sources"]) == 3 and {x["id"] for x in res["sources"]} <= {"pub-0", "pub-1", "pub-2", "pub-short"}
    # the served scores are the offline ones (same store, same readout)
    by_id = {x["id"]: x["score"] for x in res["sources"]}
    ids = open_store(tmp / "store").manifest.source_ids
    for sid, v in by_id.items():
        assert v == pytest.approx(float(src[0, ids.index(sid)]), rel=1e-4, abs=1e-6)


@pytest.fixture
def redis_prefix():
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    p = f"test:{uuid.uuid4().hex[:12]}:"
    yield p
    keys = list(client.scan_iter(match=p + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def _damaged(base: Path, tmp: Path, how: str) -> Path:
    bad = tmp / f"bad-{how}"
    shutil.copytree(base, bad)
    w = bad / "model.safetensors"
    if how == "truncated":
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    elif how == "config":
        (bad / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    elif how == "bin":
        w.unlink()
        (bad / "pytorch_model.bin").write_bytes(b"<html>not a model</html>")
    return bad


@pytest.mark.parametrize("how, file, problem", [("truncated", "model.safetensors", "truncated"),
                                                ("config", "config.json", "not a readable JSON file"),
                                                ("bin", "pytorch_model.bin", "not a PyTorch weight file")])
def test_a_damaged_checkpoint_is_an_error_naming_the_file(corpus, tmp_path, how, file, problem):
    data, texts = corpus
    base = save_tiny_checkpoint(tmp_path / "checkpoint", texts, family="llama")
    r = worker("build", "--model", str(_damaged(base, tmp_path, how)), "--data", str(data),
               "--store", str(tmp_path / "s"), "--quiet")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert file in r.stderr and problem in r.stderr and not (tmp_path / "s").exists()
