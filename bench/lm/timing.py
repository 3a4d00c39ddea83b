"""Per-query readout cost on the language model, side by side in one loop
(one member, one query at a time, the same thread count; medians):

- ``ours_source``: forward-only, ``jvp_scores`` of the 15 genre responses
  (15 tangents, no backward pass);
- ``ours_example``: forward-only, ``r`` basis tangents then the ``(r, 450)``
  coefficient product (every document, and every source as their sums);
- ``ours_rows``: forward-only, one tangent per document (a store of
  quantised uncompressed rows);
- ``trak``: a backward pass, traker's projection ``P^T g / sqrt(p)``
  (``BasicProjector``, resident ``(p, k)`` matrix) and the product with
  the finalised ``(450, k)`` features; per source it costs the same (the
  document scores are summed afterwards);
- ``graddot``: a backward pass and the product with the ``(450, p)``
  document gradients.

Each query runs every method before the next query starts, so machine noise
falls on all of them alike; the report states ratios.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from bench.harness.trak import finalized, lam_grid, trak_features
from influence.gpt.model import GPT
from influence.text.causal import sequence_logprob
from influence.text.lm_math import jvp_scores


def side_by_side(model: GPT, readout: dict, G: torch.Tensor, proj, qx: torch.Tensor, lam_rel: float = 1.0,
                 member: int = 0, rows: torch.Tensor | None = None) -> dict:
    """Seconds per query (medians over ``qx (n, 65)``) of every method, and
    how far the forward per-source readout is from the summed forward
    per-document one (they must agree: genre sums are exact). ``rows (n, p)``:
    also time a store of uncompressed rows (``ours_rows``: n tangents)."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    names = list(params)
    phi_d = trak_features(G / 64.0, proj, member)
    lam = lam_grid([phi_d], [lam_rel])[0]
    feats = finalized(phi_d, lam)
    S, B, C = readout["sources"], readout["basis"].float(), readout["coef"].float()
    A = readout.get("membership")
    times: dict[str, list[float]] = {k: [] for k in ("ours_source", "ours_example", "ours_rows", "trak", "graddot",
                                                   "backward")}
    gap = []
    plist = [dict(model.named_parameters())[k] for k in names]
    for x in qx:
        xb = x.unsqueeze(0)
        t0 = time.perf_counter()
        src = jvp_scores(model, params, S, xb)
        t1 = time.perf_counter()
        doc = jvp_scores(model, params, B, xb) @ C.T
        t2 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        sequence_logprob(model, xb)[0].backward()
        g = torch.cat([q.grad.reshape(-1) for q in plist]).unsqueeze(0)
        t3 = time.perf_counter()
        (proj.project(g, model_id=member) / math.sqrt(g.shape[1])) @ feats.T
        t4 = time.perf_counter()
        g @ G.T
        t5 = time.perf_counter()
        if rows is not None:
            jvp_scores(model, params, rows, xb)
            times["ours_rows"].append(time.perf_counter() - t5)
        for k, v in (("ours_source", t1 - t0), ("ours_example", t2 - t1), ("trak", t4 - t2),
                     ("graddot", t3 - t2 + t5 - t4), ("backward", t3 - t2)):
            times[k].append(v)
        if A is not None:
            gap.append(float((doc @ A.T - src).abs().max() / src.abs().max()))
    out = {f"{k}_s": float(np.median(v)) for k, v in times.items() if v}
    out.update({"queries": int(len(qx)), "threads": torch.get_num_threads(), "basis_rank": int(B.shape[0]),
                "rows": None if rows is None else int(rows.shape[0]),
                "source_tangents": int(S.shape[0]), "trak_k": int(phi_d.shape[1]),
                "source_vs_summed_documents_max_rel": max(gap) if gap else None})
    return out
