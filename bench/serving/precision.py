"""``python -m bench.serving.precision``: what bfloat16 forward tangents cost in
accuracy and gain in speed on a text store, side by side with float32.

The same store is loaded twice: ``TextAttributor`` with float32 tangents
(what the service runs by default) and with ``tangent_dtype=bfloat16``
(``FA_TEXT_TANGENT_DTYPE=bfloat16``: the trunk tangents in bf16, the
primal, f, token log-probabilities and sums in float32). Both read the
held-out Brown passages of ``bench.serving.load_text`` (720 windows of at most 64
tokens) sources-only, in blocks of ``--block`` rows as the service does.

Accuracy, per query across the store's sources (float32 = reference):
the largest |difference| over the largest |τ| of the query; Spearman and
Pearson across sources; whether the top source is the same; the overlap of
the top-5 sets; and whether f (the log-probability shown to the user) is
bit-identical (it must be: the primal stays float32).

Speed: seconds per block of each, measured interleaved (``side_by_side``)
at ``--threads`` torch threads, and the ratio; plus the GEMM rates of the
readout's shapes in both dtypes.

Writes ``bench/results/text_precision.json`` (keys ``rel_err_max``,
``rel_err_median``, ``spearman_mean``, ``top1_agree``, ``top5_overlap``,
``speedup``) and, with ``--write-md``, the "Text readout precision"
section of BENCHMARKS.md, with the served side by side of
``bench/results/load_text_bf16_ab.json`` when present (``python -m
bench.serving.load_text --parts ab --ab-variants text_tangent_dtype=bfloat16 --out
load_text_bf16_ab.json``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata

from bench.harness.common import ROOT, loadavg, machine, write_json
from bench.harness.timing import side_by_side
from influence.audit import colcorr

STORE = ROOT / "stores" / "brown-genre"


def agreement(ref: np.ndarray, got: np.ndarray, k: int = 5) -> dict:
    """Per-query agreement of ``got (m, S)`` with ``ref (m, S)``; means over queries."""
    rel = np.abs(got - ref).max(1) / np.abs(ref).max(1)
    top_r, top_g = np.argsort(-ref, 1)[:, :k], np.argsort(-got, 1)[:, :k]
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(top_r, top_g, strict=True)])
    spearman = colcorr(rankdata(ref, axis=1).T, rankdata(got, axis=1).T)  # (m,): per query across sources
    return {"queries": len(ref), "rel_err_max": float(rel.max()), "rel_err_median": float(np.median(rel)),
            "rel_err_p99": float(np.quantile(rel, 0.99)),
            "spearman_mean": float(spearman.mean()), "spearman_min": float(spearman.min()),
            "pearson_mean": float(colcorr(ref.T, got.T).mean()),
            "top1_agree": float((top_r[:, 0] == top_g[:, 0]).mean()), f"top{k}_overlap": float(overlap)}


def gemm_pair(shapes: list[tuple[int, int, int]], min_s: float = 0.2) -> list[dict]:
    """GFLOP/s of ``torch.matmul`` at each ``(m, k, n)`` in float32 and bfloat16, interleaved."""
    out = []
    for m, k, n in shapes:
        mats = {dt: (torch.randn(m, k).to(dt), torch.randn(k, n).to(dt)) for dt in (torch.float32, torch.bfloat16)}
        t = side_by_side({str(dt): (lambda a=a, b=b: a @ b) for dt, (a, b) in mats.items()}, min_s=min_s)
        out.append({"shape": [m, k, n], **{dt.removeprefix("torch."): 2 * m * k * n / s / 1e9 for dt, s in t.items()}})
    return out


def run(args) -> dict:
    from bench.serving.load_text import passages
    from influence.store import open_store
    from influence.text.attributor import TextAttributor

    torch.set_num_threads(args.threads)
    store = open_store(args.store)
    atts = {"float32": TextAttributor(store, "cpu"),
            "bfloat16": TextAttributor(store, "cpu", tangent_dtype=torch.bfloat16)}
    ref_att = atts["float32"]
    texts = passages(ref_att.tokenizer)[: args.queries]
    qs = [ref_att.encode(text=t) for t in texts]
    L = ref_att.spec.context + 1
    blocks = [qs[i:i + args.block] for i in range(0, len(qs) - args.block + 1, args.block)]
    t0 = time.perf_counter()
    scores = {k: [a.score(b, length=L, examples=False) for b in blocks] for k, a in atts.items()}
    score_s = time.perf_counter() - t0
    src = {k: torch.cat([s.sources for s in v]).double().numpy() for k, v in scores.items()}
    f = {k: torch.cat([s.logprob for s in v]) for k, v in scores.items()}
    res = agreement(src["float32"], src["bfloat16"])
    res["f_identical"] = bool(torch.equal(f["float32"], f["bfloat16"]))
    one = blocks[0]
    t = side_by_side({k: (lambda a=a: a.score(one, length=L, examples=False)) for k, a in atts.items()},
                     rounds=args.rounds, min_s=0.2)
    res.update(block_s={k: v for k, v in t.items()}, speedup=t["float32"] / t["bfloat16"])
    d, T, Kc = ref_att.spec.d, ref_att.spec.context, 8
    N = args.block * T
    res["gemm"] = gemm_pair([(N * Kc, d, 3 * d), (N * Kc, d, 4 * d), (N * Kc, 4 * d, d), (1024, 1024, 1024)])
    man = ref_att.manifest
    return {"command": "python -m bench.serving.precision " + shlex.join(sys.argv[1:]), "machine": machine(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_avg": loadavg(), "threads": args.threads,
            "store": {"root": str(args.store), "version": man.version, "sources": len(man.source_ids),
                      "tangents_per_query": ref_att.tangents(examples=False)},
            "block": args.block, "scoring_s": score_s, **res}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.serving.precision", description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, default=STORE, help="text store root")
    ap.add_argument("--queries", type=int, default=720, help="held-out passages scored")
    ap.add_argument("--block", type=int, default=4, help="rows per readout call (the service's text_readout_block)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds")
    ap.add_argument("--write-md", action="store_true", help="update BENCHMARKS.md")
    args = ap.parse_args(argv)
    if not (args.store / "CURRENT").exists():
        raise SystemExit(f"{args.store}: no store (build it: python -m worker build --preset brown "
                         f"--set data.sources=genre --store {args.store})")
    r = run(args)
    path = write_json("text_precision.json", r)
    from bench.serving import reports

    reports.main(["precision", "--json", str(path)] + ([] if args.write_md else ["--print"]))


if __name__ == "__main__":
    main()
