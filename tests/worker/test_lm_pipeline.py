"""A text store end to end on a tiny JSONL corpus and a tiny GPT: build,
load, forward-only scores that match the uncompressed and explicit ones,
the score CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from influence.gpt.model import GPT
from influence.store import open_store
from influence.text.attributor import TextAttributor
from influence.text.causal import sequence_logprob, token_logprobs
from influence.text.lm_math import gradient_scores
from worker.config import load_config
from worker.lm_pipeline import build

from ..text_corpus import TINY_GPT, write_corpus

ROOT = Path(__file__).resolve().parents[2]
TINY = TINY_GPT


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lm")
    data = write_corpus(tmp / "docs.jsonl")
    out = {}
    for name, extra in (("exact", ["method.compress_rank=0", "store.quant_bits=0"]),
                        ("compressed", ["method.compress_rank=36", "store.quant_bits=0"]),
                        ("quantized", ["method.compress_rank=0", "store.quant_bits=3"])):
        cfg = load_config("brown", overrides=[f'data.path="{data}"', f'store.root="{tmp / name}"', *TINY, *extra])
        build(cfg, progress=False)
        out[name] = open_store(tmp / name)
    return tmp, data, out


def test_store_holds_model_tokenizer_and_documents(stores):
    _, _, s = stores
    man = s["compressed"].manifest
    assert man.model.kind == "gpt" and man.examples_rank == 36 and man.data["n"] == 36  # 40 docs, every 10th held out
    assert man.source_ids == ["pub-0", "pub-1", "pub-2"] and len(man.example_source) == 36
    assert {"tokenizer.json", "documents.json"} <= set(man.files)
    comp = man.extra["members"][0]["compression"]
    assert comp["exact_sources"] and comp["rel_error_sources"] < 1e-5  # the source responses are in the basis


def test_scores_compressed_equal_exact_and_explicit(stores):
    _, _, s = stores
    exact, comp = TextAttributor(s["exact"]), TextAttributor(s["compressed"])
    qs = [exact.encode("w1 w2 s0x3 w5 w7 s0x1"), exact.encode(prompt="w3 w4", completion="s1x2 s1x4 w9"),
          exact.encode("s2x1 s2x2 w0 w0 w1 w2 w3 w4 w5 w6 w7 s2x3")]
    a, b = exact.score(qs), comp.score(qs)
    # rank 36 = all 36 documents: the compressed store is exact up to float32 rounding
    torch.testing.assert_close(b.examples, a.examples, rtol=1e-3, atol=1e-3 * a.examples.abs().max().item())
    torch.testing.assert_close(a.sources, a.examples @ exact.membership, rtol=1e-5, atol=1e-6)
    # batched == one at a time
    one = torch.cat([exact.score([q]).examples for q in qs])
    torch.testing.assert_close(one, a.examples, rtol=1e-4, atol=1e-5 * a.examples.abs().max().item())
    # forward readout == explicit gradient dot product
    x, mask = exact.batch(qs)
    U = exact.rows[0].double()
    model = GPT(exact.spec, seed=None).double()
    ref = gradient_scores(model, {k: v.double() for k, v in exact.params[0].items()}, U, x, mask)
    torch.testing.assert_close(a.examples.double(), ref, rtol=1e-3, atol=1e-4 * ref.abs().max().item())


def test_quantized_rows_are_the_exact_rows_rounded(stores):
    """The brown preset's form (rows as 3-bit codes): the loaded rows are the
    exact store's rows through ``influence.quant`` (same build, same seed),
    and the build recorded the rounding's score error on held-out text."""
    from influence.quant import dequantize, quantize

    _, _, s = stores
    exact, quant = TextAttributor(s["exact"]), TextAttributor(s["quantized"])
    assert s["quantized"].manifest.examples_quant == {"bits": 3, "group": 128}
    torch.testing.assert_close(quant.rows[0], dequantize(quantize(exact.rows[0], 3, 128)), rtol=0, atol=0)
    held = s["quantized"].manifest.extra["members"][0]["compression"]["heldout"]
    assert 0.5 < held["documents"]["spearman"] <= 1.0 and held["documents"]["rel_error"] < 0.6


def test_source_rows_are_the_exact_sums_and_read_alone(stores):
    """Per-source rows (``store.source_rows`` auto: 3 sources, 36 documents):
    each is the exact sum of its documents' rows (before any rounding: the
    3-bit store holds the exact store's very sums), a sources-only read
    costs 3 tangents instead of 36 and gives bit for bit the source scores
    of a full read, equal to the documents' sums up to float32 rounding."""
    _, _, s = stores
    exact, quant = TextAttributor(s["exact"]), TextAttributor(s["quantized"])
    assert s["exact"].manifest.has_sources and exact.source_rows[0].shape == (3, exact.rows[0].shape[1])
    torch.testing.assert_close(exact.source_rows[0], exact.membership.T @ exact.rows[0], rtol=1e-5,
                               atol=1e-6 * exact.rows[0].abs().max().item())
    torch.testing.assert_close(quant.source_rows[0], exact.source_rows[0], rtol=0, atol=0)
    assert (exact.tangents(examples=False), exact.tangents(examples=True)) == (3, 39)
    qs = [exact.encode("w1 w2 s0x3 w5 w7 s0x1"), exact.encode(prompt="w3 w4", completion="s1x2 s1x4 w9")]
    full, alone = exact.score(qs), exact.score(qs, examples=False)
    assert alone.examples is None and torch.equal(alone.sources, full.sources)
    assert torch.equal(alone.logprob, full.logprob)
    # f and the token log-probabilities come from the readout's own primal pass: the model's forward
    x, mask = exact.batch(qs)
    model = GPT(exact.spec, seed=None)
    torch.testing.assert_close(full.logprob, sequence_logprob(model, x, exact.params[0], mask), rtol=1e-5, atol=1e-5)
    ref = token_logprobs(model, x, exact.params[0])
    for i, t in enumerate(full.token_logprobs):
        torch.testing.assert_close(torch.tensor(t), ref[i][mask[i]], rtol=1e-5, atol=1e-5)
    by_docs = full.examples @ exact.membership
    torch.testing.assert_close(full.sources, by_docs, rtol=1e-4, atol=1e-5 * by_docs.abs().max().item())
    # the 3-bit store's sources come from the exact sums, not from its rounded rows
    torch.testing.assert_close(quant.score(qs, examples=False).sources, full.sources, rtol=1e-5, atol=1e-6)


def test_wants_source_rows():
    from worker.lm_pipeline import wants_source_rows

    assert wants_source_rows("auto", 15, 450) and not wants_source_rows("auto", 312, 450)
    assert wants_source_rows("auto", 12, 48) and not wants_source_rows("auto", 13, 48)
    assert wants_source_rows("always", 312, 450) and not wants_source_rows("never", 3, 450)


def test_score_cli_and_bad_queries(stores, tmp_path):
    root, _, _ = stores
    q = tmp_path / "q.jsonl"
    q.write_text('{"text": "w1 w2 w3 s0x1"}\n{"prompt": "w4 w5", "completion": "s1x1 s1x2"}\n')
    cmd = [sys.executable, "-m", "worker", "score", "--store", str(root / "compressed"), "--queries", str(q),
           "--out", str(tmp_path / "out"), "--top-k", "2"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "out" / "examples.npy").shape == (2, 36)
    assert np.load(tmp_path / "out" / "sources.npy").shape == (2, 3)
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "pub-" in summary and "document" in summary
    q.write_text('{"text": "w1 w2"}\n{"prompt": 3, "completion": "x"}\n')
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "line 2" in r.stderr and "'prompt'" in r.stderr and "Traceback" not in r.stderr


def test_text_data_needs_a_gpt():
    from worker.config import ConfigError

    with pytest.raises(ConfigError, match="does not fit the data"):
        load_config("digits", overrides=["data.name=brown"])
