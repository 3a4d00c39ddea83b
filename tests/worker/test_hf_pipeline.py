"""An ``hf`` store end to end on a tiny local GPT-2 checkpoint and a tiny JSONL
corpus: ``fa-worker build --model DIR --data docs.jsonl`` (LoRA), the store's
contents, forward-only scores equal to the gradient dot product with the
stored responses, ``fa-worker score``, a base referenced by path and verified
by sha256, and the clear errors for bad inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from influence.hf.loader import ModelFileError
from influence.store import open_store
from influence.text.attributor import TextAttributor
from influence.text.lm_math import gradient_scores
from worker.config import ConfigError, load_config

from ..hf.conftest import save_tiny_checkpoint
from ..text_corpus import write_corpus, write_short_and_long

ROOT = Path(__file__).resolve().parents[2]
FAST = ["method.rank=32", "method.curvature_subset=8", "method.steps=50", "train.epochs=1", "data.max_blocks=2",
        "store.quant_bits=0"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf")
    data = write_corpus(tmp / "docs.jsonl")
    texts = [json.loads(line)["text"] for line in data.read_text().splitlines()]
    base = save_tiny_checkpoint(tmp / "base", texts)
    r = _cli("build", "--model", str(base), "--data", str(data), "--store", str(tmp / "store"), "--quiet",
             *[x for o in FAST for x in ("--set", o)])
    assert r.returncode == 0, r.stderr
    return tmp, data, base, open_store(tmp / "store")


def test_store_holds_lora_responses_tokenizer_base_and_documents(built):
    tmp, _, base, store = built
    man = store.manifest
    assert man.model.kind == "hf" and man.model.trained == "lora" and man.model.base == "store"
    assert all(".lora_A." in n or ".lora_B." in n for n in man.model.names)
    assert man.extra["trainable_params"] == man.model.layout().numel
    assert (store.path / "base" / "model.safetensors").read_bytes() == (base / "model.safetensors").read_bytes()
    assert (store.path / "tokenizer" / "tokenizer.json").is_file()
    assert len(json.loads(store.assets["documents.json"])) == len(man.example_source) == 40
    assert man.model.context == 32 and man.source_ids == ["pub-0", "pub-1", "pub-2"]


def test_scores_equal_the_gradient_dot_product(built):
    _, _, _, store = built
    att = TextAttributor(store, "cpu")
    qs = [att.encode(text="w1 w2 s0x3 s0x4 w5"), att.encode(prompt="w7 w8", completion=" s1x2 s1x3"),
          att.encode(text="w9 s2x1 w3 w3 w4 w10 w11 w12 w13")]
    got = att.score(qs)
    x, mask = att.batch(qs)
    ref = gradient_scores(att.model, att.params[0], att.rows[0], x, mask)
    assert torch.allclose(got.examples, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert torch.allclose(got.sources, ref @ att.membership, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert att.tokenizer.decode(qs[0].ids)[0].startswith(" ")  # readable byte-level pieces


def test_score_cli(built, tmp_path):
    tmp, _, _, _ = built
    q = tmp_path / "q.jsonl"
    q.write_text('{"text": "w1 w2 s0x3"}\n{"prompt": "w4", "completion": " w5 w6"}\n')
    r = _cli("score", "--store", str(tmp / "store"), "--queries", str(q), "--out", str(tmp_path / "out"),
             "--format", "csv")
    assert r.returncode == 0, r.stderr
    assert "pub-" in (tmp_path / "out" / "summary.txt").read_text()
    cols = json.loads((tmp_path / "out" / "columns.json").read_text())
    assert cols["sources"] == ["pub-0", "pub-1", "pub-2"] and cols["examples"] == [f"d{d:03d}" for d in range(40)]
    header = (tmp_path / "out" / "examples.csv").read_text().splitlines()[0]
    assert header == ",".join(["query", *cols["examples"]])


def test_base_by_path_is_verified(built, tmp_path):
    tmp, data, base, _ = built
    mine = shutil.copytree(base, tmp_path / "base")
    store = tmp_path / "store"
    r = _cli("build", "--model", str(mine), "--data", str(data), "--store", str(store), "--quiet",
             "--set", "model.base=path", *[x for o in FAST for x in ("--set", o)])
    assert r.returncode == 0, r.stderr
    s = open_store(store)
    assert s.manifest.model.base_path == str(mine.resolve()) and not (s.path / "base").exists()
    TextAttributor(s, "cpu")  # loads: the files are those it was built on
    w = mine / "model.safetensors"
    blob = bytearray(w.read_bytes())
    blob[-1] ^= 1
    w.write_bytes(bytes(blob))
    with pytest.raises(ModelFileError, match="model.safetensors.*sha256 differs"):
        TextAttributor(open_store(store), "cpu")
    r = _cli("score", "--store", str(store), "--queries", str(data), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "sha256 differs" in r.stderr and "Traceback" not in r.stderr


def test_bad_inputs_are_clear_errors(built, tmp_path):
    tmp, data, base, _ = built
    r = _cli("build", "--model", str(tmp_path / "nope"), "--data", str(data), "--store", str(tmp_path / "s"))
    assert r.returncode == 2 and "no such model directory" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text(data.read_text() + '{"text": "hello", "source": 7}\n')
    r = _cli("build", "--model", str(base), "--data", str(bad), "--store", str(tmp_path / "s"))
    assert r.returncode == 2 and "line 41" in r.stderr and "source" in r.stderr
    with pytest.raises(ConfigError, match="optimizer"):
        load_config("hf", overrides=[f'model.path="{base}"', f'data.path="{data}"', "train.optimizer=sgd"])
    with pytest.raises(ConfigError, match="text data needs kind .gpt. or .hf."):
        load_config("digits", overrides=['data.name="brown-ft"'])


def test_audit_fine_tunes_again_from_the_store(built, tmp_path):
    """``fa-worker audit`` on an hf store: subsets and left-out sources fine-tuned
    again from the store's own base with its recipe; the full-data run is the
    store's member bit for bit (the same seed and order)."""
    tmp, data, _, _ = built
    root = shutil.copytree(tmp / "store", tmp_path / "store")
    common = ["audit", "--store", str(root), "--subsets", "3", "--seeds", "1", "--loso-sources", "3", "--queries", "6"]
    r = _cli(*common)
    assert r.returncode == 2 and "--query-file" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "w1 w2"}\n{"txt": "w3"}\n')
    r = _cli(*common, "--query-file", str(bad))
    assert r.returncode == 2 and "line 2" in r.stderr and "Traceback" not in r.stderr
    q = tmp_path / "held.jsonl"
    q.write_text("".join(json.dumps({"text": f"w{i} w{i + 1} s{i % 3}x{i} w{i + 2} w3 w4"}) + "\n" for i in range(6)))
    r = _cli(*common, "--query-file", str(q))
    assert r.returncode == 0, r.stderr
    audit = open_store(root).audit
    assert audit["store_kind"] == "hf" and audit["settings"]["models_trained"] == 7
    assert audit["truth"]["full_vs_store_output_max_abs"] < 1e-5
    assert -1 <= audit["metrics"]["source_lds"] <= 1


def test_short_documents_train_and_every_source_earns(tmp_path):
    """Issue 24 row 1: with blocks of the context + 1 tokens, every document shorter than a block was
    dropped and a source of short documents scored exactly 0."""
    data = write_short_and_long(tmp_path / "docs.jsonl")
    base = save_tiny_checkpoint(tmp_path / "base", [json.loads(x)["text"] for x in data.read_text().splitlines()])
    r = _cli("build", "--model", str(base), "--data", str(data), "--store", str(tmp_path / "store"),
             *[x for o in FAST for x in ("--set", o)])
    assert r.returncode == 0, r.stderr
    assert "52 of 52 documents trained" in r.stdout
    store = open_store(tmp_path / "store")
    cov = store.manifest.data["coverage"]
    assert cov["documents"] == cov["documents_trained"] == 52 and cov["padded_blocks"] >= 12
    assert cov["left_out"] == [] and cov["empty_sources"] == [] and store.manifest.data["block_tokens"] == 33
    rows = store.manifest.model.layout().flatten(store.examples[0])
    assert (rows.norm(dim=1) > 0).all()  # every document has a response
    att = TextAttributor(store, "cpu")
    sc = att.score([att.encode("s0x1 s0x2 s0x3 w4"), att.encode("s1x1 s1x2 w3")])
    assert (sc.sources.abs().sum(0) > 0).all()  # every source, pub-short too, has a nonzero score


def test_a_source_without_training_signal_is_refused_unless_allowed(tmp_path):
    data = write_short_and_long(tmp_path / "docs.jsonl", empty_source=True)
    base = save_tiny_checkpoint(tmp_path / "base", [json.loads(x)["text"] for x in data.read_text().splitlines()])
    from influence.hf.loader import load_tokenizer

    assert len(load_tokenizer(base)("w", add_special_tokens=False)["input_ids"]) == 1  # the premise
    args = ["build", "--model", str(base), "--data", str(data), "--store", str(tmp_path / "store"), "--quiet",
            *[x for o in FAST for x in ("--set", o)]]
    r = _cli(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "1 source(s) would have no training signal" in r.stderr and "pub-empty" in r.stderr
    assert "--allow-empty-sources" in r.stderr and not (tmp_path / "store").exists()
    r = _cli(*args, "--allow-empty-sources")
    assert r.returncode == 0, r.stderr
    data_rec = open_store(tmp_path / "store").manifest.data
    assert data_rec["allow_empty_sources"] is True and data_rec["coverage"]["empty_sources"] == ["pub-empty"]
    assert data_rec["coverage"]["left_out"] == [{"id": "tiny", "source": "pub-empty",
                                                 "reason": "no target: fewer than 2 tokens"}]


def test_a_datasets_table_builds_the_same_store_as_its_jsonl(built, tmp_path):
    """The corpus as a Parquet file (what ``datasets.Dataset.to_parquet`` writes): the same documents,
    blocks and store, tensor for tensor, as from the JSONL file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp, data, base, store = built
    raw = [json.loads(x) for x in data.read_text().splitlines()]
    pq.write_table(pa.table({k: [r[k] for r in raw] for k in ("id", "source", "text")}), tmp_path / "docs.parquet")
    r = _cli("build", "--model", str(base), "--data", str(tmp_path / "docs.parquet"), "--store",
             str(tmp_path / "store"), "--quiet", *[x for o in FAST for x in ("--set", o)])
    assert r.returncode == 0, r.stderr
    got = open_store(tmp_path / "store")
    for xs, ys in ((got.params, store.params), (got.examples, store.examples), (got.sources, store.sources)):
        for x, y in zip(xs or [], ys or [], strict=True):
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert got.assets["documents.json"] == store.assets["documents.json"]


def test_score_cli_per_token(built, tmp_path):
    """``--per-token``: a row per scored token, its query, position and id;
    each query's rows average to its row of sources.npy / examples.npy; the
    pieces join back into the scored text (the completion for a prompt)."""
    from safetensors.torch import load_file

    tmp, _, _, store = built
    texts = [{"text": "w1 w2 s0x3 café 😀"}, {"prompt": "w4", "completion": " w5 w6 日本語"}]
    q = tmp_path / "q.jsonl"
    q.write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in texts))
    out = tmp_path / "out"
    r = _cli("score", "--store", str(tmp / "store"), "--queries", str(q), "--out", str(out), "--per-token")
    assert r.returncode == 0, r.stderr
    assert "per_token.safetensors" in r.stdout
    t = load_file(out / "per_token.safetensors")
    meta = json.loads((out / "per_token.json").read_text())
    src, ex = np.load(out / "sources.npy"), np.load(out / "examples.npy")
    man = store.manifest
    assert meta["sources"] == man.source_ids and t["sources"].shape[1] == src.shape[1] == len(man.source_ids)
    assert len(meta["examples"]) == t["examples"].shape[1] == ex.shape[1]
    att = TextAttributor(store, "cpu")
    enc = [att.encode(**texts[0]), att.encode(**texts[1])]
    for i, (m, e, text) in enumerate(zip(meta["queries"], enc, [texts[0]["text"], texts[1]["completion"]],
                                         strict=True)):
        a, b = m["rows"]
        assert b - a == e.n_targets == len(m["tokens"])
        assert t["query"][a:b].tolist() == [i] * e.n_targets
        pos = t["position"][a:b].tolist()
        assert pos == list(range(len(e.ids) - e.n_targets, len(e.ids)))
        assert t["token_id"][a:b].tolist() == [e.ids[p] for p in pos]
        pieces = "".join(x["piece"] for x in m["tokens"])
        assert pieces == (text if i == 1 else text[m["tokens"][0]["start_char"]:])
        assert all(text[x["start_char"]:x["end_char"]] == x["piece"] for x in m["tokens"])
        scale = float(np.abs(src[i]).max())
        np.testing.assert_allclose(t["sources"][a:b].mean(0).numpy(), src[i], rtol=1e-4, atol=1e-5 * scale)
        np.testing.assert_allclose(t["examples"][a:b].mean(0).numpy(), ex[i], rtol=1e-4,
                                   atol=1e-5 * float(np.abs(ex[i]).max()))
    # without the flag: no per-token files
    r = _cli("score", "--store", str(tmp / "store"), "--queries", str(q), "--out", str(tmp_path / "plain"))
    assert r.returncode == 0 and not (tmp_path / "plain" / "per_token.json").exists()
