"""Settings and data of the fine-tuning benchmark (``ft-protocol.md``: the ``brown-ft`` case, a
pretrained GPT-2-architecture base LoRA-tuned on the Brown openings). The subsets, seeds and run files
are ``bench.harness.protocol``'s; what keys the ground truth besides its settings: the sha256 of the
base's config and weights, the fine-tuning recipe, the LoRA spec and a version. The runs go to
``bench/results/ft_truth/<key>/`` (small files, committed, so a later session resumes or reuses them);
the full-data members' LoRA parameters (256 KB each) to ``bench/.cache/ft/<key>/`` (not committed; a
missing one is fine-tuned again, bit for bit on one thread). A ``base`` run records f(q) of the base.

Queries: ``n_queries = 256`` windows from ``influence.datasets.brown_ft.query_windows(text, 256,
seed=query_seed)`` (every non-overlapping window of 64 corpus tokens of the 50 held-out documents,
drawn without replacement), encoded and truncated to 128 BPE tokens, right-padded in batches; ``f(q) =
sequence_logprob`` with the target mask (mean log-prob of every token after the first).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from bench.harness.common import CACHE, RESULTS
from bench.harness.protocol import N_GENRES, N_TRAIN, SubsetProtocol
from influence.hf.spec import HFSpec, LoraSpec
from worker.hf_train import FTRecipe

FT_GT_VERSION = 1
BASE_DIR = Path(__file__).resolve().parents[2] / "influence" / "hf" / "brown_ft_base"
TRUTH = RESULTS / "ft_truth"
PARAMS_CACHE = CACHE / "ft"
__all__ = ["BASE_DIR", "DEFAULT", "N_GENRES", "N_PUBLICATIONS", "N_TRAIN", "RECIPE", "SPEC", "FTProtocol",
           "blocks", "doc_source", "outputs", "queries", "query_texts", "text"]
N_PUBLICATIONS = 312
# the protocol's LoRA: r 8, alpha 16 on c_attn / c_proj / c_fc (pinned: the key hashes it)
SPEC = HFSpec(trained="lora", lora=LoraSpec(target_modules=["c_attn", "c_proj", "c_fc"]))
RECIPE = FTRecipe()


@dataclass(frozen=True)
class FTProtocol(SubsetProtocol):
    n_queries: int = 256
    query_seed: int = 4242
    selection_seed: int = 9031
    base_run: ClassVar[bool] = True

    def identity(self) -> dict:
        return {"base": base_sha256(), "recipe": asdict(RECIPE), "lora": SPEC.lora.model_dump(mode="json"),
                "v": FT_GT_VERSION}

    def truth_dir(self) -> Path:
        return TRUTH / self.key()

    def params_dir(self) -> Path:
        return PARAMS_CACHE / self.key()


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
    from influence.datasets.brown_ft import ft_text

    return ft_text()


@lru_cache(maxsize=1)
def blocks() -> tuple[torch.Tensor, torch.Tensor]:
    """``(blocks (1800, 65), block_document (1800,))``."""
    from influence.datasets.brown_ft import ft_blocks

    return ft_blocks(tokenizer(), text().openings)


@lru_cache(maxsize=4)
def _windows(n: int, seed: int):
    from influence.datasets.brown_ft import query_windows

    return query_windows(text(), n, seed)


def query_texts(p: FTProtocol = DEFAULT) -> list[str]:
    return [w[2] for w in _windows(p.n_queries, p.query_seed)]


@lru_cache(maxsize=4)
def _encoded(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from influence.datasets.brown_ft import encode_queries
    from influence.text.causal import pad_right

    return pad_right(encode_queries(tokenizer(), [w[2] for w in _windows(n, seed)]))


def queries(p: FTProtocol = DEFAULT) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x (m, L) int64, target_mask (m, L-1) bool)``, right-padded."""
    return _encoded(p.n_queries, p.query_seed)


def doc_source(level: str = "genre") -> np.ndarray:
    """``(450,)`` source index per training document (``genre``: 15, ``publication``: 312)."""
    return text().doc_source[level]


@torch.no_grad()
def outputs(model, x: torch.Tensor, mask: torch.Tensor, batch: int = 32) -> np.ndarray:
    """``f(q)`` of every row (float64 numpy), in batches, trimmed to each batch's longest row."""
    from influence.text.causal import sequence_logprob

    out = []
    for i in range(0, len(x), batch):
        m = mask[i : i + batch]
        L = int(m.sum(1).max()) + 1
        out.append(sequence_logprob(model, x[i : i + batch, :L], None, m[:, : L - 1]).double().numpy())
    return np.concatenate(out)
