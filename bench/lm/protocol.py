"""Settings and data of the language-model quality benchmark (``docs/lm-protocol.md``, the ``brown``
preset). The subsets, seeds and run files are ``bench.harness.protocol``'s; what keys the ground truth
besides its settings: the corpus fingerprint ``BROWN_SHA256``, the model spec and the recipe constants
of ``influence.gpt.train``. Runs and member parameters live in ``bench/.cache/lm/<key>/``.

Queries: ``query_windows(heldout_tokens, n_queries, seed=query_seed)`` (query ``k`` from held-out
document ``k mod 50``, a uniform start); ``f(q) = sequence_logprob`` (mean log-prob of the 64 targets).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from bench.harness.protocol import N_GENRES, N_TRAIN, SubsetProtocol
from influence.datasets.brown import BROWN_SHA256, brown_corpus
from influence.gpt import train as lm_train
from influence.gpt.model import GPTSpec
from influence.text.corpus import LMCorpus

__all__ = ["CACHE", "DEFAULT", "N_GENRES", "N_TRAIN", "SPEC", "LMProtocol", "corpus", "doc_genre", "queries"]
LM_GT_VERSION = 1
CACHE = Path(__file__).resolve().parents[1] / ".cache" / "lm"
SPEC = GPTSpec()  # V=2000, d=64, 2 layers, 4 heads, context 64: 232,192 parameters


@dataclass(frozen=True)
class LMProtocol(SubsetProtocol):
    n_queries: int = 100
    query_seed: int = 12345
    selection_seed: int = 777

    def identity(self) -> dict:
        recipe = {k: getattr(lm_train, k) for k in ("LR_MAX", "BETAS", "EPS", "WEIGHT_DECAY", "BATCH", "EPOCHS")}
        return {"data": BROWN_SHA256, "spec": SPEC.model_dump(mode="json"), "recipe": recipe, "v": LM_GT_VERSION}

    def truth_dir(self) -> Path:
        return CACHE / self.key()


DEFAULT = LMProtocol()


@lru_cache(maxsize=1)
def corpus() -> LMCorpus:
    return brown_corpus()


def queries(p: LMProtocol = DEFAULT) -> torch.Tensor:
    """``(m, 65)`` int64 query windows."""
    return corpus().queries(p.n_queries, p.query_seed)[0]


def doc_genre(c: LMCorpus | None = None) -> np.ndarray:
    """``(450,)`` genre index of every training document."""
    c = corpus() if c is None else c
    return c.train_doc_source["genre"]
