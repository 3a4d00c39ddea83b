"""``python -m bench.ft.scale``: the corpus-scale readout (issue 25) on a real store.

Measured, one store at a time (default: the brown-ft store ``fa-worker build
--preset brown-ft`` publishes):

* **Packed rows**: the store's 3-bit document rows held as their codes
  (``open_store(..., packed=True)``, ``influence.quant.PackedRows``) beside
  the same rows expanded to float32: resident bytes, the readout's time per
  block of 4 held-out queries (``bench.harness.timing.side_by_side``, one
  thread), and whether the scores are the same numbers.
* **Sublinear document readouts**, against the exact per-document scores of
  ``--queries`` held-out windows: the tree beam of ``influence.hierarchy``
  (sources as roots, read in full, as credit needs; or groups of sources as
  roots), a count-sketch (``t`` hashes of ``b`` signed buckets, the median
  estimate, then the top ``R`` reread exactly) and a Gaussian (JL) sketch of
  ``k`` combination rows with ``R`` rereads. Each strategy reads linear
  combinations of document rows, and first order is linear: a combination
  row's ``τ`` is that combination of its documents' exact ``τ``. So every
  strategy's reads are computed from the exact scores, exactly, without
  building its rows; what it costs is counted in tangents (rows read), the
  readout's time being linear in them (``tangents`` beside ``n_rows``).

Records (``bench/results/scale_readout.json``, stable keys): ``{store,
n_rows, method, width_or_m, tangents, recall_at_10, recall_at_50,
spearman_to_exact, doc_lds, time_ratio_exact, time_ratio_backward,
resident_mb}`` (``doc_lds``, ``time_ratio_backward``: null, not measured
here; ``time_ratio_exact``: measured for the packed readout, the tangent
ratio for the simulated strategies).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from influence.hierarchy import beam_read, build_tree, sketch, spherical_kmeans
from influence.quant import PackedRows, dequantize, quantize
from influence.store import open_store
from influence.text.attributor import TextAttributor
from influence.text.lm_math import jvp_scores

from ..harness.common import machine, write_json
from ..harness.timing import side_by_side

K_TOP = (10, 50)


def exact_scores(att: TextAttributor, n_queries: int, words: int = 60) -> torch.Tensor:
    """``(Q, n)`` document scores of the store's first held-out windows (at most ``words`` words each)."""
    hs = att.heldout.queries[:n_queries]
    qs = [att.encode(text=" ".join(q.text.split()[:words])) for q in hs]
    return torch.cat([att.score(qs[i:i + 4], examples=True).examples for i in range(0, len(qs), 4)]).double()


def recall(est: torch.Tensor, tau: torch.Tensor, k: int) -> float:
    """Mean share of each query's exact top-``k`` documents (by score, most helpful first) in the estimate's."""
    got, want = est.topk(k, dim=1).indices, tau.topk(k, dim=1).indices
    return sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(got, want, strict=True)) / (k * len(tau))


def spearman(est: torch.Tensor, tau: torch.Tensor) -> float:
    rank = lambda x: x.argsort(1).argsort(1).double()  # noqa: E731
    a, b = rank(est), rank(tau)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean())


def _reader(tree, tau: torch.Tensor):
    members = [tree.docs(nd) for nd in range(tree.n_nodes)]
    return lambda nodes: torch.stack([tau[:, members[nd]].sum(1) for nd in nodes], 1)


def _reread(est: torch.Tensor, tau: torch.Tensor, r: int) -> torch.Tensor:
    """The estimate with its top ``r`` documents per query reread exactly (and ranked first)."""
    if not r:
        return est
    top = est.topk(r, dim=1).indices
    return est.clone().scatter_(1, top, tau.gather(1, top) + tau.abs().max() * 4)


def strategies(tau: torch.Tensor, U, doc_source: torch.Tensor, n_sources: int, seed: int = 0):
    """``(method, width_or_m, tangents per query, estimate (Q, n))`` of every strategy."""
    n = tau.shape[1]
    z = sketch(U[0:n], 64, seed=seed)
    tree = build_tree(doc_source, n_sources, z, branching=4)
    for w in (1, 2, 4, 8, 16):
        a = beam_read(tree, _reader(tree, tau), len(tau), w)
        yield "beam_sources", w, float(a.rows_read.double().mean()), a.documents
    A = torch.zeros(n, n_sources)
    A[torch.arange(n), doc_source] = 1
    zs = sketch(A.T @ U[0:n], 64, seed=seed + 1)
    for g in (16, 32):
        groups = spherical_kmeans(zs / zs.norm(dim=1, keepdim=True).clamp_min(1e-12), g, seed)
        tg = build_tree(groups[doc_source], g, z, branching=4)
        for w in (2, 8):
            a = beam_read(tg, _reader(tg, tau), len(tau), w)
            yield f"beam_groups{g}", w, float(a.rows_read.double().mean()), a.documents
    gen = torch.Generator().manual_seed(seed)
    for t, b in ((3, 16), (3, 64), (5, 64)):
        h = torch.randint(0, b, (t, n), generator=gen)
        s = torch.randint(0, 2, (t, n), generator=gen) * 2.0 - 1
        buckets = torch.zeros(len(tau), t, b, dtype=torch.float64)
        for j in range(t):
            buckets[:, j].index_add_(1, h[j], tau * s[j])
        est = torch.stack([buckets[:, j, h[j]] * s[j] for j in range(t)]).median(0).values
        for r in (0, 30):
            yield f"sketch_reread{r}", t * b, t * b + r, _reread(est, tau, r)
    for k in (32, 64, 128):
        G = torch.randn(k, n, generator=gen, dtype=torch.float64)
        est = (tau @ G.T) @ G / k
        for r in (0, 30, 60):
            yield f"jl_reread{r}", k, k + r, _reread(est, tau, r)


def packed_vs_float(root: Path, rounds: int) -> tuple[dict, TextAttributor]:
    """Resident bytes and readout time of the packed rows beside float32 rows (4 held-out queries)."""
    dense = TextAttributor(open_store(root), "cpu")
    packed = TextAttributor(open_store(root, packed=True), "cpu")
    qs = [dense.encode(text=" ".join(q.text.split()[:60])) for q in dense.heldout.queries[:4]]
    a, b = dense.score(qs, examples=True), packed.score(qs, examples=True)
    t = side_by_side({"float": lambda: dense.score(qs, examples=False),
                      "packed": lambda: packed.score(qs, examples=False)}, rounds=rounds, min_s=0.0)
    out = {"float_mb": dense.resident_bytes() / 2**20, "packed_mb": packed.resident_bytes() / 2**20,
           "float_s_per_block": t["float"], "packed_s_per_block": t["packed"],
           "scores_bit_identical": bool(torch.equal(a.examples, b.examples)),
           "max_rel_diff": float((a.examples - b.examples).abs().max() / a.examples.abs().max())}
    return out, packed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ft.scale", description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=Path("stores/brown-ft"))
    ap.add_argument("--queries", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--growth", default="450,1800,4000", help="row counts of the synthetic growth runs ('' = none)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    mem, att = packed_vs_float(a.store, a.rounds)
    tau = exact_scores(att, a.queries)
    n, name = tau.shape[1], str(a.store)
    rows = [{"store": name, "n_rows": n, "method": "exact", "width_or_m": None, "tangents": float(n),
             "recall_at_10": 1.0, "recall_at_50": 1.0, "spearman_to_exact": 1.0, "doc_lds": None,
             "time_ratio_exact": 1.0, "time_ratio_backward": None, "resident_mb": mem["float_mb"]},
            {"store": name, "n_rows": n, "method": "exact_packed", "width_or_m": None, "tangents": float(n),
             "recall_at_10": 1.0 if mem["scores_bit_identical"] else None, "recall_at_50": None,
             "spearman_to_exact": None, "doc_lds": None,
             "time_ratio_exact": mem["packed_s_per_block"] / mem["float_s_per_block"], "time_ratio_backward": None,
             "resident_mb": mem["packed_mb"]}]
    man = att.manifest
    ds = torch.tensor(man.example_source)
    for method, width, tangents, est in strategies(tau, att.rows[0], ds, len(man.source_ids)):
        rows.append({"store": name, "n_rows": n, "method": method, "width_or_m": width, "tangents": tangents,
                     "recall_at_10": recall(est, tau, 10), "recall_at_50": recall(est, tau, 50),
                     "spearman_to_exact": spearman(est, tau), "doc_lds": None,
                     "time_ratio_exact": tangents / n, "time_ratio_backward": None, "resident_mb": mem["packed_mb"]})
        print({k: rows[-1][k] for k in ("method", "width_or_m", "tangents", "recall_at_10", "recall_at_50")})
    grown = growth(att, tuple(int(v) for v in a.growth.split(",") if v))
    for g in grown:
        for method, mb, secs in (("exact", g["float_mb"], g["float_s_per_block"]),
                                 ("exact_packed", g["packed_mb"], g["packed_s_per_block"])):
            rows.append({"store": f"{name} (synthetic rows)", "n_rows": g["n_rows"], "method": method,
                         "width_or_m": None, "tangents": float(g["n_rows"]), "recall_at_10": None,
                         "recall_at_50": None, "spearman_to_exact": None, "doc_lds": None,
                         "time_ratio_exact": secs / g["float_s_per_block"], "time_ratio_backward": None,
                         "resident_mb": mb})
    cmd = "python -m bench.ft.scale " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    write_json("scale_readout.json", {"command": cmd, "machine": machine(), "queries": len(tau), "packed": mem,
                                      "growth": grown, "records": rows})
    return 0



def _time_rows(att: TextAttributor, x: torch.Tensor, mask: torch.Tensor, q, rounds: int) -> dict:
    """One block's readout time over the rows of ``q`` (a ``QTensor``), float32 beside packed."""
    dense, packed = dequantize(q), PackedRows(q)
    read = lambda U: jvp_scores(att.model, att.params[0], U, x, mask)  # noqa: E731
    t = side_by_side({"float": lambda: read(dense), "packed": lambda: read(packed)}, rounds=rounds, min_s=0.0)
    return {"n_rows": q.shape[0], "float_s_per_block": t["float"], "packed_s_per_block": t["packed"],
            "float_mb": dense.numel() * 4 / 2**20, "packed_mb": packed.nbytes / 2**20}


def growth(att: TextAttributor, sizes: tuple[int, ...], rounds: int = 1, seed: int = 0) -> list[dict]:
    """Readout time per block of 4 queries and resident bytes against the number of rows ``n``: synthetic
    rows on the store's own model (its rows resampled with 10% noise, 3-bit like the store's), float32 beside
    packed, side by side at each ``n``."""
    base = att.rows[0][0:len(att.rows[0])]
    gen = torch.Generator().manual_seed(seed)
    qs = [att.encode(text=" ".join(q.text.split()[:60])) for q in att.heldout.queries[:4]]
    x, mask = att.batch(qs)
    out = []
    for n in sizes:
        idx = torch.randint(0, base.shape[0], (n,), generator=gen)
        rows = base[idx] * (1 + 0.1 * torch.randn(n, base.shape[1], generator=gen))
        q = quantize(rows, 3, 128)
        out.append(_time_rows(att, x, mask, q, rounds))
        print(out[-1], flush=True)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
