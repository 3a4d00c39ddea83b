"""``python -m bench.digits.quality``: LDS, LOO and query cost on digits for ours
(forward-only readout of simulated responses), TRAK and a gradient dot
product, on the same data, split, checkpoints and ground truth.

Flags: ``--quick`` (20 subsets × 1 seed, 20 LOO × 2 seeds, 2 members;
writes ``results/quality_quick.json`` and leaves BENCHMARKS.md alone),
``--check`` (batched trainer vs ``worker.train``; spectral responses vs the
worker's ``Simulator``), ``--extras [MODE ...]`` (run the worker's
own ``simulate_member`` for the posthoc, alongside and/or two-trajectory
modes; cached results are always reported), ``--probe`` (re-measure the
training-side cost of ours, uncached), ``--render`` (rebuild the BENCHMARKS.md
section from the saved JSON). Ground truth and responses are cached in
``bench/.cache/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

import torch
from tqdm.auto import tqdm

from bench.digits.groundtruth import check_matches_worker, load_or_compute, train_members
from bench.digits.ours import (
    WORKER_MODES,
    check_against_worker,
    member_cached,
    preset_member,
    probe_costs,
    readout,
    worker_cached,
)
from bench.digits.protocol import CACHE, QUICK, RESULTS, Protocol, base_config, load_data, seeds
from bench.digits.quality_report import HEADING, markdown, scatter
from bench.digits.trak import Trak
from bench.harness.metrics import lds, loo, split_half
from bench.harness.report import write_section

DAMPINGS = (0.001, 0.003, 0.01, 0.03)
STEPS = (100, 300, 1000, None)  # None: the exact damped inverse (K → ∞)
TRAK_LAMBDAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
MACHINE = "2-core x86 CPU, 24 GiB, no GPU"


def evaluate(tau: torch.Tensor, gt: dict) -> dict:
    """All metrics of one score matrix ``τ (m, n)``."""
    t = tau.double().numpy() if torch.is_tensor(tau) else tau
    out = {"lds": lds(t, gt["subsets"], gt["lds_margins"])}
    lo = loo(t, gt["loo_idx"], gt["loo_margins"], gt["full_margins"])
    out.update(loo=lo["pearson"], loo_spearman=lo["spearman"])
    if "loo_matched_margins" in gt:
        lm = loo(t, gt["loo_idx"], gt["loo_matched_margins"], gt["full_margins"])
        out.update(loo_matched=lm["pearson"], loo_matched_spearman=lm["spearman"])
    return out


def _git() -> str:
    """``HEAD`` short hash, ``+dirty`` when the work tree differs (the code timed)."""
    def git(*a):
        return subprocess.run(["git", *a], capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")


def _mean(ts: list[torch.Tensor]) -> torch.Tensor:
    return sum(ts) / len(ts)


def _record(method: str, label: str, models: int, tau, gt, **extra) -> dict:
    r = {"method": method, "label": label, "models": models, **evaluate(tau, gt),
         "precompute_s": None, "inference_s_example": None, "inference_s_source": None}
    r.update(extra)
    return r


def _timings(members, params, trak: Trak, data, counts, best_lam: dict, repeats: int = 7) -> dict:
    """Seconds to score all queries against all examples / sources: the
    fastest of ``repeats`` calls after a warm-up, all variants interleaved
    round-robin so that they see the same background load. Measured at the
    default thread count and at 1 thread (the machine is shared; small ops
    with 2 threads suffer from oversubscription). Keys ``(method, M, variant,
    threads) -> (s_example, s_source)``; ours: the product's
    ``linear_stack_scores`` with its default chunk and with chunk 32; TRAK:
    projection matrix resident, or traker's ``BasicProjector``."""
    spec = base_config().model
    from influence.mlp.readout import split_layers

    ex = [split_layers(m["U_ex"], spec) for m in members]
    src = [split_layers(m["U_src"], spec) for m in members]
    default, out = torch.get_num_threads(), {}
    fns = {}
    for M in counts:
        for chunk in (None, 32):
            for i, L in enumerate((ex, src)):
                fns[("ours", M, chunk, i)] = lambda L=L, M=M, c=chunk: readout(params[:M], L[:M], spec, data.Xq,
                                                                                data.yq, c)
        for resident in (True, False):
            for i, srcs in enumerate((None, data.source)):
                fns[("trak", M, resident, i)] = trak.query_fn(best_lam[M], M, srcs, data.n_sources, resident)
    with torch.no_grad():
        for threads in (default, 1):
            torch.set_num_threads(threads)
            best = {k: float("inf") for k in fns}
            for rep in tqdm(range(repeats + 1), desc=f"query timing, {threads} thread(s)"):
                for k, fn in fns.items():
                    t0 = time.perf_counter()
                    fn()
                    if rep:  # the first round is the warm-up
                        best[k] = min(best[k], time.perf_counter() - t0)
            for (meth, M, var, i), v in best.items():
                out.setdefault((meth, M, var, threads), [None, None])[i] = v
    torch.set_num_threads(default)
    return {k: tuple(v) for k, v in out.items()}


def _attach(r: dict, t: dict, key: tuple, suffix: str) -> None:
    r[f"inference_s_example{suffix}"], r[f"inference_s_source{suffix}"] = t[key]


def run(args) -> tuple[list[dict], dict]:
    t_start, load0 = time.perf_counter(), os.getloadavg()
    data, cfg = load_data(), base_config()
    proto = QUICK if args.quick else Protocol()
    E = args.models or (2 if args.quick else 5)
    meta = {"date": subprocess.run(["date"], capture_output=True, text=True).stdout.strip(), "machine": MACHINE,
            "command": "python -m bench.digits.quality " + shlex.join(sys.argv[1:]), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "git": _git(),
            "protocol": proto.__dict__, "members": E, "checks": {}}
    if args.check:
        meta["checks"]["trainer_vs_worker_max_abs"] = check_matches_worker(data)
        print("batched trainer vs worker.train:", meta["checks"]["trainer_vs_worker_max_abs"])
    gt = load_or_compute(proto, data, matched_loo=not args.quick)
    meta["groundtruth_s"] = float(gt["seconds"])
    meta["loo_truth_split_half"] = {k: split_half(gt[k], gt["full_margins"])
                                    for k in ("loo_margins", "loo_matched_margins") if k in gt}
    mseeds = seeds(cfg, E)
    _, iterates = train_members(cfg, data, mseeds)
    params = [its[-1] for its in iterates]
    preset = [preset_member(iterates[e], cfg, data, mseeds[e], CACHE)
              for e in tqdm(range(E), desc=f"ours: the preset's simulation ({cfg.method.iterates} iterates)")]
    grid = [(lam, K) for lam in DAMPINGS for K in STEPS]
    main = (cfg.method.damping, cfg.method.steps)
    members = [member_cached(params[e], cfg, data, mseeds[e], grid, main, CACHE)
               for e in tqdm(range(E), desc="ours: GGN eigendecomposition per member")]
    meta["checks"]["readout_vs_spectral_rel"] = max(m["readout_gap"] for m in members)
    if args.check:
        err = check_against_worker(params[0], members[0]["U_ex"], cfg, data)
        meta["checks"]["spectral_vs_worker_simulator_rel"] = err
        print("spectral responses vs worker Simulator (64 directions, K=300):", err)
    if args.probe:
        la = os.getloadavg()
        meta["probe"] = probe_costs(params[0], cfg, data) | {"load_avg_before": la, "load_avg_after": os.getloadavg()}
        print("training-side cost probe:", meta["probe"])
    trak = Trak(params, cfg.model, data, lam=100.0)
    meta["checks"]["trak_mine_vs_traker_max_abs"] = (trak.traker_scores(E) - trak.scores(100.0, E)).abs().max().item()
    counts = sorted({1, E})
    recs = []
    for M in counts:
        recs.append(_record("graddot", "gradient dot product", M, _mean([m["graddot"] for m in members[:M]]), gt))
        pre = sum(m["precompute_s"] for m in members[:M])
        for lam, K in grid:
            tau = _mean([m["taus"][(lam, K)] for m in members[:M]])
            recs.append(_record("ours", f"ours, posthoc GGN, λ={lam}, K={K or '∞'}", M, tau, gt, damping=lam,
                                steps=K, eta=cfg.method.eta, tau_source="spectral", precompute_s=pre))
        C = cfg.method.iterates
        only = ", final model only" if C > 1 else ""
        recs.append(_record("ours", f"ours, posthoc GGN, λ={main[0]}, K={main[1]}{only} (forward readout)", M,
                            _mean([m["readout"] for m in members[:M]]), gt, damping=main[0], steps=main[1],
                            eta=cfg.method.eta, tau_source="readout", main=C == 1, precompute_s=pre))
        if C > 1:
            recs.append(_record("ours", f"ours, the preset as built: λ={main[0]}, K={main[1]}, averaged over {C} "
                                f"iterates every {cfg.method.iterate_every} epochs (forward readout)", M,
                                _mean([p["tau"] for p in preset[:M]]), gt, damping=main[0], steps=main[1],
                                eta=cfg.method.eta, iterates=C, tau_source="preset", main=True,
                                precompute_s=sum(p["simulate_s"] for p in preset[:M])))
        for lam in tqdm(TRAK_LAMBDAS, desc=f"TRAK λ sweep, {M} model(s)"):
            recs.append(_record("trak", f"TRAK, λ={lam:g}", M, trak.scores(lam, M), gt, lambda_reg=lam,
                                proj_dim=2048, precompute_s=trak.precompute_s(M)))
    wanted = set(WORKER_MODES) if args.extras == [] else set(args.extras or ())
    for mode in WORKER_MODES:
        r = worker_cached(mode, data, mseeds[0], CACHE, compute=mode in wanted)
        if r is not None:
            recs.append(_record("ours-worker", f"ours, worker `{mode}` end to end", 1, r["tau"], gt, mode=mode,
                                settings=r["method"], precompute_s=r["seconds"], precompute_includes_training=True))
    best_lam = {M: max((r for r in recs if r["method"] == "trak" and r["models"] == M), key=lambda r: r["lds"])
                ["lambda_reg"] for M in counts}
    timing = _timings(members, params, trak, data, counts, best_lam)
    d = torch.get_num_threads()
    for r in recs:
        M = r["models"]
        if r["method"] == "ours" and (r.get("steps") is not None):
            for var, suf in ((None, ""), (32, "_chunk32")):
                _attach(r, timing, ("ours", M, var, d), suf)
                _attach(r, timing, ("ours", M, var, 1), suf + "_1thread")
        if r["method"] == "trak" and r["lambda_reg"] == best_lam[M]:
            for var, suf in ((True, ""), (False, "_traker_projector")):
                _attach(r, timing, ("trak", M, var, d), suf)
                _attach(r, timing, ("trak", M, var, 1), suf + "_1thread")
            r["best"] = True
    if not args.quick:
        ours_tau = [p["tau"] for p in preset] if cfg.method.iterates > 1 else [m["readout"] for m in members]
        panels = [(f"ours ({E} models)", _mean(ours_tau).numpy()),
                  (f"TRAK λ={best_lam[E]:g} ({E})", trak.scores(best_lam[E], E).numpy())]
        scatter(RESULTS / "lds_scatter.png", panels, gt["subsets"], gt["lds_margins"], [0, 1, 2])
    trak.close()
    meta.update(best_trak_lambda=best_lam, load_avg_start=load0, load_avg_end=os.getloadavg(),
                wall_s=time.perf_counter() - t_start)
    return recs, meta


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.digits.quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small protocol for smoke tests")
    ap.add_argument("--check", action="store_true", help="verify the batched trainer and spectral responses")
    ap.add_argument("--extras", nargs="*", choices=list(WORKER_MODES), default=None,
                    help="run the worker's own simulate_member for these modes (all if none named; slow)")
    ap.add_argument("--models", type=int, default=None, help="ensemble size (default 5; quick 2)")
    ap.add_argument("--no-docs", action="store_true", help="do not update BENCHMARKS.md")
    ap.add_argument("--probe", action="store_true", help="re-measure training-side cost of ours, uncached")
    ap.add_argument("--render", action="store_true", help="only re-render BENCHMARKS.md from results/quality*.json")
    args = ap.parse_args(argv)
    stem = "quality_quick" if args.quick else "quality"
    if args.render:
        recs = json.loads((RESULTS / f"{stem}.json").read_text())
        meta = json.loads((RESULTS / f"{stem}_meta.json").read_text())
        meta["best_trak_lambda"] = {int(k): v for k, v in meta["best_trak_lambda"].items()}
    else:
        recs, meta = run(args)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{stem}.json").write_text(json.dumps(recs, indent=1, default=str) + "\n")
        (RESULTS / f"{stem}_meta.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    body = markdown(recs, meta)
    print(body)
    if not args.quick and not args.no_docs:
        write_section(HEADING, body)


if __name__ == "__main__":
    main()
