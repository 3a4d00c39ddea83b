"""TRAK and the gradient dot product on the ``brown-ft`` benchmark, in the
LoRA space (``p = 65,536``), from the members' cached gradients
(``bench.ft.ours.member_artefacts``: ``G`` = ∇ of each document's summed
token cross-entropy, ``Q`` = ∇f(q)). Sign: the protocol's (``τ > 0``:
including the document raises f(q)), so the document output gradient is
``−G`` (the summed token log-probability).

- ``graddot``: ``τ = Q (−G)ᵀ``, averaged over members;
- ``trak``: traker's formula with traker's own projector and score computer
  (``bench.harness.trak``: ``BasicProjector``, normal entries, seed 0,
  ``model_id`` = member, ``phi = Pᵀ g / sqrt(p)``; ``BasicScoreComputer``
  with ``lambda_reg``; ensemble = mean of member scores, as
  ``TRAKer.finalize_scores``), that module's implementation being checked
  against a full ``TRAKer`` run in its test. The document output is the
  summed block log-probability (traker's ``LMModelOutput`` takes the mean
  per block: a constant factor 1/64, absorbed by the relative λ), out-to-loss
  weight 1. Swept: projection ``k`` and ``λ = rel × mean eigenvalue of
  ΦᵀΦ``; the best is reported (in TRAK's favour).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from bench.harness.trak import lam_grid, projector, trak_features, trak_scores

KS = (256, 512, 1024, 2048)  # n = 450 documents: Φ has rank ≤ 450, and traker inverts a (k, k) matrix per λ
LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def graddot(arts: list[dict]) -> np.ndarray:
    return np.mean([-a["QG"].numpy() for a in arts], axis=0)


def trak_features_all(arts: list[dict], k: int) -> tuple[list[torch.Tensor], list[torch.Tensor], dict]:
    """Per member ``(phi_docs (450, k), phi_queries (256, k))`` and the seconds it took."""
    phi_d, phi_q, secs = [], [], {"proj_gen_s": [], "proj_docs_s": [], "proj_queries_s": []}
    for e, a in enumerate(arts):
        t = time.perf_counter()
        proj = projector(a["G"].shape[1], k, member=e)
        secs["proj_gen_s"].append(time.perf_counter() - t)
        t = time.perf_counter()
        phi_d.append(trak_features(-a["G"], proj, e))
        secs["proj_docs_s"].append(time.perf_counter() - t)
        t = time.perf_counter()
        phi_q.append(trak_features(a["Q"], proj, e))
        secs["proj_queries_s"].append(time.perf_counter() - t)
        del proj
    return phi_d, phi_q, secs


def trak_sweep(arts: list[dict], ks=KS, lambdas=LAMBDAS) -> tuple[dict, dict]:
    """``{(models, k, rel): τ (256, 450)}`` over the sweep, for member 0 alone (``models`` 1) and the
    ensemble of every member of ``arts``, and the timings per ``k`` (per member)."""
    out, secs = {}, {}
    for k in ks:
        phi_d, phi_q, s = trak_features_all(arts, k)
        for E in sorted({1, len(arts)}):
            for rel, lam in zip(lambdas, lam_grid(phi_d[:E], lambdas)):
                t = time.perf_counter()
                out[(E, k, rel)] = trak_scores(phi_d[:E], phi_q[:E], lam)
                s.setdefault("scores_s", []).append((time.perf_counter() - t) / E)
        secs[k] = {key: float(np.mean(v)) for key, v in s.items()}
    return out, secs
