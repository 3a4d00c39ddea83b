"""What-if: the first-order change of each query's output when sources are
removed or re-weighted, from attribution scores alone (no retraining).

Scale and sign (method page, "Target"): the training objective is the
*mean* loss ``L(θ) = (1/n) Σ_i ℓ(z_i; θ) + (wd/2)|θ|²`` over the ``n``
training examples, and ``τ(q, b) = −∇f(q)ᵀ H_λ⁻¹ g_b`` is the change of the
output ``f(q)`` per unit of weight ``ε`` added to ``ℓ(z_b)`` inside that sum,
so ``τ > 0`` means example ``b`` pushes the query's output up. Giving source
``s`` the weight ``w_s`` (1 = as trained, 0 = removed, 2 = counted twice)
changes each of its examples' weight by ``(w_s − 1)``, i.e. ``ε = (w_s −
1)/n``, and sources add up at first order (``τ(q, s) = Σ_{b∈s} τ(q, b)``):

    Δf(q) ≈ Σ_s (w_s − 1) · τ(q, s) / n

Removing the sources ``R`` is the special case ``w_s = 0`` for ``s ∈ R``:
``Δf(q) ≈ −Σ_{s∈R} τ(q, s) / n``. So a positive ``Δ`` means the output goes
*up* after the change; removing a source that helped (``τ > 0``) gives a
negative ``Δ``. ``n`` is the size of the training set the scores were
computed on (the ``1/n`` of the mean); the first-order formula keeps it
fixed (it does not model the renormalisation of the mean over fewer
examples, nor anything of second order in the weights).

Per-source scores ``τ (m, S)`` (e.g. the forward readout of the store's
per-source responses) are used as they are; per-example scores ``τ (m, n)``
are first summed per source with ``source (n,)``. Inputs may be numpy arrays
or torch tensors; results are float64 numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["WhatIf", "predict", "removal", "reweight", "source_scores"]


@dataclass(frozen=True)
class WhatIf:
    """``change``: predicted ``Δf`` per query, ``(m,)`` for one scenario or
    ``(J, m)`` for ``J`` scenarios; ``mean``: its mean over queries, a float
    or ``(J,)``. Output units of ``f`` (e.g. margin), after minus before."""

    change: np.ndarray
    mean: np.ndarray | float


def _array(x, name: str, ndim: tuple[int, ...]) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float64)
    if a.ndim not in ndim:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndim))} dimensions, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has non-finite entries")
    return a


def source_scores(tau, source=None, n_sources: int | None = None) -> np.ndarray:
    """``(m, S)`` per-source scores: ``tau`` itself when ``source`` is None,
    else per-example ``tau (m, n)`` summed per source ``source (n,)`` (ids in
    ``[0, n_sources)``; ``n_sources`` defaults to ``max(source) + 1``)."""
    t = _array(tau, "tau", (2,))
    if source is None:
        return t
    src = np.asarray(source.cpu() if hasattr(source, "cpu") else source)
    if src.ndim != 1 or len(src) != t.shape[1]:
        raise ValueError(f"source must be ({t.shape[1]},) to match tau's examples, got shape {src.shape}")
    if not np.issubdtype(src.dtype, np.integer):
        raise ValueError("source must hold integer source ids")
    S = int(src.max()) + 1 if n_sources is None and len(src) else int(n_sources or 0)
    if len(src) and (src.min() < 0 or src.max() >= S):
        raise ValueError(f"source ids must lie in [0, {S})")
    out = np.zeros((t.shape[0], S))
    np.add.at(out.T, src, t.T)
    return out


def predict(tau, n: int, weights, source=None, n_sources: int | None = None) -> WhatIf:
    """First-order ``Δf(q) = Σ_s (w_s − 1) τ(q, s) / n`` (see the module doc).

    tau: ``(m, S)`` per-source scores, or ``(m, n_ex)`` per-example with
    ``source``; n: training examples behind the ``1/n`` of the mean loss;
    weights: ``(S,)`` one scenario or ``(J, S)`` several (1 = unchanged)."""
    if int(n) != n or n <= 0:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    t = source_scores(tau, source, n_sources)
    w = _array(weights, "weights", (1, 2))
    if w.shape[-1] != t.shape[1]:
        raise ValueError(f"weights have {w.shape[-1]} sources, tau has {t.shape[1]}")
    change = (w - 1.0) @ t.T / n  # (m,) or (J, m)
    mean = change.mean(-1)
    return WhatIf(change, float(mean) if change.ndim == 1 else mean)


def _weights_for(removed, S: int) -> np.ndarray:
    r = np.asarray(removed.cpu() if hasattr(removed, "cpu") else removed)
    if r.dtype == bool:
        if r.shape[-1] != S or r.ndim not in (1, 2):
            raise ValueError(f"a boolean removal mask must be (S,) or (J, S) with S = {S}, got {r.shape}")
        return np.where(r, 0.0, 1.0)
    if r.ndim != 1 or (r.size and not np.issubdtype(r.dtype, np.integer)):
        raise ValueError("removed must be a boolean mask or a 1-D list of source ids")
    if r.size and (r.min() < 0 or r.max() >= S):
        raise ValueError(f"removed source ids must lie in [0, {S})")
    w = np.ones(S)
    w[r.astype(np.int64)] = 0.0
    return w


def removal(tau, n: int, removed, source=None, n_sources: int | None = None) -> WhatIf:
    """Remove sources: ``Δf(q) = −Σ_{s∈removed} τ(q, s) / n``. ``removed``:
    source ids (a list), a bool mask ``(S,)`` or masks ``(J, S)`` (True =
    removed) for several scenarios at once."""
    t = source_scores(tau, source, n_sources)
    return predict(t, n, _weights_for(removed, t.shape[1]))


def reweight(tau, n: int, weights, source=None, n_sources: int | None = None) -> WhatIf:
    """Re-weight sources: ``Δf(q) = Σ_s (w_s − 1) τ(q, s) / n``; a mapping
    ``{source id: weight}`` (others stay 1) or a full ``(S,)`` / ``(J, S)``
    array of weights."""
    t = source_scores(tau, source, n_sources)
    if isinstance(weights, dict):
        w = np.ones(t.shape[1])
        for s, v in weights.items():
            if not 0 <= int(s) < t.shape[1]:
                raise ValueError(f"source id {s} outside [0, {t.shape[1]})")
            w[int(s)] = float(v)
        weights = w
    return predict(t, n, weights)
