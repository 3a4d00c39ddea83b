"""TRAK on precomputed gradients, with traker's own projector and score computer (``traker`` 0.3.2):
``trak.projectors.BasicProjector`` (normal entries, ``seed = 0``, ``model_id`` = member, ``block_size =
k`` so the ``(p, k)`` matrix is generated once and stays resident), ``phi = Pᵀ g / sqrt(p)`` as
``TRAKer.featurize`` / ``score`` do, and ``trak.score_computers.BasicScoreComputer`` in float32 with
``lambda_reg`` (its inverse rescaled by its mean absolute entry); an ensemble is the mean of member
scores times the out-to-loss weight, as ``TRAKer.finalize_scores``. Used by the text benchmarks
(``bench.lm``, ``bench.ft``, ``bench.sources.lm_quality``, ``bench.serving.load_text``); the digits
benchmarks run a whole ``TRAKer`` (``bench.digits.trak``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch


def projector(p: int, k: int, member: int, seed: int = 0):
    """traker's CPU projector, matrix resident (``block_size = k``)."""
    from trak.projectors import BasicProjector, ProjectionType

    return BasicProjector(grad_dim=p, proj_dim=k, seed=seed, proj_type=ProjectionType.normal, device="cpu",
                          block_size=k, dtype=torch.float32, model_id=member)


def trak_features(grads: torch.Tensor, proj, member: int) -> torch.Tensor:
    """``phi = Pᵀ g / sqrt(p)`` of ``grads (n, p)`` → ``(n, k)``."""
    return proj.project(grads.float(), model_id=member) / math.sqrt(grads.shape[1])


def _computer(lam: float):
    from trak.score_computers import BasicScoreComputer

    return BasicScoreComputer(dtype=torch.float32, device="cpu", lambda_reg=lam, logging_level=40)


def finalized(phi_train: torch.Tensor, lam: float) -> torch.Tensor:
    """traker's finalised train features ``Φ (ΦᵀΦ + λI)⁻¹`` ``(n, k)``: a query's scores are ``phi_q @ it.T``."""
    sc = _computer(lam)
    return sc.get_x_xtx_inv(phi_train.float(), sc.get_xtx(phi_train.float()))


def trak_member_scores(phi_train: torch.Tensor, phi_q: torch.Tensor, lam: float) -> torch.Tensor:
    """One member's scores through ``BasicScoreComputer.get_scores`` → ``(m, n)``."""
    acc = torch.zeros(phi_train.shape[0], phi_q.shape[0])  # traker's layout: (train, targets)
    _computer(lam).get_scores(finalized(phi_train, lam), phi_q.float(), accumulator=acc)
    return acc.T


def trak_scores(phi_train: list[torch.Tensor], phi_q: list[torch.Tensor], lam: float, out_to_loss: float = 1.0
                ) -> np.ndarray:
    """Ensemble as ``TRAKer.finalize_scores``: ``(Σ_e scores_e / E) · mean Q`` → ``(m, n)`` float64."""
    acc = sum(trak_member_scores(a, b, lam) for a, b in zip(phi_train, phi_q))
    return (acc / len(phi_train) * out_to_loss).double().numpy()


def lam_grid(phi_train: list[torch.Tensor], rel: Iterable[float]) -> list[float]:
    """``λ = r · mean eigenvalue of ΦᵀΦ`` (averaged over members) for each relative ``r``."""
    tr = float(np.mean([float((f.double() ** 2).sum()) / f.shape[1] for f in phi_train]))
    return [r * tr for r in rel]
