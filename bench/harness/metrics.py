"""Attribution metrics from a score matrix ``τ (m queries, n examples / documents / sources)``.

Sign convention (the method page, both protocols): ``τ(q, b) > 0`` means training on ``b`` raises the
query's output; removing ``b`` moves it by about ``−τ/n``.

- **LDS** (``lds_per_query``): per query, the Spearman correlation across subsets ``j`` between
  ``Σ_{b∈S_j} τ(q, b)`` and the true output of the model trained on ``S_j``; ``centred=True`` first
  subtracts from targets and predictions each subset's mean over the queries. ``levels`` gives it at
  document, genre and centred-genre level (genre scores: sums over each genre's documents).
- **LOO** (``loo``, digits): per query, the correlation across left-out examples between ``−τ(q, b)``
  and the seed-averaged true change; ``split_half`` is the noise level of that truth.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from influence.audit import colcorr


def subsets_to_mask(subsets: np.ndarray, n: int) -> np.ndarray:
    """``(J, s)`` index rows (or an already boolean ``(J, n)``) → ``(J, n)`` bool."""
    subsets = np.asarray(subsets)
    if subsets.dtype == bool:
        return subsets
    m = np.zeros((subsets.shape[0], n), dtype=bool)
    np.put_along_axis(m, subsets.astype(np.int64), True, axis=1)
    return m


def predict_subsets(tau: np.ndarray, subsets: np.ndarray) -> np.ndarray:
    """``(J, m)`` predicted subset outputs ``Σ_{b∈S_j} τ(q, b)`` (float64)."""
    return subsets_to_mask(subsets, tau.shape[1]).astype(np.float64) @ np.asarray(tau, dtype=np.float64).T


def lds_per_query(tau: np.ndarray, subsets: np.ndarray, targets: np.ndarray, centred: bool = False) -> np.ndarray:
    """``tau (m, n)``, ``subsets (J, n)`` bool or ``(J, s)`` indices, ``targets (J, m)`` → Spearman
    correlation per query ``(m,)`` (NaN where a column is constant)."""
    pred, tgt = predict_subsets(tau, subsets), np.asarray(targets, dtype=np.float64)
    if centred:
        pred = pred - pred.mean(axis=1, keepdims=True)
        tgt = tgt - tgt.mean(axis=1, keepdims=True)
    return colcorr(rankdata(pred, axis=0), rankdata(tgt, axis=0))


def lds(tau: np.ndarray, subsets: np.ndarray, targets: np.ndarray, centred: bool = False) -> float:
    return float(np.nanmean(lds_per_query(tau, subsets, targets, centred)))


def to_sources(tau: np.ndarray, doc_source: np.ndarray, n_sources: int) -> np.ndarray:
    """``(m, n_docs)`` → ``(m, n_sources)``: sum over each source's documents."""
    onehot = np.zeros((len(doc_source), n_sources))
    onehot[np.arange(len(doc_source)), doc_source] = 1.0
    return np.asarray(tau, dtype=np.float64) @ onehot


def levels(tau: np.ndarray, gt, genre: np.ndarray, n_genres: int = 15) -> dict[str, float]:
    """LDS of one ``tau (m, 450)`` at the levels the ground truth (``bench.harness.truth.GroundTruth``)
    has: ``document``, ``genre`` (sums over each genre) and ``genre_centred``."""
    row = {}
    if len(gt.doc_targets) >= 2:
        row["document"] = lds(tau, gt.doc_subsets, gt.doc_targets)
    if len(gt.genre_targets) >= 2:
        tg = to_sources(tau, genre, n_genres)
        row["genre"] = lds(tg, gt.genre_subsets, gt.genre_targets)
        row["genre_centred"] = lds(tg, gt.genre_subsets, gt.genre_targets, centred=True)
    return row


def loo(tau: np.ndarray, idx: np.ndarray, loo_margins: np.ndarray, full: np.ndarray) -> dict[str, float]:
    """Per query, correlation across the ``L`` left-out examples between ``−τ(q, b)`` and the
    seed-averaged true change ``mean_s(margin_without_b,s − margin_full,s)``; averaged over queries.
    ``loo_margins (L, S, m)``, ``full (S, m)``."""
    true = (loo_margins - full[None]).mean(1)  # (L, m)
    pred = -tau[:, idx].T.astype(np.float64)  # (L, m)
    return {"pearson": float(np.nanmean(colcorr(pred, true))),
            "spearman": float(np.nanmean(colcorr(rankdata(pred, axis=0), rankdata(true, axis=0))))}


def split_half(loo_margins: np.ndarray, full: np.ndarray) -> float:
    """Noise level of the LOO truth: per query, Pearson correlation across examples between the true
    change averaged over the first half of the seeds and over the rest; mean over queries (NaN with one
    seed)."""
    d = loo_margins - full[None]  # (L, S, m)
    h = d.shape[1] // 2
    if h == 0:
        return float("nan")
    return float(np.nanmean(colcorr(d[:, :h].mean(1), d[:, h:].mean(1))))
