"""A tiny ``hf`` store for the service and reliability tests: a random
two-layer GPT-2 checkpoint with a byte-level BPE trained on the tiny text
corpus (``tests.hf.conftest.save_tiny_checkpoint``), LoRA fine-tuned and
simulated by ``worker.hf_pipeline`` with the fast settings of
``tests/worker/test_hf_pipeline.py`` (seconds on one core), republished with
publisher display names. Context 32 tokens: a query holds 2 to 33."""

from __future__ import annotations

import json
from pathlib import Path

from influence.store import open_store, publish

from ..text_corpus import write_corpus

HF_NAMES = {"pub-0": "Zero Street Gazette", "pub-1": "One Lane Books", "pub-2": "Two Rivers Review"}
FAST = ["method.rank=32", "method.curvature_subset=8", "method.steps=50", "train.epochs=1", "data.max_blocks=2",
        "store.quant_bits=0"]


def build_hf_store(tmp: Path) -> Path:
    """Build it under ``tmp``; returns the store root (version v000002: v000001 without display names)."""
    from tests.hf.conftest import save_tiny_checkpoint
    from worker.config import load_config
    from worker.hf_pipeline import build_hf

    data = write_corpus(tmp / "docs.jsonl")
    base = save_tiny_checkpoint(tmp / "base", [json.loads(line)["text"] for line in data.read_text().splitlines()])
    root = tmp / "store"
    build_hf(load_config("hf", overrides=[f'model.path="{base}"', f'data.path="{data}"', f'store.root="{root}"',
                                          *FAST]), progress=False)
    st = open_store(root)
    man = st.manifest
    extra = {**man.extra, "source_names": [HF_NAMES[i] for i in man.source_ids]}
    publish(root, man.model_copy(update={"extra": extra}), st.params, st.examples, st.sources, None,
            example_coef=st.example_coef, assets=st.assets)
    return root


def fit_words(tok, words: list[str], most: int) -> str:
    """The longest prefix of ``words`` (joined with spaces) that ``tok`` reads as at most ``most`` tokens."""
    while len(words) > 1 and len(tok.tokenize(" ".join(words))) > most:
        words = words[:-1]
    return " ".join(words)
