"""``python -m bench.sources.quality``: does ``τ(q, s)`` predict what removing
publisher ``s`` from training does to query ``q``? Digits, its 20 built-in
publishers, the default protocol's 360 test queries (margin of the true
label), the ``digits`` preset's MLP recipe.

Ground truth (``bench.sources.groundtruth``, cached in ``bench/.cache/``):
random subsets of the publishers × 3 seeds, every publisher removed alone ×
3 seeds, and the full-data models with the same seeds (member seeds
``e = 0, 1, 2``).

Methods, all on the same full-data checkpoints (members ``e = 0..4``):

* ``ours``: the Simulator's per-source responses (``Responses.sources``,
  the digits preset's ``method`` settings, ``solver=auto``), read out
  forward-only with ``linear_stack_scores``;
* ``ours_examples_summed``: its per-example responses, read out, summed per
  source;
* ``trak``: ``traker`` features (projection 2048, λ = 100), per-example
  scores summed per source;
* ``graddot``: ``−∇f(q)·g_b`` summed per source.

One model is member 0; five models average ``τ`` over members 0..4.

Metrics (per method and model count): source-level LDS, leave-one-source-out
(LOSO) Pearson / Spearman across sources, top-1 agreement, the credit-share
comparison of the ``proportional`` and ``top`` rules, and the what-if check
(``influence.whatif``: predicted ``−τ(q, s)/n`` against the real change).

Flags: ``--quick`` (8 subsets × 1 seed, 2 members; prints, writes nothing),
``--check`` (padded trainer vs ``worker.train``), ``--render`` (rebuild the
BENCHMARKS.md section and the PNG from the saved JSON), ``--no-docs``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

import numpy as np
import torch

from bench.digits.groundtruth import margins_many, train_members
from bench.digits.ours import query_grads
from bench.digits.protocol import CACHE, RESULTS, Data, base_config, final_iterate_only, load_data, seeds
from bench.digits.trak import Trak
from bench.harness.common import cached, digest, machine
from bench.sources.groundtruth import QUICK, SourceProtocol, check_matches_padded, load_or_compute
from influence.audit import loso, source_lds, whatif_check
from influence.audit import truth_noise as _truth_noise
from influence.mlp.curvature import mlp_example_grads
from influence.mlp.propagate import Simulator
from influence.mlp.readout import linear_stack_scores, split_layers
from influence.whatif import removal, source_scores

METHODS = ("ours", "ours_examples_summed", "ours_final_iterate", "trak", "graddot")
TRAK_LAMBDA, TRAK_PROJ = 100.0, 2048
GOALS = {"lds_1": 0.80, "lds_5": 0.83}


# -- per-member scores ----------------------------------------------------------------------------------------
def member_scores(iterates: list[dict[str, torch.Tensor]], cfg, data: Data, seed: int, version: int = 1) -> dict:
    """``τ (m, S)`` of ours (source responses), ours (example responses
    summed) and graddot for one member; cached on disk. ``iterates``: the
    member's epoch-end iterates ``cfg.method.iterates`` averages over,
    earliest first, the final model last (it alone when ``iterates=1``)."""
    iterates = iterates[len(iterates) - cfg.method.iterates:]
    params = iterates[-1]

    def compute() -> dict:
        spec, S = cfg.model, data.n_sources
        t0 = time.perf_counter()
        sim = Simulator(cfg.method, spec, cfg.train.weight_decay, data.X, data.y, data.source, S)
        resp = sim.posthoc(iterates, seed)
        sim_s = time.perf_counter() - t0
        with torch.no_grad():
            t0 = time.perf_counter()
            tau_src = linear_stack_scores(params, spec, split_layers(resp.sources, spec), data.Xq, data.yq, "margin")
            read_src_s = time.perf_counter() - t0
            tau_ex = linear_stack_scores(params, spec, split_layers(resp.examples, spec), data.Xq, data.yq, "margin")
        G = mlp_example_grads(params, spec, data.X, data.y)
        Gs = G.new_zeros((S, G.shape[1])).index_add_(0, data.source, G)
        Gq = query_grads(params, spec, data.Xq, data.yq)
        summed = torch.from_numpy(source_scores(tau_ex, data.source, S))
        return {"ours": tau_src.double(), "ours_examples_summed": summed, "graddot": (-Gq @ Gs.T).double(),
                "simulate_s": sim_s, "readout_sources_s": read_src_s, "diagnostics": resp.diagnostics,
                "solver": sim.solver}

    key = digest([data.fingerprint, cfg.train.model_dump(mode="json"), cfg.model.model_dump(mode="json"),
                  cfg.method.model_dump(mode="json"), seed, version])
    return cached(CACHE / f"srcq-member-{key}.pt", compute)


# -- metrics (source LDS, LOSO, what-if, truth noise: influence.audit) --------------------------------------
def credit(scores: np.ndarray, rule: str) -> np.ndarray:
    """``(S,)`` share of the credit over all queries of a score matrix
    ``(m, S)``: ``proportional`` splits each query's unit of credit over the
    sources with positive score in proportion (a query with none gives no
    credit); ``top`` gives it all to the best source."""
    m, S = scores.shape
    if rule == "proportional":
        pos = np.clip(scores, 0, None)
        tot = pos.sum(1, keepdims=True)
        c = np.divide(pos, tot, out=np.zeros_like(pos), where=tot > 0)
    elif rule == "top":
        c = np.zeros((m, S))
        c[np.arange(m), scores.argmax(1)] = 1.0
    else:
        raise ValueError(rule)
    return c.sum(0) / c.sum()


def true_share(effect_ms: np.ndarray) -> np.ndarray:
    """Each publisher's share of the total positive true removal effect."""
    pos = np.clip(effect_ms, 0, None).sum(0)
    return pos / pos.sum()


def compare_shares(pred: np.ndarray, ref: np.ndarray) -> dict:
    return {"pearson": float(np.corrcoef(pred, ref)[0, 1]), "tv": float(0.5 * np.abs(pred - ref).sum())}


def _truth(gt: dict, suf: str) -> dict:
    """Derived truth arrays: ``effect (S, m)`` = full − without s,
    ``true_sub (J, m)`` subset margins, ``sub_change (J, m)`` = subset −
    full (all seed means, seed-matched), credit shares of the truth."""
    full = gt["full"]
    effect = (full[None] - gt[f"loso{suf}_margins"]).mean(1)
    true_sub = gt[f"subset{suf}_margins"].mean(1)
    return {"effect": effect, "true_sub": true_sub, "sub_change": true_sub - full.mean(0)[None],
            "share": true_share(effect.T), "rule": {r: credit(effect.T, r) for r in ("proportional", "top")}}


def truth_noise(gt: dict, suf: str = "") -> dict:
    """Noise of the ground truth: the same metrics between seed 0 alone and
    the mean of the other seeds (``influence.audit.truth_noise``; ``{}``
    with one seed)."""
    return _truth_noise(gt["full"], gt[f"loso{suf}_margins"], gt[f"subset{suf}_margins"])


def _r(a: np.ndarray) -> list:
    """Figure data for the JSON: 4 significant digits."""
    return [[float(f"{v:.4g}") for v in row] for row in np.atleast_2d(a)]


# -- the run --------------------------------------------------------------------------------------------------
def run(args) -> dict:
    t_start = time.perf_counter()
    data, cfg = load_data(), base_config()
    proto = QUICK if args.quick else SourceProtocol(n_subsets=args.subsets)
    E = args.models or (2 if args.quick else 5)
    S, n = data.n_sources, len(data.X)
    checks = {}
    if args.check:
        checks["padded_trainer_vs_worker_max_abs"] = check_matches_padded(data)
        print("padded trainer vs worker.train:", checks["padded_trainer_vs_worker_max_abs"])
    t0 = time.perf_counter()
    gt = load_or_compute(proto, data)
    gt_load_s = time.perf_counter() - t0
    mseeds = seeds(cfg, E)
    P, iterates = train_members(cfg, data, mseeds)
    params = [its[-1] for its in iterates]
    # the ablation: the same simulation linearised at the final model only (method.iterates = 1)
    cfg_final = final_iterate_only(cfg)
    Eg = gt["full"].shape[0]
    checks["checkpoints_vs_groundtruth_full_margin_max_abs"] = float(
        np.abs(margins_many({k: v[:Eg] for k, v in P.items()}, cfg.model, data.Xq, data.yq).numpy()
               - gt["full"]).max())
    members = []
    for e in range(E):
        t0 = time.perf_counter()
        members.append(member_scores(iterates[e], cfg, data, mseeds[e]))
        if cfg.method.iterates > 1:
            members[-1]["ours_final_iterate"] = member_scores(iterates[e], cfg_final, data, mseeds[e])["ours"]
        print(f"member {e}: scores in {time.perf_counter() - t0:.1f}s (cached or computed)")
    checks["ours_sources_vs_examples_summed_rel"] = max(
        float((m["ours"] - m["ours_examples_summed"]).abs().max() / m["ours"].abs().max()) for m in members)
    t0 = time.perf_counter()
    trak = Trak(params, cfg.model, data, proj_dim=TRAK_PROJ, lam=TRAK_LAMBDA)
    trak_s = time.perf_counter() - t0
    counts = sorted({1, E})
    taus: dict[tuple[str, int], np.ndarray] = {}
    for M in counts:
        for meth in ("ours", "ours_examples_summed", "ours_final_iterate", "graddot"):
            if meth not in members[0]:
                continue
            taus[(meth, M)] = (sum(m[meth] for m in members[:M]) / M).numpy()
        taus[("trak", M)] = source_scores(trak.scores(TRAK_LAMBDA, M), data.source, S)
    trak.close()

    # ground-truth derived arrays: the primary truth (retrained on the kept publishers, worker.train's own
    # schedule) and, when present, the order-matched one (the full run's minibatches, removed slots skipped)
    eye = np.eye(S, dtype=bool)
    truths = {"": _truth(gt, "")}
    if "loso_matched_margins" in gt:
        truths["_matched"] = _truth(gt, "_matched")
    effect, true_sub, sub_change, ref_share, ref_rule = (truths[""][k] for k in
                                                         ("effect", "true_sub", "sub_change", "share", "rule"))

    recs = []
    for (meth, M), tau in taus.items():
        r = {"method": meth, "models": M}
        for suf, tr in truths.items():
            lds_v, per_q = source_lds(tau, gt["subsets"], tr["true_sub"])
            r[f"source_lds{suf}"] = lds_v
            r.update({k + suf: v for k, v in loso(tau, tr["effect"]).items()})
            lo = whatif_check(tau, n, -tr["effect"], eye)  # one publisher removed: actual = without − full
            su = whatif_check(tau, n, tr["sub_change"], ~gt["subsets"])
            r.update({f"whatif_pearson{suf}": lo["pearson"], f"whatif_mae{suf}": lo["mae"],
                      f"whatif_loso{suf}": lo, f"whatif_subsets{suf}": su})
            for rule in ("proportional", "top"):
                sh = credit(tau, rule)
                r[f"credit_{rule}{suf}"] = {"vs_true_share": compare_shares(sh, tr["share"]),
                                            "vs_rule_on_truth": compare_shares(sh, tr["rule"][rule]),
                                            "shares": sh.tolist()}
            if not suf:
                r["_per_query_lds"] = per_q
        recs.append(r)

    # a few queries for the figure: the 25th / 50th / 75th percentile of ours-1's per-query LDS
    base = next(r for r in recs if r["method"] == "ours" and r["models"] == 1)["_per_query_lds"]
    order = np.argsort(np.nan_to_num(base, nan=-2))
    fig_q = [int(order[int(f * (len(order) - 1))]) for f in (0.25, 0.5, 0.75)]
    keep = gt["subsets"].astype(np.float64)
    figure = {"queries": fig_q, "true_subset": _r(true_sub[:, fig_q].T), "pred_subset": {},
              "loso_actual": _r(-effect.T), "loso_pred": {}}
    for meth in ("ours", "trak", "graddot"):
        tau = taus[(meth, max(counts))]
        figure["pred_subset"][meth] = _r((keep @ tau[fig_q].T).T)
        figure["loso_pred"][meth] = _r(removal(tau, n, eye).change.T)  # (m, S)
    for r in recs:
        r.pop("_per_query_lds")

    shares = {"publishers": [f"publisher-{s:02d}" for s in range(S)],
              "examples": np.bincount(data.source.numpy(), minlength=S).tolist(),
              "true_share": ref_share.tolist(), "rule_on_truth": {k: v.tolist() for k, v in ref_rule.items()}}
    if "_matched" in truths:
        shares["true_share_matched"] = truths["_matched"]["share"].tolist()
    return {
        "records": recs,
        "credit_shares": shares,
        "groundtruth": {"protocol": proto.__dict__, "key": str(gt["key"]), "build_s": float(gt["seconds"]),
                        "load_s": gt_load_s, "models_trained": int(Eg * (1 + proto.n_subsets + S)),
                        "subset_sizes": {"sources_mean": float(gt["subsets"].sum(1).mean()),
                                         "examples_mean": float((keep @ np.bincount(data.source.numpy(),
                                                                                   minlength=S)).mean())},
                        "noise": truth_noise(gt),
                        "noise_matched": truth_noise(gt, "_matched") if "_matched" in truths else {},
                        "true_effect_abs_mean_matched": (float(np.abs(truths["_matched"]["effect"]).mean())
                                                         if "_matched" in truths else None),
                        "true_effect_abs_mean": float(np.abs(effect).mean()),
                        "subset_change_abs_mean": float(np.abs(sub_change).mean())},
        "figure": figure,
        "goals": GOALS,
        "provenance": {"command": "python -m bench.sources.quality " + shlex.join(sys.argv[1:]),
                       "machine": machine(), "members": E, "member_seeds": mseeds, "n_train": n,
                       "n_queries": len(data.Xq), "n_sources": S, "method_settings": cfg.method.model_dump(),
                       "epochs": cfg.train.epochs,
                       "solver": members[0]["solver"], "diagnostics": members[0]["diagnostics"],
                       "simulate_s_per_member": [m["simulate_s"] for m in members],
                       "readout_sources_s": members[0]["readout_sources_s"], "trak_featurize_s": trak_s,
                       "trak": {"lambda": TRAK_LAMBDA, "proj_dim": TRAK_PROJ}, "checks": checks,
                       "wall_s": time.perf_counter() - t_start},
    }


def main(argv: list[str] | None = None) -> None:
    from bench.harness.report import write_section
    from bench.sources.report import figure, markdown

    ap = argparse.ArgumentParser(prog="python -m bench.sources.quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 subsets × 1 seed, 2 members; writes nothing")
    ap.add_argument("--check", action="store_true", help="verify the padded trainer against worker.train")
    ap.add_argument("--subsets", type=int, default=SourceProtocol().n_subsets, help="random publisher subsets")
    ap.add_argument("--models", type=int, default=None, help="ensemble size (default 5; quick 2)")
    ap.add_argument("--render", action="store_true", help="only rebuild the report from the saved JSON")
    ap.add_argument("--no-docs", action="store_true", help="do not update BENCHMARKS.md")
    args = ap.parse_args(argv)
    path = RESULTS / "source_quality.json"
    if args.render:
        payload = json.loads(path.read_text())
    else:
        payload = run(args)
        if not args.quick:
            RESULTS.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(payload, indent=1, default=float) + "\n")
    body = markdown(payload)
    print(body)
    if not args.quick:
        figure(payload, RESULTS / "source_quality.png")
        if not args.no_docs:
            write_section("Source quality", body)


if __name__ == "__main__":
    main()
