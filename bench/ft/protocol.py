"""Settings and data of the fine-tuning benchmark (``ft-protocol.md``: the
``brown-ft`` case, a pretrained GPT-2-architecture base LoRA-tuned on the
Brown openings).

Everything that defines the ground truth lives in ``FTProtocol``; its key
(protocol settings, the sha256 of the base's config and weights, the
fine-tuning recipe and the LoRA spec, a version) names the folder of the
cached runs, ``bench/results/ft_truth/<key>/`` (small files, committed, so a
later session resumes or reuses them). The full-data members' LoRA
parameters (256 KB each) go to ``bench/.cache/ft/<key>/`` (not committed; a
missing one is fine-tuned again, bit for bit on one thread).

Choices where the protocol is silent (written down here, used everywhere):

- Queries: ``n_queries = 256`` windows from ``influence.hf.ftdata.
  query_windows(text, 256, seed=query_seed)`` (every non-overlapping window
  of 64 corpus tokens of the 50 held-out documents, drawn without
  replacement), encoded and truncated to 128 BPE tokens, right-padded in
  batches; ``f(q) = sequence_logprob`` with the target mask (mean log-prob
  of every token after the first).
- Full-data members: member ``e`` is fine-tuned with seed ``2 + e`` (0 and 1
  never used).
- Document subsets: subset ``j`` is ``sorted(rng.choice(450, 225,
  replace=False))`` with ``rng = default_rng([selection_seed, 0, j])`` (one
  stream per subset: asking for more keeps the earlier ones), fine-tuned with
  seeds ``doc_seeds`` = (2, 3); target = mean f over the seeds.
- Genre subsets: subset ``g`` draws ``rng.random(15) < 0.5`` with ``rng =
  default_rng([selection_seed, 1, g])``, redrawn from the same stream until at
  least 3 genres are in; fine-tuned on every block of the included genres'
  documents with seeds ``genre_seeds`` (2,) [, 3].
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from bench.harness.common import CACHE, RESULTS
from influence.hf.spec import HFSpec, LoraSpec
from worker.hf_train import FTRecipe

FT_GT_VERSION = 1
BASE_DIR = Path(__file__).resolve().parents[2] / "influence" / "hf" / "brown_ft_base"
TRUTH = RESULTS / "ft_truth"
PARAMS_CACHE = CACHE / "ft"
N_TRAIN = 450
N_GENRES = 15
N_PUBLICATIONS = 312
# the protocol's LoRA: r 8, alpha 16 on c_attn / c_proj / c_fc (pinned: the key hashes it)
SPEC = HFSpec(trained="lora", lora=LoraSpec(target_modules=["c_attn", "c_proj", "c_fc"]))
RECIPE = FTRecipe()


@dataclass(frozen=True)
class FTProtocol:
    n_queries: int = 256
    query_seed: int = 4242
    selection_seed: int = 9031
    doc_subset_size: int = 225
    doc_seeds: tuple[int, ...] = (2, 3)
    genre_p: float = 0.5
    genre_min: int = 3
    genre_seeds: tuple[int, ...] = (2,)
    full_seed0: int = 2

    def key(self) -> str:
        """Settings (not the subset counts nor the seed lists: more of them only
        add run files) + base checksums + recipe + LoRA spec + version."""
        settings = {k: v for k, v in asdict(self).items() if k not in ("doc_seeds", "genre_seeds")}
        blob = json.dumps({"p": settings, "base": base_sha256(), "recipe": asdict(RECIPE),
                           "lora": SPEC.lora.model_dump(mode="json"), "v": FT_GT_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def truth_dir(self) -> Path:
        return TRUTH / self.key()

    def params_dir(self) -> Path:
        return PARAMS_CACHE / self.key()

    def full_seed(self, e: int) -> int:
        return self.full_seed0 + e

    def doc_subset(self, j: int) -> np.ndarray:
        rng = np.random.default_rng([self.selection_seed, 0, j])
        return np.sort(rng.choice(N_TRAIN, self.doc_subset_size, replace=False)).astype(np.int64)

    def genre_subset(self, g: int) -> np.ndarray:
        rng = np.random.default_rng([self.selection_seed, 1, g])
        while True:
            m = rng.random(N_GENRES) < self.genre_p
            if m.sum() >= self.genre_min:
                return m


DEFAULT = FTProtocol()


@lru_cache(maxsize=1)
def base_sha256() -> dict[str, str]:
    from influence.hf.loader import check_dir, weight_checksums

    return weight_checksums(check_dir(BASE_DIR))


@lru_cache(maxsize=1)
def tokenizer():
    from influence.hf.loader import load_tokenizer

    return load_tokenizer(BASE_DIR)


@lru_cache(maxsize=1)
def text():
    from influence.hf.ftdata import ft_text

    return ft_text()


@lru_cache(maxsize=1)
def blocks() -> tuple[torch.Tensor, torch.Tensor]:
    """``(blocks (1800, 65), block_document (1800,))``."""
    from influence.hf.ftdata import ft_blocks

    return ft_blocks(tokenizer(), text().openings)


@lru_cache(maxsize=4)
def _windows(n: int, seed: int):
    from influence.hf.ftdata import query_windows

    return query_windows(text(), n, seed)


def query_texts(p: FTProtocol = DEFAULT) -> list[str]:
    return [w[2] for w in _windows(p.n_queries, p.query_seed)]


def query_docs(p: FTProtocol = DEFAULT) -> np.ndarray:
    """Held-out document index of every query."""
    return np.array([w[0] for w in _windows(p.n_queries, p.query_seed)], dtype=np.int64)


@lru_cache(maxsize=4)
def _encoded(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from influence.hf.ftdata import encode_queries
    from influence.text.gpt import pad_right

    return pad_right(encode_queries(tokenizer(), [w[2] for w in _windows(n, seed)]))


def queries(p: FTProtocol = DEFAULT) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x (m, L) int64, target_mask (m, L-1) bool)``, right-padded."""
    return _encoded(p.n_queries, p.query_seed)


def doc_blocks(docs: np.ndarray) -> np.ndarray:
    """Global block indices (sorted) of the training documents ``docs``."""
    own = np.isin(blocks()[1].numpy(), np.asarray(docs))
    return np.flatnonzero(own).astype(np.int64)


def doc_source(level: str = "genre") -> np.ndarray:
    """``(450,)`` source index per training document (``genre``: 15, ``publication``: 312)."""
    return text().doc_source[level]


def genre_docs(mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.asarray(mask)[doc_source("genre")]).astype(np.int64)


@torch.no_grad()
def outputs(model, x: torch.Tensor, mask: torch.Tensor, batch: int = 32) -> np.ndarray:
    """``f(q)`` of every row (float64 numpy), in batches, trimmed to each batch's longest row."""
    from influence.text.gpt import sequence_logprob

    out = []
    for i in range(0, len(x), batch):
        m = mask[i : i + batch]
        L = int(m.sum(1).max()) + 1
        out.append(sequence_logprob(model, x[i : i + batch, :L], None, m[:, : L - 1]).double().numpy())
    return np.concatenate(out)
