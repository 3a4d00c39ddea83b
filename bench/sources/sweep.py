"""``python -m bench.sources.sweep``: which simulation filter (damping λ,
horizon K at step η) predicts publisher removal best? Digits, the source
ground truth of ``bench.sources.quality`` (cached), the same checkpoints.

The posthoc simulation is the filter ``u = −φ_K(H) g`` of the curvature's
eigenbasis (``influence.simulate.spectral``), so one Nyström basis per
member (the digits preset's rank and seed) gives ``τ(q, s) = ∇f(q)ᵀ u_s``
for every ``(λ, K)`` in a few products: ``A = ∇F V`` ``(m, k)``,
``B = G_S V`` ``(S, k)``, ``τ = −(A φ Bᵀ + φ(0)(∇F G_Sᵀ − A Bᵀ))``. The
preset's own point is checked against the Simulator's stored responses read
out forward (``check_rel``).

Honest selection: the 128 subsets are split in two halves (even / odd
index); the grid point is chosen on source LDS of the even half and
reported on the odd half (``lds_select`` / ``lds_heldout``), beside
leave-one-source-out on all publishers.

Writes ``bench/results/source_sweep.json``: ``grid`` rows with keys
``damping``, ``steps``, ``eta``, ``models``, ``lds_select``,
``lds_heldout``, ``source_lds``, ``loso_pearson``, ``loso_spearman``,
``top1_agree``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np
import torch

from bench.digits.groundtruth import train_many
from bench.digits.ours import query_grads
from bench.digits.protocol import base_config, final_iterate_only, load_data, seeds
from bench.harness.common import machine, write_json
from bench.sources.groundtruth import SourceProtocol, load_or_compute
from bench.sources.quality import _truth, member_scores
from influence.audit import loso, source_lds
from influence.mlp.curvature import mlp_example_grads
from influence.mlp.propagate import Simulator
from influence.simulate.spectral import LowRankFilter

DAMPING = (0.0003, 0.001, 0.003, 0.01, 0.03)
STEPS = (100, 300, 1000, 3000, 10000)


class Pieces:
    """One member's eigen-coordinates: ``A (m, k)``, ``B (S, k)``,
    ``D (m, S) = ∇F G_Sᵀ``, eigenvalues ``h (k,)`` (float64)."""

    def __init__(self, params, cfg, data, seed: int):
        sim = Simulator(cfg.method, cfg.model, cfg.train.weight_decay, data.X, data.y, data.source,
                        data.n_sources)
        filt = sim.spectral(params, seed)
        V = filt.basis.V.double()
        G = mlp_example_grads(params, cfg.model, data.X, data.y).double()
        Gs = G.new_zeros((data.n_sources, G.shape[1])).index_add_(0, data.source, G)
        Gq = query_grads(params, cfg.model, data.Xq, data.yq).double()
        self.A, self.B, self.D, self.basis = Gq @ V, Gs @ V, Gq @ Gs.T, filt.basis
        self.wd = cfg.train.weight_decay

    def tau(self, damping: float, eta: float, steps: int) -> torch.Tensor | None:
        """``(m, S)`` scores of the filter (``LowRankFilter``'s coefficients),
        or None where the steps diverge."""
        try:
            f = LowRankFilter(self.basis, self.wd + damping, eta, steps)
        except ValueError:
            return None
        return -((self.A * f.coef) @ self.B.T + f.tail * self.D)


def run(args) -> dict:
    t0 = time.perf_counter()
    data, cfg = load_data(), final_iterate_only(base_config())  # the sweep is of the one-point filter
    gt = load_or_compute(SourceProtocol(), data)
    truth = _truth(gt, "")
    E, n = args.models, len(data.X)
    mseeds = seeds(cfg, E)
    P = train_many(cfg.model, data.X, data.y, np.tile(np.arange(n), (E, 1)), mseeds, cfg.train)
    members, check = [], 0.0
    for e in range(E):
        params = {k: v[e].clone() for k, v in P.items()}
        members.append(Pieces(params, cfg, data, mseeds[e]))
        ref = member_scores([params], cfg, data, mseeds[e])["ours"]
        mine = members[-1].tau(cfg.method.damping, cfg.method.eta, cfg.method.steps)
        check = max(check, float((mine - ref).abs().max() / ref.abs().max()))
    J = gt["subsets"].shape[0]
    halves = {"select": np.arange(J) % 2 == 0, "heldout": np.arange(J) % 2 == 1}
    rows = []
    for lam, K in itertools.product(DAMPING, STEPS):
        taus = [m.tau(lam, args.eta, K) for m in members]
        if any(t is None for t in taus):
            continue
        for M in sorted({1, E}):
            tau = (sum(taus[:M]) / M).numpy()
            r = {"damping": lam, "steps": K, "eta": args.eta, "models": M,
                 "source_lds": source_lds(tau, gt["subsets"], truth["true_sub"])[0]}
            for name, mask in halves.items():
                r[f"lds_{name}"] = source_lds(tau, gt["subsets"][mask], truth["true_sub"][mask])[0]
            r.update(loso(tau, truth["effect"]))
            rows.append(r)
    return {"grid": rows, "check_rel": check, "preset": cfg.method.model_dump(),
            "provenance": {"command": "python -m bench.sources.sweep", "machine": machine(), "members": E,
                           "wall_s": time.perf_counter() - t0}}


def best(rows: list[dict], models: int, key: str = "lds_select") -> dict:
    """The grid row with the highest ``key`` at ``models``."""
    return max((r for r in rows if r["models"] == models), key=lambda r: r[key])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.sources.sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=5)
    ap.add_argument("--eta", type=float, default=0.4)
    args = ap.parse_args(argv)
    payload = run(args)
    write_json("source_sweep.json", payload)
    print("check_rel", payload["check_rel"])
    for M in sorted({1, args.models}):
        for r in sorted((r for r in payload["grid"] if r["models"] == M), key=lambda r: -r["lds_select"])[:8]:
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))


if __name__ == "__main__":
    main()
