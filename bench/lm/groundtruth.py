"""Retraining ground truth of the language-model benchmark (``docs/lm-protocol.md``; settings in
:mod:`bench.lm.protocol`, runs, files and resuming in :mod:`bench.harness.truth`): the protocol GPT
trained from scratch (``influence.gpt.train``) on all blocks, on document subsets and on genre subsets.
A full member's parameters are cached too (``full-e{e}.pt``), for the methods; its file also records
its held-out perplexity.

    python -m bench.lm.groundtruth [--full 5 --doc-subsets 48 --genre-subsets 24 --seeds 2 --genre-seeds 1]
    python -m bench.lm.groundtruth --status
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.harness import truth
from bench.harness.common import save_torch
from bench.lm.protocol import DEFAULT, SPEC, LMProtocol, corpus, doc_genre, queries
from influence.gpt.train import train_lm
from influence.text.causal import sequence_logprob
from influence.text.corpus import all_windows


def full_params_path(p: LMProtocol, e: int) -> Path:
    return p.params_dir() / f"full-e{e}.pt"


@torch.no_grad()
def evaluate(params: dict[str, torch.Tensor], x: torch.Tensor, batch: int = 256) -> np.ndarray:
    model = SPEC.build(0)
    model.load_state_dict(params)
    model.eval()
    return np.concatenate([sequence_logprob(model, x[i : i + batch]).double().numpy() for i in range(0, len(x), batch)])


def run_one(p: LMProtocol, kind: str, index: int, seed: int, threads: int = 1) -> float:
    """Train one run and write its file; returns its training seconds."""
    c = corpus()
    keep, subset = p.subset(kind, index, c.block_document.numpy(), doc_genre(c))
    t0 = time.perf_counter()
    params, stats = train_lm(SPEC, c.blocks, keep=keep, seed=seed)
    train_s = time.perf_counter() - t0
    out = evaluate(params, queries(p))
    extra = {}
    if kind == "full":
        extra["heldout_ppl"] = np.float64(np.exp(-evaluate(params, all_windows(c.heldout_tokens)).mean()))
        save_torch(params, full_params_path(p, index))
    truth.save(truth.run_path(p, kind, index, seed), outputs=out, seconds=np.float64(train_s),
               wall=np.float64(time.perf_counter() - t0), subset=subset, seed=np.int64(seed),
               final_loss=np.float64(stats["final_loss"]), n_blocks=np.int64(stats["n_blocks"]), **extra)
    return train_s


def load_full_params(e: int, p: LMProtocol = DEFAULT) -> dict[str, torch.Tensor]:
    return torch.load(full_params_path(p, e), weights_only=True)


def n_full_available(p: LMProtocol = DEFAULT) -> int:
    e = 0
    while full_params_path(p, e).exists() and truth.run_path(p, "full", e, p.full_seed(e)).exists():
        e += 1
    return e


if __name__ == "__main__":
    sys.exit(truth.main(DEFAULT, run_one, __doc__))
