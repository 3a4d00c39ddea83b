"""Per-query readout cost on the ``brown-ft`` benchmark, honestly (issue 21):
flops and seconds of our forward-only readout per genre (15 rows), per
publisher (312 rows) and per document (450 rows), beside TRAK (one backward
pass + traker's projection + the product with the finalised features) and
the gradient dot product (a backward pass + the product with the document
gradients), one member, one query at a time (each query runs every method
before the next starts; medians), one thread; and the fraction of this
machine's one-thread float32 GEMM rate each reaches.

Two ways to cut the per-publisher cost with the readout kept forward-only.
(1) Tangents that start late: the responses restricted to the LoRA
parameters of the last ``n`` transformer blocks (the others zero), read out
with only those parameters as jvp inputs, so the first ``4 − n`` blocks run
once as a plain primal and every tangent flows through ``n`` blocks only
(a proxy of "LoRA only on the last blocks": same fine-tune, responses cut
to that subspace, accuracy measured on the same ground truth).
(2) A rank-``r`` basis of the document responses (``lm_simulate.compress`` with
the genres as its exact sources when ``r ≥ 30``, probe queries from training
blocks): ``r`` tangents, then publisher (and document) scores by an
``(r, 312)`` product. Its accuracy cost: document / genre LDS on the
reported (odd) subsets against the exact rows, and the agreement of its
publisher scores with the exact ones (mean per-query Spearman across the
312 publishers, relative error).

Flops are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matrix
products only: what dominates). Writes ``bench/results/ft_cost.json``.

    python -m bench.ft.cost [--queries 8] [--ranks 8,16,32,64] [--k 2048]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.ft.ours import member_artefacts, member_model, responses
from bench.ft.protocol import DEFAULT, N_GENRES, N_PUBLICATIONS, blocks, doc_source, queries
from bench.harness import truth
from bench.harness.common import RESULTS, machine
from bench.harness.metrics import lds
from bench.harness.metrics import levels as evaluate_one
from bench.harness.trak import finalized, lam_grid, projector, trak_features
from influence.text.causal import sequence_logprob
from influence.text.lm_math import jvp_scores
from influence.text.lm_simulate import compress, probe_grads, score_agreement

OUT = RESULTS / "ft_cost.json"


def gemm_rate(n: int = 1024, reps: int = 5) -> float:
    """Best-of float32 GFLOP/s of an ``n × n × n`` product on the current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def flops(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def membership(src: np.ndarray, n: int) -> torch.Tensor:
    A = torch.zeros(n, len(src))
    A[torch.as_tensor(src), torch.arange(len(src))] = 1.0
    return A


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=5)
    ap.add_argument("--ranks", default="8,16,32,64")
    ap.add_argument("--k", type=int, default=0, help="TRAK projection (default: the best of ft_quality at 1 model)")
    ap.add_argument("--late", default="1,2", help="last-n-blocks variants")
    ap.add_argument("--genre-ranks", default="4,8", help="rank-r bases of the 15 genre rows alone")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    q = json.loads((RESULTS / "ft_quality.json").read_text())
    st = q["ours_settings"]
    k = a.k or next(r["k"] for r in q["records"] if r["method"] == "trak" and r["models"] == 1
                    and r["level"] == "document")
    lam_rel = next(r["lambda_rel"] for r in q["records"] if r["method"] == "trak" and r["models"] == 1
                   and r["level"] == "document")
    art = member_artefacts(0)
    model, params = member_model(DEFAULT, 0)
    U = responses(art, st["damping"], st["steps"])  # (450, p)
    genre, pub = doc_source("genre"), doc_source("publication")
    Ag, Ap = membership(genre, N_GENRES), membership(pub, N_PUBLICATIONS)
    rows = {"genre": Ag @ U, "publication": Ap @ U, "document": U}
    G = -art["G"]
    proj = projector(G.shape[1], k, member=0)
    phi_d = trak_features(G, proj, 0)
    feats = finalized(phi_d, lam_grid([phi_d], [lam_rel])[0])
    x, mask = queries(DEFAULT)
    P = {n: v.detach().clone().requires_grad_(True) for n, v in params.items()}
    from torch.func import functional_call

    def backward(xb, mb):
        lp = sequence_logprob(lambda inp: functional_call(model, P, (inp,)), xb, None, mb)[0]
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(lp, list(P.values()))])[None]

    def trak(xb, mb):
        g = backward(xb, mb)
        return (proj.project(g, model_id=0) / math.sqrt(g.shape[1])) @ feats.T

    # probe gradients on training blocks steer the compression (never held-out text)
    t = time.perf_counter()
    probe = probe_grads(model, params, blocks()[0], 256, DEFAULT.full_seed(0))
    probe_s = time.perf_counter() - t
    ranks = [int(r) for r in a.ranks.split(",")]
    comp = {}
    for r in ranks:
        t = time.perf_counter()
        B, C, stats = compress(U, torch.as_tensor(genre), N_GENRES, r, probe)
        comp[r] = (B, C, stats, time.perf_counter() - t)

    def trim(i):
        L = int(mask[i].sum()) + 1
        return x[i : i + 1, :L], mask[i : i + 1, : L - 1]

    def readout(R, C=None, p=params, **kw):
        if C is None:
            return lambda xb, mb: jvp_scores(model, p, R, xb, mb, **kw)
        return lambda xb, mb: jvp_scores(model, p, R, xb, mb, **kw) @ C.T

    fns = {f"ours_{lvl}": readout(R) for lvl, R in rows.items()}
    fns["ours_genre_func"] = readout(rows["genre"], impl="func")  # the torch.func reference path
    bf = {n_: v.bfloat16() for n_, v in params.items()}
    if getattr(model, "manual_tangents", False):
        for lvl in ("genre", "publication"):
            fns[f"ours_{lvl}_bf16"] = readout(rows[lvl], tangent_params=bf)
    fns["trak"] = trak
    fns["graddot"] = lambda xb, mb: backward(xb, mb) @ G.T
    for r in ranks:
        fns[f"ours_basis_r{r}"] = readout(comp[r][0], comp[r][1])
    granks = [int(r) for r in a.genre_ranks.split(",") if r]
    gcomp = {r: compress(rows["genre"], torch.arange(N_GENRES), N_GENRES, r, probe) for r in granks}
    for r in granks:
        fns[f"ours_genre_basis_r{r}"] = readout(gcomp[r][0], gcomp[r][1])
    late = [int(n) for n in a.late.split(",") if n]
    with torch.no_grad():  # the module holds the fine-tuned adapters: params left out of a jvp keep them
        for n_, v in model.named_parameters():
            if n_ in params:
                v.copy_(params[n_])
    cols, off = {}, 0
    for n_, v in params.items():
        cols[n_] = (off, off + v.numel())
        off += v.numel()
    n_layers = 1 + max(int(n_.split(".h.")[1].split(".")[0]) for n_ in params)
    late_idx = {}
    for n in late:
        names = [n_ for n_ in params if int(n_.split(".h.")[1].split(".")[0]) >= n_layers - n]
        late_idx[n] = torch.cat([torch.arange(*cols[n_]) for n_ in names])
        sub = {n_: params[n_] for n_ in names}
        for lvl in ("genre", "publication"):
            fns[f"ours_late{n}_{lvl}"] = readout(rows[lvl][:, late_idx[n]].contiguous(), p=sub, impl="func")
    xb, mb = trim(0)
    fl = {name: flops(lambda f=f: f(xb, mb)) for name, f in fns.items()}
    fl["forward"] = flops(lambda: sequence_logprob(model, xb, None, mb))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(a.queries):
        xb, mb = trim(i)
        for name, f in fns.items():
            if i == 0:
                f(xb, mb)  # warm-up
            times[name].append(_timed(lambda f=f, xb=xb, mb=mb: f(xb, mb)))
    rate = gemm_rate()
    med = {f"{n}_s": float(np.median(v)) for n, v in times.items()}
    per_query = {**med, "ours_source_s": med["ours_genre_s"], "trak_s": med["trak_s"], f"trak_k{k}_s": med["trak_s"]}
    per_query["tokens"] = float(mask[: a.queries].sum(1).float().mean() + 1)

    # accuracy of the rank-r bases, on the reported (odd) subsets
    gs = q["ground_truth"].get("genre_seeds", 1)  # the same targets as ft_quality's
    gt = truth.load(DEFAULT, genre_seeds=tuple(2 + s for s in range(gs))).split(1)
    Qg = art["Q"]
    exact = (Qg @ U.T).double()
    ex_lds = evaluate_one(exact.numpy(), gt, genre, N_GENRES)
    pub_exact = exact @ Ap.double().T
    basis = []
    for r in ranks:
        B, C, stats, cs = comp[r]
        approx = ((Qg @ B.T) @ C.T).double()
        lv = evaluate_one(approx.numpy(), gt, genre, N_GENRES)
        basis.append({"rank": r, "compress_s": cs, "genres_exact": stats.exact_sources,
                      "rel_error_documents": stats.rel_error_documents,
                      "publisher_scores": score_agreement(pub_exact, approx @ Ap.double().T),
                      "document_scores": score_agreement(exact, approx),
                      **{f"lds_{k_}": v for k_, v in lv.items()},
                      **{f"lds_loss_{k_}": ex_lds.get(k_, float("nan")) - v for k_, v in lv.items()},
                      "seconds_per_query": med[f"ours_basis_r{r}_s"], "flops": fl[f"ours_basis_r{r}"]})
    for r in granks:  # genre-level accuracy of the genre-only bases (genre scores = (Q Bᵀ) Cᵀ)
        B, C, _ = gcomp[r]
        tg = ((Qg @ B.T) @ C.T).double().numpy()
        gl = {"genre": lds(tg, gt.genre_subsets, gt.genre_targets),
              "genre_centred": lds(tg, gt.genre_subsets, gt.genre_targets, centred=True)}
        basis.append({"rank": r, "genre_only": True, **{f"lds_{k_}": v for k_, v in gl.items()},
                      **{f"lds_loss_{k_}": ex_lds.get(k_, float("nan")) - v for k_, v in gl.items()},
                      "seconds_per_query": med[f"ours_genre_basis_r{r}_s"], "flops": fl[f"ours_genre_basis_r{r}"]})
    xb, mb = trim(0)
    checks = {n: float((fns[f"ours_late{n}_genre"](xb, mb)[0].double() - Qg[0, late_idx[n]].double()
                        @ rows["genre"][:, late_idx[n]].double().T).abs().max()
                       / (Qg[0] @ rows["genre"].T).abs().max()) for n in late}
    late_rows = []
    for n in late:
        li = late_idx[n]
        approx = (Qg[:, li] @ U[:, li].T).double()
        lv = evaluate_one(approx.numpy(), gt, genre, N_GENRES)
        late_rows.append({"blocks": n, "params": int(len(li)), **{f"lds_{k_}": v for k_, v in lv.items()},
                          **{f"lds_loss_{k_}": ex_lds.get(k_, float("nan")) - v for k_, v in lv.items()},
                          "publisher_scores": score_agreement(pub_exact, approx @ Ap.double().T),
                          **{f"{lvl}_s": med[f"ours_late{n}_{lvl}_s"] for lvl in ("genre", "publication")},
                          **{f"{lvl}_flops": fl[f"ours_late{n}_{lvl}"] for lvl in ("genre", "publication")}})
    result = {"per_query": per_query, "late": late_rows, "late_forward_check_max_rel": checks, "flops": fl,
              "gflops_per_s": {n: fl[n] / med[f"{n}_s"] / 1e9 for n in fns},
              "gemm_gflops_per_s": rate,
              "fraction_of_gemm": {n: fl[n] / med[f"{n}_s"] / 1e9 / rate for n in fns},
              "ratio_to_trak": {n: med[f"{n}_s"] / med["trak_s"] for n in fns},
              "rows": {"genre": N_GENRES, "publication": N_PUBLICATIONS, "document": 450},
              "trak_k": k, "trak_lambda_rel": lam_rel, "exact_lds_report": ex_lds, "basis": basis,
              "probe_s": probe_s, "queries": a.queries, "threads": a.threads, "machine": machine(),
              "date": time.strftime("%Y-%m-%d")}
    OUT.write_text(json.dumps(result, indent=1, default=float) + "\n")
    for n in fns:
        print(f"{n:18s} {med[f'{n}_s'] * 1e3:8.1f} ms  {fl[n] / 1e9:7.2f} GFLOP  "
              f"{result['fraction_of_gemm'][n]:.2f} of GEMM  x{result['ratio_to_trak'][n]:.2f} TRAK")
    for b in basis:
        print(b)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
