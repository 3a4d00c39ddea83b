"""Per-member artefacts of the ``brown-ft`` benchmark and our scores
(``ft-protocol.md``; members = the ground truth's full-data fine-tunes, seeds
``2 + e``, so every method reads the same models).

Per member ``e`` (cached in ``bench/.cache/ft/<key>/member-e{e}.pt``):

- ``G (450, p)``: per document, the gradient of its 4 blocks' *summed* token
  cross-entropy in the LoRA space (``p = 65,536``): the simulation's ``g_d``
  and, negated, the baselines' document gradients. A loop of one backward
  pass per document (2x faster than ``lm_math.doc_grads``' vmap on one CPU
  thread, the same numbers to 1e-6 relative);
- ``Q (256, p)``: ``∇f(q)`` of every query (``lm_math.query_grads``, target
  mask of the padded windows);
- the Nyström eigenbasis ``V (p, k)``, ``h (k,)`` of the Gauss-Newton matrix
  of the mean token cross-entropy on ``curvature_subset`` random training
  blocks (``lm_math.LMGaussNewton``, ``spectral.nystrom``; the generator
  seeded with the member's seed, as ``lm_simulate.simulate_documents``).

Our responses are ``lm_simulate.simulate_documents``'s closed form
``u_d = −φ_K(G + sI) g_d`` through that basis (``spectral.LowRankFilter``),
so ``τ(q, d) = ∇f(q)·u_d = −[(Q V) diag(φ(h) − φ(0)) (G V)ᵀ + φ(0) Q Gᵀ]``:
the damping / horizon / step-size sweep costs nothing once the artefacts
exist. This is exactly what the forward readout ``jvp_scores`` of the rows
``u_d`` computes (checked on a few queries and documents per member).
Per genre (and per publisher): sums of document scores (= the readout of
the summed responses, exact by linearity).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch.func import functional_call
from torch.nn import functional as F

from bench.ft.groundtruth import finetune_full, full_params_path
from bench.ft.protocol import BASE_DIR, DEFAULT, N_TRAIN, SPEC, FTProtocol, blocks, queries
from bench.harness.common import save_torch
from influence.simulate.spectral import Eigenbasis, LowRankFilter, nystrom

RANK, POWER, CURVATURE = 128, 1, 64  # the brown preset's Nyström settings (the basis is built once per member)
CHECK_QUERIES, CHECK_ROWS = 4, 8


def member_model(p: FTProtocol, e: int):
    """``(HFCausalLM with LoRA, LoRA params)`` of full-data member ``e``; ``e = -1``: the base model
    alone (no fine-tune: the LoRA adapters as initialised with seed 2, B = 0)."""
    from influence.hf.loader import load_model
    from influence.hf.model import wrap

    if e < 0:
        model = wrap(load_model(BASE_DIR), SPEC, seed=p.full_seed(0))
        return model, model.trained()
    path = full_params_path(p, e)
    if not path.exists():
        finetune_full(p, e, threads=torch.get_num_threads())
    params = torch.load(path, weights_only=True)
    model = wrap(load_model(BASE_DIR), SPEC, seed=p.full_seed(e))
    return model, params


def doc_gradients(model, params: dict, blocks_: torch.Tensor, block_doc: torch.Tensor, n_docs: int) -> torch.Tensor:
    """``(n_docs, p)``: ∇ of each document's summed token cross-entropy (one backward per document)."""
    names = list(params)
    P = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    out = torch.zeros(n_docs, sum(v.numel() for v in params.values()))
    for d in range(n_docs):
        x = blocks_[block_doc == d]
        if len(x) == 0:
            continue
        logits = functional_call(model, P, (x[:, :-1],))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
        out[d] = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, [P[k] for k in names])])
    return out


def _path(p: FTProtocol, e: int, rank: int, curvature: int):
    return p.params_dir() / f"member-e{e}-r{rank}-c{curvature}.pt"


def member_artefacts(e: int, p: FTProtocol = DEFAULT, rank: int = RANK, power: int = POWER,
                     curvature: int = CURVATURE, progress: bool = True) -> dict:
    """Cached ``{G, Q, V, h, QV, GV, QG, seconds, check}`` of member ``e``."""
    path = _path(p, e, rank, curvature)
    if path.exists():
        return torch.load(path, weights_only=False)
    from influence.text.lm_math import LMGaussNewton, jvp_scores, query_grads

    model, params = member_model(p, e)
    b, bd = blocks()
    x, mask = queries(p)
    secs = {}
    t = time.perf_counter()
    G = doc_gradients(model, params, b, bd, N_TRAIN)
    secs["doc_grads_s"] = time.perf_counter() - t
    t = time.perf_counter()
    Q = query_grads(model, params, x, mask)
    secs["query_grads_s"] = time.perf_counter() - t
    gen = torch.Generator().manual_seed(p.full_seed(max(e, 0)))
    idx = torch.randperm(b.shape[0], generator=gen)[:curvature].sort().values
    gn = LMGaussNewton(model, params, b[idx])
    t = time.perf_counter()
    basis = nystrom(gn, G.shape[1], rank, power, gen, G.dtype)
    secs["basis_s"] = time.perf_counter() - t
    if progress:
        print(f"member {e}: {secs}", flush=True)
    # the forward readout of a few responses equals Q Uᵀ (what the sweep computes)
    U = LowRankFilter(basis, 0.003, 1.0 / (float(basis.h[0]) + 0.003), 300)(G[:CHECK_ROWS])
    fwd = jvp_scores(model, params, U, x[:CHECK_QUERIES], mask[:CHECK_QUERIES])
    ref = Q[:CHECK_QUERIES] @ U.T
    art = {"G": G, "Q": Q, "V": basis.V, "h": basis.h, "QV": Q.double() @ basis.V.double(),
           "GV": G.double() @ basis.V.double(), "QG": Q.double() @ G.double().T, "seconds": secs,
           "check": float((fwd - ref).abs().max() / ref.abs().max()), "rank": rank, "power": power,
           "curvature": curvature}
    save_torch(art, path)
    return art


def basis_of(art: dict) -> Eigenbasis:
    return Eigenbasis(art["V"], art["h"], exact=False)


def response_filter(art: dict, damping: float, steps: int | None, eta_scale: float = 1.0) -> LowRankFilter:
    """The method's filter: shift ``s = damping`` (weight decay 0), ``η = eta_scale / (λ_max + s)``."""
    top = float(art["h"][0]) + damping
    return LowRankFilter(basis_of(art), damping, eta_scale / top, steps)


def ours_tau(art: dict, damping: float, steps: int | None, eta_scale: float = 1.0, rank: int | None = None
             ) -> np.ndarray:
    """``τ (256, 450)`` of one member (float64), optionally through the leading ``rank`` eigenpairs only."""
    filt = response_filter(art, damping, steps, eta_scale)
    k = len(filt.coef) if rank is None else rank
    QV, GV = art["QV"][:, :k], art["GV"][:, :k]
    return -((QV * filt.coef[:k]) @ GV.T + filt.tail * art["QG"]).numpy()


def responses(art: dict, damping: float, steps: int | None, eta_scale: float = 1.0) -> torch.Tensor:
    """``U (450, p)`` float32: the rows a store holds."""
    return response_filter(art, damping, steps, eta_scale)(art["G"])


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description="build the per-member artefacts (cached)")
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rank", type=int, default=RANK)
    ap.add_argument("--curvature", type=int, default=CURVATURE)
    ap.add_argument("--base", action="store_true", help="also the base model alone (member -1, last)")
    ap.add_argument("--base-rank", type=int, default=32)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for e in [*range(a.members), *([-1] if a.base else [])]:
        t = time.perf_counter()
        art = member_artefacts(e, rank=a.base_rank if e < 0 else a.rank, curvature=a.curvature)
        print(f"member {e}: {time.perf_counter() - t:.0f} s, forward check {art['check']:.2e}, "
              f"λ_max {float(art['h'][0]):.4g}, λ_k {float(art['h'][-1]):.3g}", flush=True)


if __name__ == "__main__":
    main()
