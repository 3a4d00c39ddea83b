"""Curvature from the whole training set on the fine-tuning benchmark (issue 26).

The brown-ft store's responses invert a Gauss-Newton matrix estimated on 64
of the 1,800 training blocks, truncated to rank 128. Here, on the same member
and the same ground truth (``bench.ft.groundtruth``; choose on the even
subsets, report the odd ones, as ``bench.ft.quality``):

- ``exact_fisher``: the damped influence function at the full LoRA dimension
  with the empirical Fisher of all blocks, ``τ(q, d) = ∇f(q)ᵀ (F + λI)⁻¹ g_d``,
  ``F = Bᵀ B / N_tok`` (``B (1800, p)``: every block's summed-token-loss
  gradient), exact through the eigendecomposition of the Gram ``B Bᵀ``
  (``F``'s rank is at most 1,800, so this is the whole matrix, no truncation);
  λ swept in its favour (multiples of F's mean nonzero eigenvalue);
- ``ours_fisher``: the method's K-step damped propagation ``u_d = −φ_K(F + sI) g_d``
  through that same exact eigenbasis (``spectral.LowRankFilter``), damping and
  horizon swept on the even subsets;
- ``ours``: today's store settings (Gauss-Newton, 64 blocks, rank 128), the
  same sweep, for the side-by-side.

Costs (``seconds``): the block gradients (one vmapped backward per block,
``lm_math.block_grads``) and the Gram eigendecomposition (N² p), against the
store's Nyström basis (``bench.ft.ours``). The block-gradient matrix is
cached in ``bench/.cache/ft/<key>/`` (N × p float32: 472 MB for brown-ft).

    python -m bench.ft.ours --members 1      # the member's fine-tune and artefacts (cached)
    python -m bench.ft.curvature             # then this; merges its records into ft_quality.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import numpy as np
import torch

from bench.ft.ours import member_artefacts, member_model, ours_tau
from bench.ft.protocol import DEFAULT, blocks
from bench.ft.quality import DAMPINGS, LEVELS, STEPS, evaluate
from bench.harness import truth
from bench.harness.common import RESULTS, machine, save_torch
from bench.harness.metrics import lds_per_query
from bench.harness.report import fmt
from influence.simulate.spectral import Eigenbasis, LowRankFilter

OUT = RESULTS / "ft_quality.json"
LAMBDAS_REL = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
DAMPINGS_REL = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
SKETCH_RANKS = (128, 512)
METHODS = ("exact_fisher", "ours_fisher", "ours_gn", *(f"ours_fisher_r{k}" for k in SKETCH_RANKS))


def block_gradients(e: int) -> tuple[torch.Tensor, float]:
    """``(B (N, p) float32, seconds)``: every training block's gradient of its summed token loss (cached)."""
    path = DEFAULT.params_dir() / f"member-e{e}-blockgrads.pt"
    if path.exists():
        d = torch.load(path, weights_only=True)
        return d["B"], float(d["seconds"])
    from influence.text.lm_math import block_grads

    model, params = member_model(DEFAULT, e)
    b, _ = blocks()
    t = time.perf_counter()
    B = block_grads(model, params, b, chunk=16).float()
    secs = time.perf_counter() - t
    save_torch({"B": B, "seconds": secs}, path)
    return B, secs


def fisher_basis(B: torch.Tensor, n_targets: int) -> tuple[Eigenbasis, float]:
    """The exact eigenbasis of ``F = Bᵀ B / n_targets`` (its nonzero part) through the Gram ``B Bᵀ``."""
    t = time.perf_counter()
    Bd = B.double()
    w, U = torch.linalg.eigh(Bd @ Bd.T)
    w, U = w.flip(0), U.flip(1)
    keep = w > w[0] * 1e-12
    V = (Bd.T @ U[:, keep]) / w[keep].sqrt()  # (p, r) orthonormal: right singular vectors of B
    return Eigenbasis(V, w[keep] / n_targets, exact=False), time.perf_counter() - t


def sketched_basis(B: torch.Tensor, n_targets: int, k: int, seed: int = 0) -> Eigenbasis:
    """What ``method.curvature=fisher`` at ``rank=k`` builds: the one-pass Nyström sketch
    ``Y = Bᵀ(B Ω) / N_tok`` (``lm_math.doc_grads_and_fisher_sketch``, ``spectral.nystrom_from``)."""
    from influence.simulate.spectral import gaussian_sketch, nystrom_from

    gen = torch.Generator().manual_seed(seed)
    omega = torch.linalg.qr(gaussian_sketch(B.shape[1], k, gen, torch.float64)).Q
    Bd = B.double()
    return nystrom_from(omega, Bd.T @ (Bd @ omega) / n_targets, torch.float64)


def exact_tau(QV, GV, QG, h: torch.Tensor, lam: float) -> np.ndarray:
    """``−Q (F + λI)⁻¹ Gᵀ`` with ``F = V diag(h) Vᵀ`` of rank r (the rest of F is 0): (m, n); the sign
    of the responses' (``u_d = −(F + λI)⁻¹ g_d``: training on d moves the parameters by u_d)."""
    coef = 1.0 / (h + lam) - 1.0 / lam
    return -((QV * coef) @ GV.T + QG / lam).numpy()


def filter_tau(QV, GV, QG, basis: Eigenbasis, damping: float, steps: int | None) -> np.ndarray:
    """``−Q φ_K(F + sI) Gᵀ`` through ``basis`` (η = 1 / (λ_max + s)), as the store's responses."""
    filt = LowRankFilter(basis, damping, 1.0 / (float(basis.h[0]) + damping), steps)
    return -((QV * filt.coef) @ GV.T + filt.tail * QG).numpy()


def paired_gap(tau_a: np.ndarray, tau_b: np.ndarray, gt, draws: int = 2000) -> dict:
    """Document LDS of ``a`` minus ``b`` on the same queries and subsets, with a 95% bootstrap
    interval over queries (the subsets are shared, so this is the noise of the query sample)."""
    a = lds_per_query(tau_a, gt.doc_subsets, gt.doc_targets)
    b = lds_per_query(tau_b, gt.doc_subsets, gt.doc_targets)
    d = (a - b)[~(np.isnan(a) | np.isnan(b))]
    rng = np.random.default_rng(0)
    boots = d[rng.integers(0, len(d), (draws, len(d)))].mean(1)
    return {"gap": float(d.mean()), "ci95": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))],
            "queries": int(len(d))}


def _sketch_grid(Q, G, QG, basis: Eigenbasis, mean_h: float) -> list:
    QV, GV = Q @ basis.V, G @ basis.V
    return [(dict(damping_rel=c, steps=K), lambda c=c, K=K: filter_tau(QV, GV, QG, basis, c * mean_h, K))
            for c, K in itertools.product(DAMPINGS_REL, STEPS)]


def store_records(roots: list[str], Q: torch.Tensor, report, gt) -> list[dict]:
    """The published stores' own rows (as the service reads them: codes expanded to float32)
    scored against the benchmark's queries, τ = Q Uᵀ (what the forward readout computes), and their
    build times from the manifests: the product path, side by side."""
    from influence.store import open_store

    out = []
    for root in roots:
        st = open_store(root)
        man = st.manifest
        U = man.model.layout().flatten(st.examples[0]).double()
        tau = (Q @ U.T).numpy()
        rep, full = evaluate(tau, report), evaluate(tau, gt)
        mem = man.extra["members"][0]
        for lvl in LEVELS:
            out.append({"method": f"store_{mem.get('curvature', 'ggn')}", "models": 1, "level": lvl,
                        "lds": rep.get(lvl), "lds_all": full.get(lvl), "store": str(root),
                        "curvature": f"{mem.get('curvature', 'ggn')} rank {mem['rank']} on {mem['curvature_blocks']} "
                                     "blocks", "settings": {k: man.method[k] for k in ("damping", "steps", "rank")},
                        "build_s": man.extra["build_s"], "grads_s": mem["grads_s"], "basis_s": mem["basis_s"],
                        "train_s": mem["train_s"]})
    return out


def _row(settings: dict, tau: np.ndarray, gt) -> dict:
    lv = evaluate(tau, gt)
    return {**settings, **lv, "mean": float(np.mean([lv[k] for k in LEVELS if k in lv]))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stores", nargs="*", default=[], help="published brown-ft stores to score with their own rows")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    gt = truth.load(DEFAULT)
    choose, report = gt.split(0), gt.split(1)
    art = member_artefacts(0)
    B, grads_s = block_gradients(0)
    n_targets = int(blocks()[0].shape[0] * (blocks()[0].shape[1] - 1))
    basis, eig_s = fisher_basis(B, n_targets)
    Q, G = art["Q"].double(), art["G"].double()
    QV, GV, QG = Q @ basis.V, G @ basis.V, art["QG"]
    mean_h = float(basis.h.mean())
    print(f"Fisher of {B.shape[0]} blocks: rank {len(basis.h)}, λ_max {float(basis.h[0]):.4g}, mean {mean_h:.4g}; "
          f"block grads {grads_s:.0f} s, eigh {eig_s:.0f} s", flush=True)

    sweeps = {
        "exact_fisher": [(dict(lambda_rel=c), lambda c=c: exact_tau(QV, GV, QG, basis.h, c * mean_h))
                         for c in LAMBDAS_REL],
        "ours_fisher": [(dict(damping_rel=c, steps=K), lambda c=c, K=K: filter_tau(QV, GV, QG, basis, c * mean_h, K))
                        for c, K in itertools.product(DAMPINGS_REL, STEPS)],
        **{f"ours_fisher_r{k}": _sketch_grid(Q, G, QG, sketched_basis(B, n_targets, k), mean_h)
           for k in SKETCH_RANKS},
        "ours_gn": [(dict(damping=s, steps=K), lambda s=s, K=K: ours_tau(art, s, K))
                    for s, K in itertools.product(DAMPINGS, STEPS)],
    }
    recs, chosen, best_tau = [], {}, {}
    for method, grid in sweeps.items():
        rows = [(_row(st, fn(), choose), fn) for st, fn in grid]
        best_row, best_fn = max(rows, key=lambda r: r[0]["mean"])
        settings = {k: v for k, v in best_row.items() if k not in (*LEVELS, "mean")}
        tau = best_tau[method] = best_fn()
        rep, full = evaluate(tau, report), evaluate(tau, gt)
        chosen[method] = {"settings": settings, "sweep_even": [r for r, _ in rows]}
        for lvl in LEVELS:
            recs.append({"method": method, "models": 1, "level": lvl, "lds": rep.get(lvl), "lds_all": full.get(lvl),
                         "settings": settings, "curvature": "gauss-newton 64 blocks, rank 128" if method == "ours_gn"
                         else f"empirical Fisher of all {B.shape[0]} blocks, "
                         + (f"one-pass sketch rank {method.rsplit('_r', 1)[1]}" if "_r" in method
                            else f"exact (rank {len(basis.h)})"),
                         "precompute_s": None if method == "ours_gn" else grads_s + eig_s})
        print(f"{method:13s} {settings}: " + ", ".join(f"{lvl} {fmt(rep.get(lvl))}" for lvl in LEVELS), flush=True)
    stores = store_records(a.stores, Q, report, gt)
    recs += stores
    for r in stores:
        print(f"{r['method']} {r['store']} {r['level']}: LDS {fmt(r['lds'])}, build {r['build_s']} s "
              f"(gradients {r['grads_s']:.0f} s, basis {r['basis_s']:.0f} s)", flush=True)
    gaps = {m: paired_gap(best_tau[m], best_tau["ours_gn"], report) for m in METHODS if m != "ours_gn"}
    for m, g in gaps.items():
        print(f"{m} - ours_gn, document LDS on the report half: {g['gap']:+.4f} "
              f"(95% over queries {g['ci95'][0]:+.4f} .. {g['ci95'][1]:+.4f})", flush=True)
    prev = json.loads(OUT.read_text()) if OUT.exists() else {"records": []}
    prev["records"] = [r for r in prev["records"] if r.get("method") not in METHODS
                       and not str(r.get("method")).startswith("store_")] + recs
    prev["curvature"] = {"chosen": chosen, "document_gap_vs_ours_gn": gaps, "fisher_rank": len(basis.h),
                         "fisher_blocks": int(B.shape[0]),
                         "fisher_lambda_max": float(basis.h[0]), "fisher_mean_eigenvalue": mean_h,
                         "block_grads_s": grads_s, "eigh_s": eig_s, "store_basis_s": art["seconds"]["basis_s"],
                         "machine": machine(), "threads": a.threads, "date": time.strftime("%Y-%m-%d"),
                         "command": "python -m bench.ft.curvature"}
    OUT.write_text(json.dumps(prev, indent=1, default=float) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
