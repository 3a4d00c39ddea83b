"""The fine-tuning benchmark side by side (issue 21; ``ft-protocol.md``): ours,
TRAK, the gradient dot product, BM25 and idf-weighted overlap on the same
ground truth (``bench.ft.groundtruth``) and the same full-data fine-tunes, at
1 model and an ensemble of E, LDS at document, genre and centred-genre level.

Split: the ground truth's even subsets (document and genre) choose our
settings (damping, horizon, step size: a sweep over the cached member
artefacts, on member 0 alone); the odd subsets are the reported figures for
every method. TRAK's projection size and regulariser are chosen on the odd
subsets themselves, per level and per ensemble size (in its favour). The
figures on all subsets are stored too (``lds_all``).

Costs: ``precompute_s`` per method and member (ours: document gradients +
Nyström basis + the filter; TRAK: document gradients + projection; grad-dot:
document gradients; lexical: the whole matrix), times the models;
``inference_s_*`` from ``bench.ft.cost`` (``bench/results/ft_cost.json``)
when it has run. Measures only; ``bench.ft.report`` writes BENCHMARKS.md.

    python -m bench.ft.groundtruth --threads 1          # the ground truth (background, resumable)
    python -m bench.ft.ours --members 5                 # the members' gradients and bases (cached)
    python -m bench.ft.quality [--members 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import numpy as np
import torch

from bench.ft.baselines import KS, LAMBDAS, graddot, trak_sweep
from bench.ft.lexical import bm25, overlap
from bench.ft.ours import member_artefacts, ours_tau, response_filter
from bench.ft.protocol import DEFAULT, N_GENRES, doc_source, query_texts, text
from bench.harness import truth
from bench.harness.common import RESULTS, machine
from bench.harness.metrics import levels
from bench.harness.report import fmt

OUT = RESULTS / "ft_quality.json"
COST = RESULTS / "ft_cost.json"
DAMPINGS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
STEPS = (30, 100, 300, 1000, None)
LEVELS = ("document", "genre", "genre_centred")
BASE_RANK = 32  # the base-alone baseline's Nyström rank (cheaper than the members' 128: a reference only)


def evaluate(tau: np.ndarray, gt) -> dict[str, float]:
    return levels(tau, gt, doc_source("genre"), N_GENRES)


def ours_sweep(art: dict, gt_choose) -> tuple[dict, list[dict]]:
    """Settings with the best mean LDS over the three levels on ``gt_choose`` (member 0 alone)."""
    rows = []
    for s, K in itertools.product(DAMPINGS, STEPS):
        lv = evaluate(ours_tau(art, s, K), gt_choose)
        rows.append({"damping": s, "steps": K, **lv, "mean": float(np.mean([lv[k] for k in LEVELS if k in lv]))})
    best = max(rows, key=lambda r: r["mean"])
    return {"damping": best["damping"], "steps": best["steps"]}, rows


def lexical_scores() -> tuple[dict, dict]:
    docs = [o.split() for o in text().openings]
    qs = [q.split() for q in query_texts(DEFAULT)]
    out, secs = {}, {}
    for name, fn in (("bm25", bm25), ("overlap", overlap)):
        t = time.perf_counter()
        out[name] = fn(qs, docs)
        secs[name] = time.perf_counter() - t
    return out, secs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--genre-seeds", type=int, default=1, help="seeds per genre subset in the target (1 or 2)")
    ap.add_argument("--base", action="store_true",
                    help="also 'base': ours on the base model alone (no fine-tune; bench.ft.ours --base)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    gt = truth.load(DEFAULT, genre_seeds=tuple(2 + s for s in range(a.genre_seeds)))
    choose, report = gt.split(0), gt.split(1)
    print(f"ground truth: {len(gt.doc_targets)} document subsets, {len(gt.genre_targets)} genre subsets, "
          f"{len(gt.full_outputs)} members", flush=True)
    E = min(a.members, len(gt.full_outputs))
    arts = [member_artefacts(e) for e in range(E)]
    best, sweep = ours_sweep(arts[0], choose)
    print(f"ours: chosen on the even subsets {best}", flush=True)
    taus: dict[tuple[str, int], np.ndarray] = {}
    per = [ours_tau(a_, best["damping"], best["steps"]) for a_ in arts]
    taus["ours", 1], taus["ours", E] = per[0], np.mean(per, 0)
    taus["graddot", 1], taus["graddot", E] = graddot(arts[:1]), graddot(arts)
    if a.base:
        art_b = member_artefacts(-1, rank=BASE_RANK)
        taus["base", 1] = ours_tau(art_b, best["damping"], best["steps"])
    lex, lex_s = lexical_scores()
    for k in lex:
        taus[k, 1] = taus[k, E] = lex[k]
    trak, trak_s = trak_sweep(arts)
    trak_lds = {key: {"report": evaluate(t, report), "all": evaluate(t, gt)} for key, t in trak.items()}

    secs = [a_["seconds"] for a_ in arts]
    grads_s = float(np.mean([s["doc_grads_s"] for s in secs]))
    t = time.perf_counter()
    response_filter(arts[0], best["damping"], best["steps"])(arts[0]["G"])
    filt_s = time.perf_counter() - t
    pre = {"ours": grads_s + float(np.mean([s["basis_s"] for s in secs])) + filt_s, "graddot": grads_s,
           "base": (art_b["seconds"]["doc_grads_s"] + art_b["seconds"]["basis_s"] + filt_s) if a.base else None,
           "bm25": lex_s["bm25"], "overlap": lex_s["overlap"]}
    cost = json.loads(COST.read_text()) if COST.exists() else {}
    per_query = cost.get("per_query", {})
    recs = []
    for (method, models), tau in sorted(taus.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rep, full = evaluate(tau, report), evaluate(tau, gt)
        lexical = method in ("bm25", "overlap")
        for lvl in LEVELS:
            recs.append({"method": method, "models": models, "level": lvl, "lds": rep.get(lvl),
                         "lds_all": full.get(lvl), "precompute_s": pre[method] * (1 if lexical else models),
                         **_inference(method, models, per_query, lexical)})
    for models in sorted({1, E}):
        for lvl in LEVELS:
            key = max((k for k in trak if k[0] == models), key=lambda k: trak_lds[k]["report"].get(lvl, -1))
            k = key[1]
            recs.append({"method": "trak", "models": models, "level": lvl, "lds": trak_lds[key]["report"].get(lvl),
                         "lds_all": trak_lds[key]["all"].get(lvl), "k": k, "lambda_rel": key[2],
                         "precompute_s": (grads_s + trak_s[k]["proj_gen_s"] + trak_s[k]["proj_docs_s"]
                                          + trak_s[k]["scores_s"]) * models,
                         **_inference("trak", models, per_query, False, k)})
    result = {
        "records": recs,
        "ours_settings": {**best, "eta": "1/(λ_max + damping)", "rank": arts[0]["rank"], "power": arts[0]["power"],
                          "curvature_blocks": arts[0]["curvature"], "chosen_on": "even subsets, member 0"},
        "ours_sweep_even": sweep,
        "trak_sweep": [{"models": m, "k": k, "lambda_rel": r, **{f"{s}_{lvl}": v for s in ("report", "all")
                                                                 for lvl, v in trak_lds[m, k, r][s].items()}}
                       for (m, k, r) in trak],
        "trak_ks": list(KS), "trak_lambdas_rel": list(LAMBDAS), "trak_timing_per_member": {str(k): v for k, v in
                                                                                          trak_s.items()},
        "members": E, "member_seconds": secs, "forward_check_max_rel": max(a_["check"] for a_ in arts),
        "largest_eigenvalue": [float(a_["h"][0]) for a_ in arts],
        "ground_truth": {"doc_subsets": len(gt.doc_targets), "genre_subsets": len(gt.genre_targets),
                         "genre_seeds": a.genre_seeds,
                         "report_doc_subsets": len(report.doc_targets),
                         "report_genre_subsets": len(report.genre_targets),
                         "seconds": gt.seconds, "sanity": truth.sanity(gt), "key": DEFAULT.key()},
        "machine": machine(), "threads": a.threads, "date": time.strftime("%Y-%m-%d"),
    }
    for r in recs:  # (before the merge below: the store's records are not of this form)
        print(f"{r['method']:8s} x{r['models']} {r['level']:14s} LDS {fmt(r['lds'])} (all {fmt(r['lds_all'])})")
    prev = json.loads(OUT.read_text()) if OUT.exists() else {}
    # the store's records (bench.ft.store) and the curvature study's (bench.ft.curvature) are theirs to rewrite
    result["records"] = recs + [r for r in prev.get("records", []) if "store_build_s" in r or "curvature" in r]
    for k in ("store", "store_build", "store_quantized", "curvature"):
        if k in prev:
            result[k] = prev[k]
    OUT.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(f"wrote {OUT}")
    return 0


def _inference(method: str, models: int, per_query: dict, lexical: bool, k: int | None = None) -> dict:
    """Per-query seconds per source (genre) and per example (document) of one member, times the models."""
    m = 1 if lexical else models
    if method in ("ours", "base"):
        src, ex = per_query.get("ours_genre_s"), per_query.get("ours_document_s")
    elif method == "trak":
        src = ex = per_query.get(f"trak_k{k}_s", per_query.get("trak_s"))
    elif method == "graddot":
        src = ex = per_query.get("graddot_s")
    else:
        src = ex = per_query.get(f"{method}_s")
    return {"inference_s_source": None if src is None else src * m,
            "inference_s_example": None if ex is None else ex * m}


if __name__ == "__main__":
    sys.exit(main())
