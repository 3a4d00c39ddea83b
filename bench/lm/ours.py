"""Our scores on the language-model benchmark, per full-data member
(``docs/lm-protocol.md``; the members are the ground truth's full-data
models, seeds ``2 + e``, so every method reads the same models).

Per member ``e``: the brown preset's simulation (``influence.text.
lm_simulate.simulate_documents``: exact ``U (450, p)``), the query
gradients ``Q (m, p)`` of the protocol's query windows, and

- ``exact``: ``tau = Q Uᵀ (m, 450)`` — what the forward readout computes
  (``jvp_scores`` of the rows of ``U``; checked here on a few queries and
  documents);
- ``r{r}_{dtype}``: the compressed store's readout, ``(Q B̃ᵀ) Cᵀ`` with the
  basis ``B (r, p)`` stored in ``dtype`` (``B̃`` = B rounded to it:
  float32, bfloat16, or group-wise ``int8`` / ``int4`` codes of
  ``influence.quant``) and the coefficients ``C (450, r)`` in float32;
  genres are the compression's sources (15 ≤ r/2: genre sums exact);
- ``rows_{dtype}``: no compression, every row of ``U`` rounded to ``dtype``
  (``Q Ũᵀ``: one tangent per document at readout).

Cached as ``ours-e{e}.npz`` beside the ground truth, and the exact ``U`` as
``ours-e{e}-U.npy`` (418 MB, so new variants need no new simulation).
Sign: the protocol's (``tau > 0``: including the document raises f(q)).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from bench.lm.groundtruth import load_full_params
from bench.lm.protocol import DEFAULT, N_GENRES, N_TRAIN, SPEC, LMProtocol, corpus, doc_genre, queries
from influence.gpt.model import GPT
from influence.quant import dequantize, quantize
from influence.simulate.settings import MethodConfig
from influence.store import DTYPES
from influence.text.lm_math import jvp_scores, query_grads
from influence.text.lm_simulate import compress, probe_grads, simulate_documents
from worker.config import PRESETS

PROBES = 256
CHECK_QUERIES = 4
CHECK_ROWS = 48  # forward readout == gradient dot product, checked on these documents
QUANT_GROUP = 128
ROW_DTYPES = ("bfloat16", "int8", "int4", "int3", "int2")  # uncompressed rows, rounded


def rounded(B: torch.Tensor, dtype: str) -> tuple[torch.Tensor, int]:
    """``B`` as the store would hold it in ``dtype``, back in float32, and its bytes."""
    if dtype.startswith("int"):
        q = quantize(B, int(dtype[3:]), QUANT_GROUP)
        return dequantize(q), q.nbytes
    return B.to(DTYPES[dtype]).float(), B.numel() * DTYPES[dtype].itemsize


def brown_method() -> MethodConfig:
    """The simulation settings of the brown preset (what ``fa-worker build
    --preset brown`` runs), compression off: the ranks are swept here."""
    return MethodConfig(**{**PRESETS["brown"]["method"], "compress_rank": 0})


@dataclass
class MemberScores:
    taus: dict[str, np.ndarray]  # variant -> (m, 450)
    seconds: dict[str, float]  # simulate_s, compress_s_r{r}, query_grads_s
    store_bytes: dict[str, int]  # variant -> bytes of the per-document part of one member
    forward_check: float  # max |jvp − gradient dot| / max |gradient dot| on CHECK_QUERIES queries
    diagnostics: dict


def _cache(p: LMProtocol, e: int):
    return p.truth_dir() / f"ours-e{e}.npz"


def variants(ranks: list[int], dtypes: list[str]) -> list[str]:
    return ["exact", *(f"rows_{d}" for d in ROW_DTYPES)] + [f"r{r}_{d}" for r in ranks for d in dtypes]


def readout_path(p: LMProtocol, e: int):
    """Member ``e``'s readout tensors for the timing (``sources (15, p)``,
    ``basis (r, p)``, ``coef (450, r)`` at the first rank swept)."""
    return p.truth_dir() / f"ours-e{e}-readout.pt"


def compute_member(e: int, ranks: list[int], dtypes: list[str], p: LMProtocol = DEFAULT) -> MemberScores:
    c, qx = corpus(), queries(p)
    params = load_full_params(e, p)
    model = GPT(SPEC, seed=None)
    seed = p.full_seed(e)
    U, diag = _responses(model, params, e, p)
    secs = {"simulate_s": diag["simulate_s"]}
    t = time.perf_counter()
    Q = query_grads(model, params, qx)
    secs["query_grads_s"] = time.perf_counter() - t
    exact = Q @ U.T
    fwd = jvp_scores(model, params, U[:CHECK_ROWS], qx[:CHECK_QUERIES])
    ref = exact[:CHECK_QUERIES, :CHECK_ROWS]
    check = float((fwd - ref).abs().max() / ref.abs().max())
    taus = {"exact": exact.double().numpy()}
    sizes = {"exact": U.numel() * 4}
    t = time.perf_counter()
    probe = probe_grads(model, params, c.blocks, PROBES, seed)
    secs["probe_s"] = time.perf_counter() - t
    genre = torch.from_numpy(doc_genre(c))
    for d in ROW_DTYPES:
        Uq, nbytes = rounded(U, d)
        taus[f"rows_{d}"] = (Q @ Uq.T).double().numpy()
        sizes[f"rows_{d}"] = nbytes
    for r in ranks:
        t = time.perf_counter()
        B, C, _ = compress(U, genre, N_GENRES, r, probe)
        secs[f"compress_s_r{r}"] = time.perf_counter() - t
        if r == ranks[0]:
            A = torch.zeros(N_GENRES, N_TRAIN).index_put_((genre, torch.arange(N_TRAIN)), torch.ones(N_TRAIN))
            torch.save({"sources": A @ U, "basis": B, "coef": C, "rank": r, "membership": A}, readout_path(p, e))
        for d in dtypes:
            Bq, nbytes = rounded(B, d)
            taus[f"r{r}_{d}"] = ((Q @ Bq.T) @ C.T).double().numpy()
            sizes[f"r{r}_{d}"] = nbytes + C.numel() * 4
    return MemberScores(taus, secs, sizes, check, diag)


def _responses(model: GPT, params: dict, e: int, p: LMProtocol) -> tuple[torch.Tensor, dict]:
    """Member ``e``'s exact ``U (450, p)`` float32 (cached) and the simulation's diagnostics."""
    path, meta = p.truth_dir() / f"ours-e{e}-U.npy", p.truth_dir() / f"ours-e{e}-U.json"
    if path.exists() and meta.exists():
        return torch.from_numpy(np.load(path)), json.loads(meta.read_text())
    c = corpus()
    t = time.perf_counter()
    resp = simulate_documents(model, params, c.blocks, c.block_document, N_TRAIN, brown_method(), 0.0,
                              p.full_seed(e))
    diag = {**resp.diagnostics, "simulate_s": time.perf_counter() - t}
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, resp.U.float().numpy())
    os.replace(tmp, path)
    meta.write_text(json.dumps(diag))
    return resp.U.float(), diag


def member_scores(e: int, ranks: list[int], dtypes: list[str], p: LMProtocol = DEFAULT) -> MemberScores:
    """Cached :func:`compute_member` (recomputed when a variant is missing)."""
    path = _cache(p, e)
    want = variants(ranks, dtypes)
    if path.exists():
        z = np.load(path, allow_pickle=True)
        meta = z["meta"].item()
        if all(f"tau_{v}" in z.files for v in want):
            return MemberScores({v: z[f"tau_{v}"] for v in want}, meta["seconds"], meta["store_bytes"],
                                meta["forward_check"], meta["diagnostics"])
    m = compute_member(e, ranks, dtypes, p)
    meta = {"seconds": m.seconds, "store_bytes": m.store_bytes, "forward_check": m.forward_check,
            "diagnostics": m.diagnostics}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, meta=np.array(meta, dtype=object), **{f"tau_{v}": t for v, t in m.taus.items()})
    tmp.replace(path)
    return m
