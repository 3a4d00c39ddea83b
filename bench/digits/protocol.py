"""The digits protocols (MLP 64-128-10) and their data: ``Protocol`` (LDS over example subsets, LOO)
and ``SourceProtocol`` (the built-in publishers: ``bench.sources``).

Everything that defines a ground truth lives in its protocol; the hash of its fields, the data, the
recipe, the model and its ``version`` (raised when the trainer changes) keys the cache in
``bench/.cache/``, so a change of any of them recomputes the ground truth.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from bench.harness.common import digest
from influence.datasets.vectors import load_digits_train
from influence.mlp.model import MLPSpec
from worker.config import TrainConfig, WorkerConfig, load_config

CACHE = Path(__file__).resolve().parents[1] / ".cache"
RESULTS = Path(__file__).resolve().parents[1] / "results"


class _Keyed:
    version: ClassVar[int]

    def key(self, data_fp: str, recipe: TrainConfig, spec: MLPSpec, **more) -> str:
        return digest({"p": asdict(self), "data": data_fp, "recipe": recipe.model_dump(mode="json"),
                       "spec": spec.model_dump(mode="json"), **more, "v": self.version}, sort_keys=True)


@dataclass(frozen=True)
class Protocol(_Keyed):
    """LDS: ``n_subsets`` random subsets of size ``floor(alpha·n)``, each
    trained with ``lds_seeds`` seeds (margins averaged). LOO: ``n_loo``
    training examples, each removed and retrained with ``loo_seeds`` seeds,
    seed-matched with the full model of the same seed."""

    n_subsets: int = 100
    alpha: float = 0.5
    lds_seeds: int = 3
    n_loo: int = 100
    loo_seeds: int = 5
    selection_seed: int = 12345
    output: str = "margin"
    version: ClassVar[int] = 1


@dataclass(frozen=True)
class SourceProtocol(_Keyed):
    """``n_subsets`` random subsets of the publishers (each kept with probability ``keep_prob``, redrawn
    until at least ``min_keep`` are kept), every publisher removed alone, the full data; ``seeds``
    member seeds each; ``matched``: also the order-matched counterfactuals (``*_matched_margins``)."""

    n_subsets: int = 128
    keep_prob: float = 0.5
    min_keep: int = 2
    seeds: int = 3
    selection_seed: int = 2024
    output: str = "margin"
    matched: bool = True
    version: ClassVar[int] = 2


QUICK = Protocol(n_subsets=20, lds_seeds=1, n_loo=20, loo_seeds=2)


@dataclass
class Data:
    """``X (n, 64)``, ``y (n,)``, ``source (n,)`` training; ``Xq (m, 64)``,
    ``yq (m,)`` test queries scored on their true label."""

    X: torch.Tensor
    y: torch.Tensor
    source: torch.Tensor
    n_sources: int
    Xq: torch.Tensor
    yq: torch.Tensor
    fingerprint: str


def base_config() -> WorkerConfig:
    """The digits preset: SGD momentum 0.9, lr 0.05, batch 128, 40 epochs, wd 1e-4."""
    return load_config("digits")


def final_iterate_only(cfg: WorkerConfig) -> WorkerConfig:
    """``cfg`` with the simulation linearised at the final model alone
    (``method.iterates = 1``): the one-point filter, without averaging."""
    return cfg.model_copy(update={"method": cfg.method.model_copy(update={"iterates": 1})})


def load_data() -> Data:
    from influence.datasets.vectors import load_digits_test

    ds = load_digits_train()
    Xq, yq = load_digits_test()
    h = hashlib.sha256(ds.fingerprint().encode() + np.ascontiguousarray(Xq).tobytes() + yq.tobytes())
    return Data(torch.from_numpy(ds.X), torch.from_numpy(ds.y), torch.from_numpy(ds.source),
                len(ds.source_ids), torch.from_numpy(Xq), torch.from_numpy(yq), h.hexdigest()[:16])


def subsets(p: Protocol, n: int) -> np.ndarray:
    """``(n_subsets, floor(alpha·n))`` sorted training indices."""
    rng = np.random.default_rng(p.selection_seed)
    k = int(p.alpha * n)
    return np.stack([np.sort(rng.choice(n, size=k, replace=False)) for _ in range(p.n_subsets)])


def loo_examples(p: Protocol, n: int) -> np.ndarray:
    """``(n_loo,)`` sorted training indices to leave out."""
    rng = np.random.default_rng(p.selection_seed + 1)
    return np.sort(rng.choice(n, size=p.n_loo, replace=False))


def seeds(cfg: WorkerConfig, count: int) -> list[int]:
    """Training seeds ``member_seed(cfg, e)`` for ``e < count``: the LOO full
    models are the ensemble members every method reads."""
    from worker.pipeline import member_seed

    return [member_seed(cfg, e) for e in range(count)]
