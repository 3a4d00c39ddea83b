"""Source-level quality metrics: does ``τ(q, s)`` predict what retraining
without publisher ``s`` does to query ``q``?

Inputs share one layout: ``tau (m, S)`` per-source scores of ``m`` queries
(output units per unit upweighting, ``τ > 0``: the source pushes the output
up; see ``influence.whatif`` for the ``−τ/n`` removal scale); ``keep (J, S)``
bool, the sources each of ``J`` retrained subsets kept; true outputs of the
retrained models as ``(J, m)`` (one row per subset or per removed source,
seed means). Every correlation is taken per query across subsets or sources
and then averaged over queries (NaN-skipping: a query whose column is
constant has no correlation).

Used by the worker's ``audit`` (retrains a few subsets with a store's own
recipe and writes the result into the store) and by
``bench.sources.quality`` (the full benchmark).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from .whatif import removal

__all__ = ["colcorr", "draw_source_subsets", "loso", "source_lds", "truth_noise", "whatif_check"]


def colcorr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of matching columns of two ``(J, m)`` arrays ->
    ``(m,)`` (NaN where a column is constant)."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(0) / den, np.nan)


def _nanmean(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def draw_source_subsets(n_subsets: int, n_sources: int, keep_prob: float = 0.5, min_keep: int = 2,
                        seed: int = 2024) -> np.ndarray:
    """``(n_subsets, S)`` bool: each source kept with probability
    ``keep_prob``, a draw redrawn until it keeps at least ``min_keep``
    sources; deterministic in ``seed``."""
    if not 0 < keep_prob < 1 or not 0 <= min_keep <= n_sources:
        raise ValueError(f"need 0 < keep_prob < 1 and 0 <= min_keep <= {n_sources}")
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n_subsets:
        keep = rng.random(n_sources) < keep_prob
        if keep.sum() >= min_keep:
            out.append(keep)
    return np.stack(out) if out else np.zeros((0, n_sources), bool)


def source_lds(tau: np.ndarray, keep: np.ndarray, true: np.ndarray) -> tuple[float, np.ndarray]:
    """Source-level LDS: per query, Spearman across subsets ``j`` between
    ``Σ_{s∈S_j} τ(q, s)`` and the true subset output ``true (J, m)``.
    Returns (mean over queries, per-query ``(m,)``)."""
    pred = keep.astype(np.float64) @ tau.T  # (J, m)
    per = colcorr(rankdata(pred, axis=0), rankdata(true, axis=0))
    return _nanmean(per), per


def loso(tau: np.ndarray, effect: np.ndarray) -> dict:
    """Leave-one-source-out. ``tau (m, L)`` scores of ``L`` sources,
    ``effect (L, m)`` the true ``full − without s`` (seed-matched mean).
    Per query Pearson / Spearman across the sources, mean over queries;
    ``top1_agree``: fraction of queries whose largest ``τ`` is the source
    whose removal lowers the output most."""
    t = tau.T  # (L, m)
    return {"loso_pearson": _nanmean(colcorr(t, effect)),
            "loso_spearman": _nanmean(colcorr(rankdata(t, axis=0), rankdata(effect, axis=0))),
            "top1_agree": float(np.mean(t.argmax(0) == effect.argmax(0)))}


def whatif_check(tau: np.ndarray, n: int, actual: np.ndarray, removed: np.ndarray) -> dict:
    """The first-order what-if (``influence.whatif.removal``: predicted
    ``Δ = −Σ_{s removed} τ/n``) against the actual change ``actual (J, m)``
    (retrained − full) for removal masks ``removed (J, S)``: ``pearson``
    over all (scenario, query) pairs, ``pearson_per_scenario`` (mean over
    scenarios of the Pearson across queries), ``mae`` (output units), the
    MAE after the best single scale factor (``mae_fitted``, ``scale_fit``:
    an oracle calibration), ``actual_mean_abs`` (the scale of the truth) and
    ``mean_change_pearson`` (of the per-scenario mean change)."""
    pred = removal(tau, n, removed).change  # (J, m)
    p, a = pred.ravel(), actual.ravel()
    k = float(p @ a / (p @ p)) if p @ p > 0 else float("nan")
    return {"pearson": float(np.corrcoef(p, a)[0, 1]),
            "pearson_per_scenario": _nanmean(colcorr(pred.T, actual.T)),
            "mae": float(np.abs(p - a).mean()), "mae_fitted": float(np.abs(k * p - a).mean()), "scale_fit": k,
            "actual_mean_abs": float(np.abs(a).mean()),
            "mean_change_pearson": float(np.corrcoef(pred.mean(1), actual.mean(1))[0, 1])}


def truth_noise(full: np.ndarray, loso_margins: np.ndarray, subset_margins: np.ndarray) -> dict:
    """Noise of a retraining ground truth: the LOSO and subset metrics
    between seed 0 alone and the mean of the other seeds. ``full (E, m)``,
    ``loso_margins (L, E, m)``, ``subset_margins (J, E, m)``; ``{}`` with
    one seed. An upper reference for what any attribution can reach."""
    if full.shape[0] < 2:
        return {}
    eff = full[None] - loso_margins  # (L, E, m)
    a, b = eff[:, 0], eff[:, 1:].mean(1)
    sm = subset_margins
    return {"loso_pearson_seed0_vs_rest": _nanmean(colcorr(a, b)),
            "loso_spearman_seed0_vs_rest": _nanmean(colcorr(rankdata(a, axis=0), rankdata(b, axis=0))),
            "top1_seed0_vs_rest": float(np.mean(a.argmax(0) == b.argmax(0))),
            "subset_spearman_seed0_vs_rest": _nanmean(colcorr(rankdata(sm[:, 0], axis=0),
                                                              rankdata(sm[:, 1:].mean(1), axis=0)))}
