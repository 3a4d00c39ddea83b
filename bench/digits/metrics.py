"""LDS and LOO scores from a score matrix ``τ (m queries, n examples)``.

Sign convention (method page): ``τ(q, b) > 0`` means upweighting ``b``
raises the query's output; removing ``b`` moves it by about ``−τ/n``.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def _colcorr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of matching columns of ``(J, m)`` arrays -> ``(m,)``
    (NaN where a column is constant)."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(0) / den, np.nan)


def lds(tau: np.ndarray, subsets: np.ndarray, true: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean over queries of the Spearman correlation across subsets ``j``
    between ``Σ_{b∈S_j} τ(q, b)`` and the true margin ``true (J, m)``.
    ``subsets (J, k)`` indices. Returns (mean, per-query ``(m,)``)."""
    pred = predict_subsets(tau, subsets)
    per = _colcorr(rankdata(pred, axis=0), rankdata(true, axis=0))
    return float(np.nanmean(per)), per


def predict_subsets(tau: np.ndarray, subsets: np.ndarray) -> np.ndarray:
    """``(J, m)`` predicted subset outputs ``Σ_{b∈S_j} τ(q, b)``."""
    mask = np.zeros((len(subsets), tau.shape[1]), dtype=np.float64)
    np.put_along_axis(mask, subsets, 1.0, axis=1)
    return mask @ tau.T.astype(np.float64)


def loo(tau: np.ndarray, idx: np.ndarray, loo_margins: np.ndarray, full: np.ndarray) -> dict[str, float]:
    """Per query, correlation across the ``L`` left-out examples between
    ``−τ(q, b)`` and the seed-averaged true change
    ``mean_s(margin_without_b,s − margin_full,s)``; averaged over queries.
    ``loo_margins (L, S, m)``, ``full (S, m)``."""
    true = (loo_margins - full[None]).mean(1)  # (L, m)
    pred = -tau[:, idx].T.astype(np.float64)  # (L, m)
    return {"pearson": float(np.nanmean(_colcorr(pred, true))),
            "spearman": float(np.nanmean(_colcorr(rankdata(pred, axis=0), rankdata(true, axis=0))))}


def split_half(loo_margins: np.ndarray, full: np.ndarray) -> float:
    """Noise level of the LOO truth: per query, Pearson correlation across
    examples between the true change averaged over the first half of the
    seeds and over the rest; averaged over queries (NaN with one seed)."""
    d = loo_margins - full[None]  # (L, S, m)
    h = d.shape[1] // 2
    if h == 0:
        return float("nan")
    return float(np.nanmean(_colcorr(d[:, :h].mean(1), d[:, h:].mean(1))))
