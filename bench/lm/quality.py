"""The language-model benchmark, side by side (issue 9; protocol
``docs/lm-protocol.md``): ours, TRAK, grad-dot and lexical overlap on the
same ground truth (``bench.lm.groundtruth``) and the same full-data
models, at 1 model and an ensemble of E, at document, genre and centred
genre level; precompute and per-query readout cost; and the compressed
store's loss (rank x basis dtype) against exact responses.

Measures only; ``bench.lm.report`` writes BENCHMARKS.md and the
PNG. Needs the ground truth and the baselines' cached scores:

    python -m bench.lm.groundtruth --full 5 --doc-subsets 48 --genre-subsets 24 --seeds 2
    python -m bench.lm.baselines --members 5
    python -m bench.lm.quality [--members 5] [--ranks 176,88,...] [--dtypes float32,bfloat16,int8,int4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from bench.harness import truth
from bench.harness.common import RESULTS
from bench.harness.metrics import lds_per_query
from bench.harness.metrics import levels as evaluate_one
from bench.harness.trak import projector
from bench.lm.baselines import doc_block_tensor, doc_gradients
from bench.lm.groundtruth import load_full_params, n_full_available
from bench.lm.ours import member_scores, readout_path
from bench.lm.protocol import DEFAULT, SPEC, corpus, doc_genre, queries
from bench.lm.timing import side_by_side
from influence.gpt.model import GPT

OUT = RESULTS / "lm_quality.json"
EXACT_BYTES = 450 * SPEC.n_params() * 4


def _baseline_taus(p) -> tuple[dict, dict]:
    path = p.truth_dir() / "baselines-tau.npz"
    rep = p.truth_dir() / "baselines-report.json"
    if not path.exists() or not rep.exists():
        raise SystemExit(f"{path}: missing; run `python -m bench.lm.baselines --members 5` first")
    z = np.load(path)
    return {k: z[k] for k in z.files}, json.loads(rep.read_text())


def _best_trak(taus: dict, gt, genre: np.ndarray, prefix: str) -> str:
    """The λ of the sweep with the best document-level LDS (in TRAK's favour:
    chosen on the ground truth itself)."""
    names = [k for k in taus if k.startswith(prefix)]  # the λ sweep: "<prefix><λ relative>"
    return max(names, key=lambda k: evaluate_one(taus[k], gt, genre)["document"])


def quality_records(gt, genre, taus1: dict, tausE: dict, E: int, precompute: dict) -> list[dict]:
    """One record per (method, models, level)."""
    recs = []
    for models, taus in ((1, taus1), (E, tausE)):
        for method, tau in taus.items():
            for level, v in evaluate_one(tau, gt, genre).items():
                recs.append({"method": method, "models": models, "level": level, "lds": v,
                             "precompute_s": precompute[method] * models})
    return recs


def compression_records(gt, genre, members: list, E: int) -> list[dict]:
    out = []
    exact1 = evaluate_one(members[0].taus["exact"], gt, genre)
    exactE = evaluate_one(np.mean([m.taus["exact"] for m in members], 0), gt, genre)
    for v in members[0].taus:
        l1 = evaluate_one(members[0].taus[v], gt, genre)
        lE = evaluate_one(np.mean([m.taus[v] for m in members], 0), gt, genre)
        b = members[0].store_bytes[v]
        out.append({"variant": v, "bytes_per_member": b, "reduction": EXACT_BYTES / b,
                    "lds_document_1": l1["document"], "lds_document_E": lE["document"],
                    "loss_document_1": exact1["document"] - l1["document"],
                    "loss_document_E": exactE["document"] - lE["document"],
                    "lds_genre_E": lE["genre"], "members": E})
    return out


def timing(p, qx: torch.Tensor, n: int, k: int) -> dict:
    c = corpus()
    model = GPT(SPEC, seed=None)
    model.load_state_dict(load_full_params(0, p))
    G = doc_gradients(model, doc_block_tensor(c.blocks, c.block_document, len(c.train_tokens)))
    proj = projector(G.shape[1], k, member=0)
    rows = torch.from_numpy(np.load(p.truth_dir() / "ours-e0-U.npy"))
    return side_by_side(model, torch.load(readout_path(p, 0), weights_only=True), G, proj, qx[:n], rows=rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--ranks", default="176,88,192,320,352", help="compressed ranks; the first is the store's")
    ap.add_argument("--dtypes", default="float32,bfloat16,int8,int4",
                    help="basis dtypes")
    ap.add_argument("--store-variant", default="rows_int3", help="the variant the brown preset stores")
    ap.add_argument("--timing-queries", type=int, default=20)
    ap.add_argument("--k", type=int, default=2048, help="TRAK projection dimension (as bench.lm.baselines)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--scores-only", action="store_true",
                    help="compute and cache our per-member scores, then stop (no ground truth needed yet)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    p = DEFAULT
    ranks, dtypes = [int(x) for x in a.ranks.split(",")], a.dtypes.split(",")
    E = min(a.members, n_full_available(p))
    members = []
    for e in range(E):
        t = time.perf_counter()
        members.append(member_scores(e, ranks, dtypes, p))
        print(f"member {e}: {time.perf_counter() - t:.0f} s {members[-1].seconds}", flush=True)
    if a.scores_only:
        return 0
    gt = truth.load(p)
    genre = doc_genre(corpus())
    base, brep = _baseline_taus(p)
    store_v = a.store_variant
    trak1, trakE = _best_trak(base, gt, genre, "trak_m1_rel"), _best_trak(base, gt, genre, "trak_rel")
    taus1 = {"ours": members[0].taus["exact"], "trak": base[trak1], "graddot": base["grad_dot_m1"],
             "overlap": base["lexical"], "ours_store": members[0].taus[store_v]}
    tausE = {"ours": np.mean([m.taus["exact"] for m in members], 0), "trak": base[trakE],
             "graddot": base["grad_dot"], "overlap": base["lexical"],
             "ours_store": np.mean([m.taus[store_v] for m in members], 0)}
    bt = brep["timing"]
    ours_pre = float(np.mean([m.seconds["simulate_s"] for m in members]))
    precompute = {"ours": ours_pre, "ours_store": ours_pre + float(np.mean(
        [m.seconds["probe_s"] + m.seconds[f"compress_s_r{ranks[0]}"] for m in members])),
        "trak": float(np.mean(np.add(bt["doc_grads_s"], bt["proj_docs_s"]) + np.array(bt["proj_gen_s"]))),
        "graddot": float(np.mean(bt["doc_grads_s"])), "overlap": bt["lexical_s"] / E}
    recs = quality_records(gt, genre, taus1, tausE, E, precompute)
    tm = timing(p, queries(p), a.timing_queries, a.k)
    store_s = tm["ours_rows_s"] if store_v.startswith("rows") else tm["ours_example_s"]
    per = {"ours": (tm["ours_source_s"], tm["ours_rows_s"]), "ours_store": (store_s, store_s),
           "trak": (tm["trak_s"], tm["trak_s"]),
           "graddot": (tm["graddot_s"], tm["graddot_s"]),
           "overlap": (bt["lexical_s"] / len(gt.full_outputs[0]),) * 2}
    for r in recs:
        r["inference_s_source"], r["inference_s_example"] = (v * r["models"] for v in per[r["method"]])
    result = {"records": recs, "compression": compression_records(gt, genre, members, E), "timing": tm,
              "members": E, "store_variant": store_v, "trak_lambda": {"1": trak1, str(E): trakE},
              "forward_check_max_rel": max(m.forward_check for m in members),
              "ground_truth": {"doc_subsets": len(gt.doc_targets), "genre_subsets": len(gt.genre_targets),
                               "seconds": gt.seconds, "heldout_ppl": gt.heldout_ppl.tolist()},
              "diagnostics": [m.diagnostics for m in members], "exact_bytes_per_member": EXACT_BYTES,
              "threads": a.threads, "date": time.strftime("%Y-%m-%d")}
    result["per_query_document_lds"] = {f"{k}_x{E}": lds_per_query(tausE[k], gt.doc_subsets, gt.doc_targets).tolist()
                                        for k in ("ours", "trak", "overlap")}
    prev = json.loads(OUT.read_text()) if OUT.exists() else {}
    for r in recs:  # (before the merge below: bench.lm.store's record is not of this form)
        print(f"{r['method']:10s} x{r['models']} {r['level']:14s} LDS {r['lds']:.3f}")
    result["records"] = recs + [r for r in prev.get("records", []) if "store_build_s" in r]
    OUT.write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
