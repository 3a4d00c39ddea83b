"""Training-time simulation for the language model, and its compressed form.

Directions are documents: ``g_d = Σ_{blocks b of d} ∇ℓ_b`` (summed token
losses, ``lm_math.doc_grads``). Curvature: the Gauss-Newton matrix of the
mean token cross-entropy on a fixed random subset of ``curvature_subset``
training blocks (``lm_math.LMGaussNewton``), plus ``s = weight decay +
damping`` times the identity. The K-step propagation of the method page
around the trained parameters is evaluated in closed form through a rank-k
Nyström eigenbasis of that operator (``influence.simulate.spectral``: the
same map as K damped steps, at 1 + power products of k directions).

Scale: removing document ``d`` from a corpus of ``N_tok`` training targets
moves the output by about ``−τ(q, d) / N_tok`` (the objective is a mean over
tokens and ``g_d`` sums the document's token losses).

Compression (``compress``): the ``(n, p)`` response matrix is stored as an
orthonormal basis ``B (r, p)`` and coefficients ``C = U Bᵀ (n, r)``, so
``u_d ≈ Σ_j C[d, j] b_j`` and the readout is ``r`` forward tangents per
query followed by an ``(r, n)`` product. When there are at most
``rank // 2`` sources the basis starts with the orthonormalised source
responses ``Σ_{d∈s} u_d``, so per-source scores are exact and only the
per-document ones carry the truncation; the rest of the basis is the top of
the SVD of what remains. ``CompressionStats`` states the loss.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..simulate.settings import MethodConfig
from ..simulate.spectral import LowRankFilter, gaussian_sketch, nystrom, nystrom_from
from .causal import PAD, CausalLM
from .lm_math import LMGaussNewton, doc_grads, doc_grads_and_fisher_sketch, query_grads


@dataclass
class LMResponses:
    """Exact per-document responses ``U (n, p)`` and how they were made."""

    U: torch.Tensor
    diagnostics: dict = field(default_factory=dict)


Progress = Callable[[str, int, int], None]
"""``progress(stage, n, total)``: ``n`` more units of ``stage`` are done, of ``total``."""
Memo = Callable[[str, Callable[[], object]], object]
"""``memo(name, compute)``: the stage's result, from a checkpoint when one holds it (the worker's
work directory), else ``compute()`` (then saved). Identity by default: the core knows no files."""


def _no_memo(name: str, compute: Callable[[], object]) -> object:
    return compute()


def simulate_documents(model: CausalLM, params: dict[str, torch.Tensor], blocks: torch.Tensor, block_doc: torch.Tensor,
                       n_docs: int, method: MethodConfig, weight_decay: float, seed: int,
                       progress: Progress | None = None, memo: Memo = _no_memo, docs: slice | None = None,
                       share: tuple[int, int] = (0, 1), reduce: Callable | None = None) -> LMResponses:
    """``u_d = −φ_K(G + sI) g_d`` for every document: ``U (n_docs, p)``, or
    for the documents ``docs`` only (a contiguous shard: ``U (len, p)``).

    Sharded over processes: each computes its documents' gradients and
    responses, and the curvature products sum the process's ``share``
    ``(rank, world)`` of the curvature chunks, then ``reduce`` (an
    all-reduce) adds them up, so every process holds the same basis. Rows do
    not depend on the shard; the basis equals one process's up to the order
    of the sum.

    Stages, each reported to ``progress`` with its count and kept by ``memo``:
    ``gradients`` (N blocks), ``curvature basis`` ((power + 1) × ceil(C / chunk)
    Gauss-Newton chunk products of ``rank`` directions, C = curvature blocks),
    ``responses`` (1). A stage restored by ``memo`` gives the same bits as computing it."""
    report = progress or (lambda stage, n, total: None)
    N = blocks.shape[0]
    docs = docs or slice(0, n_docs)
    mine = (block_doc >= docs.start) & (block_doc < docs.stop)  # this shard's documents' blocks
    n_mine = int(mine.sum())
    grads_progress = lambda n: report("gradients", n, n_mine)  # noqa: E731
    mine_blocks, mine_owner, n_part = blocks[mine], block_doc[mine] - docs.start, docs.stop - docs.start
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    if method.curvature == "fisher":
        p = sum(v.numel() for v in params.values())
        omega = _orth_cols(gaussian_sketch(p, min(method.rank, N, p), gen, torch.float64)).to(blocks.device)
        (G, Y), t_grads = memo("gradients", lambda: _timed(lambda: doc_grads_and_fisher_sketch(
            model, params, mine_blocks, mine_owner, n_part, omega, progress=grads_progress)))
        Y = Y if reduce is None else reduce(Y.clone())
        n_targets = int((blocks[:, 1:] != PAD).sum())
        basis, t_basis = memo("basis", lambda: _timed(lambda: nystrom_from(omega, Y / n_targets, G.dtype)))
        sub = N
    else:
        G, t_grads = memo("gradients", lambda: _timed(lambda: doc_grads(
            model, params, mine_blocks, mine_owner, n_part, progress=grads_progress)))
        sub = method.curvature_subset or N
        basis, t_basis = _gauss_newton_basis(model, params, blocks, G, method, gen, sub, share, reduce, report, memo)
    shift = weight_decay + method.damping
    eta = method.step_size(float(basis.h[0]) + shift)
    filt = LowRankFilter(basis, shift, eta, method.steps)
    U = filt(G)
    report("responses", 1, 1)
    return LMResponses(U, {"solver": "spectral", "curvature": method.curvature, "rank": len(basis.h),
                           "curvature_blocks": int(sub), "largest_eigenvalue": float(basis.h[0]), "eta": eta,
                           "smallest_eigenvalue": float(basis.h[-1]),
                           "tail_estimate": filt.tail_bound, "grads_s": t_grads, "basis_s": t_basis,
                           "total_s": time.perf_counter() - t0})


def _gauss_newton_basis(model, params, blocks, G, method: MethodConfig, gen, sub: int, share, reduce, report, memo):
    """The Nyström eigenbasis of the Gauss-Newton matrix on ``sub`` random blocks: ``(basis, seconds)``."""
    idx = torch.randperm(blocks.shape[0], generator=gen)[:sub].sort().values.to(blocks.device)
    product = LMGaussNewton(model, params, blocks[idx])
    product.share, product.reduce = share, reduce
    p = G.shape[1]
    chunks = (1 if method.rank >= p else method.power + 1) * len(product.chunk_starts())
    product.on_chunk = lambda: report("curvature basis", 1, chunks)
    return memo("basis", lambda: _timed(lambda: nystrom(product, p, method.rank, method.power, gen, G.dtype,
                                                        G.device)))


def _timed(compute: Callable[[], object]) -> tuple[object, float]:
    """``(compute(), seconds)``: a stage's time is kept with its checkpoint, so a resumed build reports it."""
    t0 = time.perf_counter()
    return compute(), time.perf_counter() - t0


@dataclass
class CompressionStats:
    """What a compressed response matrix loses: Frobenius norms in parameter
    space, and of the scores of probe queries (``Q Uᵀ``), which is what a
    readout sees."""

    rank: int
    exact_sources: bool
    rel_error_documents: float  # |U − C B| / |U|
    rel_error_sources: float  # |A(U − C B)| / |A U| over the source sums
    rel_error_probe_scores: float | None = None  # |Q(U − C B)ᵀ| / |Q Uᵀ| on the probe queries
    heldout: dict | None = None  # the same on held-out queries, with per-query rank agreement


def probe_grads(model: CausalLM, params: dict[str, torch.Tensor], blocks: torch.Tensor, m: int, seed: int
                ) -> torch.Tensor:
    """``(m, p)`` output gradients ``∇f`` on ``m`` random training blocks
    (seed ``seed + 17``): the query metric that steers ``compress``, drawn
    from training text only, never held-out text."""
    gen = torch.Generator().manual_seed(seed + 17)
    idx = torch.randperm(blocks.shape[0], generator=gen)[:m].to(blocks.device)
    b = blocks[idx]
    return query_grads(model, params, b.clamp_min(0), b[:, 1:] != PAD)  # a padded block: its real targets only


def _orth_cols(M: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(M).Q if M.shape[1] else M


def _complete(R: torch.Tensor, Ud: torch.Tensor, r: int) -> torch.Tensor:
    """Extend orthonormal ``R (n, k)`` to ``r`` columns with the top
    eigenvectors of ``U Uᵀ`` restricted to ``span(R)⊥``: when the probes see
    fewer than ``r`` directions, the rest of the basis keeps what is largest
    in ``U`` itself (without this, a basis wider than the probe count is
    filled with arbitrary null-space vectors)."""
    if R.shape[1] >= r:
        return R
    Z = Ud - R @ (R.T @ Ud)  # (n, p): rows of U with span(R) taken out
    w, V = torch.linalg.eigh(Z @ Z.T)
    extra = V[:, w.argsort(descending=True)[: r - R.shape[1]]]
    return _orth_cols(torch.cat([R, extra - R @ (R.T @ extra)], dim=1))


def compress(U: torch.Tensor, doc_source: torch.Tensor, n_sources: int, rank: int,
             probe: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, CompressionStats]:
    """``U (n, p)`` -> basis ``B = Rᵀ U (r, p)`` and coefficients ``C = R
    (n, r)``, ``R`` orthonormal columns in document space, so ``C B`` is
    ``U`` with its rows projected onto ``span(R)``. ``R`` starts with the
    source indicators when ``S ≤ r/2`` (then ``A C B = A U``: per-source
    scores exact) and is completed by the top right singular vectors of
    ``Q Uᵀ`` for probe query gradients ``Q (m, p)`` (what a readout sees;
    ``probe=None``: of ``U`` itself), then, past what the probes see, by
    ``U``'s own largest remaining directions. ``r = min(rank, n)``."""
    n = U.shape[0]
    r = min(rank, n)
    Ud = U.double()
    dev = U.device
    A = torch.zeros(n_sources, n, dtype=torch.float64, device=dev).index_put_(
        (doc_source.to(dev), torch.arange(n, device=dev)), torch.ones(n, dtype=torch.float64, device=dev))
    exact = n_sources <= r // 2
    Rs = _orth_cols(A.T[:, A.sum(1) > 0]) if exact else torch.zeros(n, 0, dtype=torch.float64, device=dev)
    M = Ud @ Ud.T if probe is None else probe.double() @ Ud.T  # (n, n) Gram or (m, n) probe scores
    M_rest = M - (M @ Rs) @ Rs.T
    _, sv, Vh = torch.linalg.svd(M_rest, full_matrices=False)
    seen = int((sv > 1e-10 * sv[0].clamp_min(1e-300)).sum()) if len(sv) else 0
    R = _orth_cols(torch.cat([Rs, Vh[: min(r - Rs.shape[1], seen)].T], dim=1))
    R = _complete(R, Ud, r)
    B, C = R.T @ Ud, R
    err = Ud - C @ B
    stats = CompressionStats(R.shape[1], exact, (err.norm() / Ud.norm()).item(),
                             ((A @ err).norm() / (A @ Ud).norm().clamp_min(1e-300)).item())
    if probe is not None:
        Mp = probe.double() @ Ud.T
        stats.rel_error_probe_scores = ((Mp - Mp @ R @ R.T).norm() / Mp.norm()).item()
    return B.to(U.dtype), C.to(U.dtype), stats


def score_agreement(exact: torch.Tensor, approx: torch.Tensor) -> dict:
    """Relative Frobenius error and mean per-query Spearman of two score
    matrices ``(m, n)``."""
    def ranks(x):
        return x.argsort(1).argsort(1).double()

    a, b = ranks(exact), ranks(approx)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    rho = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)
    return {"rel_error": ((approx - exact).norm() / exact.norm()).item(), "spearman": rho.mean().item(),
            "queries": int(exact.shape[0])}
