"""Settings and data of the language-model quality benchmark
(``docs/lm-protocol.md``, the ``brown`` preset).

Everything that defines the ground truth lives in ``LMProtocol``; its hash
(with the corpus fingerprint ``BROWN_SHA256``, the model spec and the recipe
constants of ``worker.lm_train``) keys the cache ``bench/.cache/lm/<key>/``.

Choices where the protocol is silent (written down here, used everywhere):

- Full-data models: ensemble member ``e`` is trained with seed ``2 + e``
  (seeds 0 and 1 are never used), up to ``n_full`` members.
- Queries: ``query_windows(heldout_tokens, n_queries, seed=query_seed)``
  (query ``k`` from held-out document ``k mod 50``, a uniform start);
  ``f(q) = sequence_logprob`` (mean log-prob of the 64 targets).
- Document subsets: subset ``j`` is ``sorted(rng.choice(450, 225,
  replace=False))`` with ``rng = np.random.default_rng([selection_seed, 0,
  j])``: one stream per subset, so asking for more subsets later keeps the
  earlier ones (and their cache files) unchanged. Trained with seeds
  ``doc_seeds`` on the blocks of the kept documents; target = mean over the
  seeds.
- Genre subsets: subset ``g`` draws ``rng.random(15) < genre_p`` with ``rng =
  np.random.default_rng([selection_seed, 1, g])``, redrawing from the same
  stream until at least ``genre_min`` genres are in; trained on all blocks of
  the training documents of the included genres with seeds ``genre_seeds``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from influence.text.brown import BROWN_SHA256
from influence.text.corpus import LMCorpus, brown_corpus
from influence.text.gpt import GPTSpec
from worker import lm_train

LM_GT_VERSION = 1
CACHE = Path(__file__).resolve().parents[1] / ".cache" / "lm"
N_TRAIN = 450
N_GENRES = 15
SPEC = GPTSpec()  # V=2000, d=64, 2 layers, 4 heads, context 64: 232,192 parameters


@dataclass(frozen=True)
class LMProtocol:
    n_queries: int = 100
    query_seed: int = 12345
    selection_seed: int = 777
    doc_subset_size: int = 225
    doc_seeds: tuple[int, ...] = (2, 3)
    genre_p: float = 0.5
    genre_min: int = 3
    genre_seeds: tuple[int, ...] = (2,)
    full_seed0: int = 2

    def key(self) -> str:
        """Cache key: protocol settings + corpus fingerprint + spec + recipe +
        version. Not the subset counts nor the seed lists: more subsets or
        seeds only add run files (each file name carries its index and seed)."""
        recipe = {k: getattr(lm_train, k) for k in ("LR_MAX", "BETAS", "EPS", "WEIGHT_DECAY", "BATCH", "EPOCHS")}
        settings = {k: v for k, v in asdict(self).items() if k not in ("doc_seeds", "genre_seeds")}
        blob = json.dumps(
            {"p": settings, "data": BROWN_SHA256, "spec": SPEC.model_dump(mode="json"),
             "recipe": recipe, "v": LM_GT_VERSION},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def cache_dir(self) -> Path:
        return CACHE / self.key()

    def full_seed(self, e: int) -> int:
        return self.full_seed0 + e

    def doc_subset(self, j: int) -> np.ndarray:
        """``(225,)`` sorted training-document indices of document subset ``j``."""
        rng = np.random.default_rng([self.selection_seed, 0, j])
        return np.sort(rng.choice(N_TRAIN, self.doc_subset_size, replace=False)).astype(np.int64)

    def genre_subset(self, g: int) -> np.ndarray:
        """``(15,)`` bool: the genres of genre subset ``g``."""
        rng = np.random.default_rng([self.selection_seed, 1, g])
        while True:
            m = rng.random(N_GENRES) < self.genre_p
            if m.sum() >= self.genre_min:
                return m


DEFAULT = LMProtocol()


@lru_cache(maxsize=1)
def corpus() -> LMCorpus:
    return brown_corpus()


def queries(p: LMProtocol = DEFAULT) -> torch.Tensor:
    """``(m, 65)`` int64 query windows."""
    return corpus().queries(p.n_queries, p.query_seed)[0]


def doc_blocks(docs: np.ndarray, c: LMCorpus | None = None) -> np.ndarray:
    """Global block indices (sorted) of the training documents ``docs``."""
    c = corpus() if c is None else c
    own = np.isin(c.block_document.numpy(), np.asarray(docs))
    return np.flatnonzero(own).astype(np.int64)


def genre_docs(mask: np.ndarray, c: LMCorpus | None = None) -> np.ndarray:
    """Training-document indices of the genres set in ``mask (15,)``."""
    c = corpus() if c is None else c
    return np.flatnonzero(np.asarray(mask)[c.train_doc_source["genre"]]).astype(np.int64)


def doc_genre(c: LMCorpus | None = None) -> np.ndarray:
    """``(450,)`` genre index of every training document."""
    c = corpus() if c is None else c
    return c.train_doc_source["genre"]
