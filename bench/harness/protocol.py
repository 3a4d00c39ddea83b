"""The subset protocol shared by the text benchmarks (``docs/lm-protocol.md``, ``ft-protocol.md``): 450
training documents in 15 genres, full-data members, document subsets and genre subsets, each retrained
with a few seeds. A family subclasses ``SubsetProtocol`` with its own defaults and what else keys its
ground truth (``identity``: corpus or base checksums, model spec, recipe, version).

Choices where the protocols are silent (the same for both):

- Full-data member ``e`` is trained with seed ``full_seed0 + e`` (2, 3, ...; seeds 0 and 1 never used).
- Document subset ``j`` is ``sorted(rng.choice(450, doc_subset_size, replace=False))`` with ``rng =
  default_rng([selection_seed, 0, j])``: one stream per subset, so asking for more subsets later keeps
  the earlier ones (and their run files) unchanged; target = the mean of f(q) over ``doc_seeds``.
- Genre subset ``g`` draws ``rng.random(15) < genre_p`` with ``rng = default_rng([selection_seed, 1,
  g])``, redrawn from the same stream until at least ``genre_min`` genres are in; trained on every block
  of the included genres' training documents with ``genre_seeds``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from bench.harness.common import digest

N_TRAIN, N_GENRES = 450, 15


@dataclass(frozen=True)
class SubsetProtocol:
    n_queries: int
    query_seed: int
    selection_seed: int
    doc_subset_size: int = 225
    doc_seeds: tuple[int, ...] = (2, 3)
    genre_p: float = 0.5
    genre_min: int = 3
    genre_seeds: tuple[int, ...] = (2,)
    full_seed0: int = 2
    base_run: ClassVar[bool] = False  # also f(q) of the model before any training on the corpus (``base``)

    def identity(self) -> dict:
        """What besides the settings defines the truth (a subclass's data, model, recipe, version)."""
        raise NotImplementedError

    def key(self) -> str:
        """Cache key: the settings (not the subset counts nor the seed lists: more subsets or seeds only add
        run files, each named by its index and seed) and ``identity()``."""
        settings = {k: v for k, v in asdict(self).items() if k not in ("doc_seeds", "genre_seeds")}
        return digest({"p": settings, **self.identity()}, sort_keys=True)

    def truth_dir(self) -> Path:
        """Where the run files live."""
        raise NotImplementedError

    def params_dir(self) -> Path:
        """Where the full-data members' parameters are cached (default: beside the runs)."""
        return self.truth_dir()

    def full_seed(self, e: int) -> int:
        return self.full_seed0 + e

    def doc_subset(self, j: int) -> np.ndarray:
        """``(doc_subset_size,)`` sorted training-document indices of document subset ``j``."""
        rng = np.random.default_rng([self.selection_seed, 0, j])
        return np.sort(rng.choice(N_TRAIN, self.doc_subset_size, replace=False)).astype(np.int64)

    def genre_subset(self, g: int) -> np.ndarray:
        """``(15,)`` bool: the genres of genre subset ``g``."""
        rng = np.random.default_rng([self.selection_seed, 1, g])
        while True:
            m = rng.random(N_GENRES) < self.genre_p
            if m.sum() >= self.genre_min:
                return m

    def subset(self, kind: str, index: int, block_document: np.ndarray, doc_genre: np.ndarray
               ) -> tuple[np.ndarray | None, np.ndarray]:
        """``(blocks trained on: sorted global block indices, None for all; the subset: document indices
        or a genre mask)`` of run ``kind`` (``full``, ``doc``, ``genre``) ``index``, given every block's
        training document ``(n_blocks,)`` and every document's genre ``(450,)``."""
        if kind == "full":
            return None, np.arange(N_TRAIN)
        if kind == "doc":
            docs = subset = self.doc_subset(index)
        elif kind == "genre":
            subset = self.genre_subset(index)
            docs = np.flatnonzero(subset[np.asarray(doc_genre)])
        else:
            raise ValueError(kind)
        return np.flatnonzero(np.isin(np.asarray(block_document), docs)).astype(np.int64), subset
