"""A tiny synthetic JSONL corpus and tiny-GPT overrides shared by the text-store tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TINY_GPT = ["model.d=8", "model.heads=2", "model.layers=1", "method.rank=48", "method.curvature_subset=8",
            "method.steps=50"]
"""``--set`` overrides of the ``brown`` preset: a GPT of a few thousand parameters that builds in seconds."""
TINY_TEXT_STORE = ["method.compress_rank=16"]
"""The service tests' text store: the tiny GPT with rank-16 responses (and per-source rows: 3 sources)."""


def write_corpus(path: Path) -> Path:
    """40 documents of 300 words from 3 publishers (``pub-0..2``) with their own favourite words."""
    rng = np.random.default_rng(0)
    common = [f"w{i}" for i in range(60)]
    lines = []
    for d in range(40):
        s = d % 3
        own = [f"s{s}x{i}" for i in range(15)]
        words = rng.choice(common + own * 3, size=300)
        lines.append(json.dumps({"id": f"d{d:03d}", "source": f"pub-{s}", "text": " ".join(words)}))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_short_and_long(path: Path, empty_source: bool = False) -> Path:
    """``write_corpus``'s 40 long documents (300 words) and 12 short ones (2 to 5 words, under one block),
    a source ``pub-short`` of short documents only, and optionally ``pub-empty`` whose one document is 1 token."""
    write_corpus(path)
    lines = path.read_text().splitlines()
    lines += [json.dumps({"id": f"short{i}", "source": "pub-short" if i < 4 else f"pub-{i % 3}",
                          "text": " ".join(f"s{i % 3}x{j}" for j in range(i % 4 + 2))}) for i in range(12)]
    if empty_source:
        lines.append(json.dumps({"id": "tiny", "source": "pub-empty", "text": "w"}))
    path.write_text("\n".join(lines) + "\n")
    return path


def build_text_store(tmp: Path, *overrides: str) -> Path:
    """Build a text store from ``write_corpus`` under ``tmp`` with the tiny
    GPT (``TINY_GPT``) and ``overrides``; returns the store root."""
    from worker.config import load_config
    from worker.lm_pipeline import build

    data = write_corpus(tmp / "docs.jsonl")
    build(load_config("brown", overrides=[f'data.path="{data}"', f'store.root="{tmp / "store"}"', *TINY_GPT,
                                          *overrides]), progress=False)
    return tmp / "store"
