"""The Python API (``forward_attribution``) as the README shows it: the
README's block is run as written (paths pointed at a tiny checkpoint and
corpus, fast settings added), and its frames hold the engine's own numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import forward_attribution as fa
from influence.errors import QueryError
from influence.mlp.attributor import VectorAttributor
from influence.store import open_store
from influence.text.attributor import TextAttributor

from .service.hf_store import FAST
from .text_corpus import write_corpus

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_block() -> str:
    text = README.read_text()
    return re.search(r"```python\n(import forward_attribution as fa\n.*?)```", text, re.S).group(1)


def test_the_readme_block_runs_as_written(tmp_path, monkeypatch):
    from tests.hf.conftest import save_tiny_checkpoint

    data = write_corpus(tmp_path / "docs.jsonl")
    base = save_tiny_checkpoint(tmp_path / "ckpt", [json.loads(x)["text"] for x in data.read_text().splitlines()])
    code = _readme_block().replace("path/to/checkpoint", str(base)).replace("docs.jsonl", str(data))
    fast = {k: json.loads(v) for k, v in (o.split("=", 1) for o in FAST)}
    code = code.replace('store="stores/mine")', f'store="stores/mine", settings={fast!r}, progress=False)')
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    frame = np.loadtxt(tmp_path / "documents.csv", delimiter=",", skiprows=1)[:, 1:]
    ref = TextAttributor(open_store(tmp_path / "stores/mine"), "cpu")
    want = ref.score([ref.encode("a query text")]).examples
    np.testing.assert_allclose(frame[0], want[0].numpy(), rtol=1e-5)


def test_text_frames_are_labelled_and_equal_the_readout(tmp_path):
    from tests.service.hf_store import build_hf_store

    root = build_hf_store(tmp_path)
    att = fa.Attributor(root, device="cpu")
    texts = ["w1 w2 s0x3 s0x4", "s2x1 s2x2 w5"]
    res = att.score(texts, batch=1)
    ref = TextAttributor(open_store(root), "cpu")
    want = ref.score([ref.encode(t) for t in texts])
    man = open_store(root).manifest
    assert list(res.sources.columns) == man.source_ids
    assert list(res.documents.columns) == [d["id"] for d in ref.documents]
    np.testing.assert_allclose(res.sources.to_numpy(), want.sources.double().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.f.to_numpy(), want.logprob.double().numpy(), rtol=1e-6)
    top = res.top("sources", 2)
    assert list(top.columns) == ["query", "rank", "id", "score"] and len(top) == 4
    assert top.iloc[0]["id"] == res.sources.iloc[0].idxmax()
    completion = att.score({"prompt": "w1 w2", "completion": " s0x3 s0x4"}, documents=False)
    assert completion.documents is None and completion.sources.shape == (1, len(man.source_ids))
    with pytest.raises(QueryError, match="queries"):
        att.score([42])
    with pytest.raises(QueryError, match="level"):
        completion.top("documents")


def test_vector_frames_equal_the_readout(tiny_store):
    att = fa.Attributor(fa.open_store(tiny_store), device="cpu")
    x = torch.rand(3, att.store.manifest.model.in_dim)
    res = att.score(x.numpy())
    want = VectorAttributor(open_store(tiny_store), "cpu").score(x)
    assert list(res.documents.columns) == list(range(len(att.store.manifest.example_source)))
    np.testing.assert_allclose(res.documents.to_numpy(), want.examples.double().numpy(), rtol=1e-6)
    np.testing.assert_allclose(res.sources.to_numpy(), want.sources.double().numpy(), rtol=1e-6)
    assert res.top("documents", 3).shape == (9, 4)
