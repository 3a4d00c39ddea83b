"""Gradients, curvature products and forward-only readout for the GPT
(``docs/lm-protocol.md``), on flat parameter vectors.

Flat vectors follow ``ParamLayout.of(params)`` with ``params = dict(model.
named_parameters())`` (names in registration order); ``p`` is the parameter
count. Blocks are ``(N, T+1)`` token ids (the protocol's ``T = 64``): inputs
the first ``T``, targets the last ``T``.

- ``block_grads`` / ``doc_grads``: ``∇θ`` of each block's *summed* token
  cross-entropy (the sign convention of the protocol's gradient dot product
  is ``τ = ∇f(q) · Σ_blocks (−∇ℓ_block)``), per block or summed per document.
- ``LMGaussNewton``: ``G U`` with ``G = (1/(N·T)) Σ_{n,t} J_{n,t}ᵀ H_{n,t}
  J_{n,t}``, the Gauss-Newton matrix of the *mean* token cross-entropy over
  the blocks (``J`` the Jacobian of one position's logits ``(V,)``,
  ``H = diag(p) − p pᵀ``): a ``Product`` for ``influence.simulate.spectral``.
  ``hvp_lm`` is the exact Hessian product of the same loss (reference).
- Readout: ``f(q; θ)`` = masked mean over targets of ``log p(y_t | y_<t)``
  (``sequence_logprob``); ``jvp_scores`` (forward mode only),
  ``difference_scores`` (two-point difference), ``gradient_scores`` and
  ``query_grads`` (backward pass; references and baselines).

Everything is ``torch.func`` (``functional_call`` + ``grad``/``jvp``/``vjp``/
``vmap``) except the serving path of ``jvp_scores``, whose trunk tangents are
hand-derived and batched into large GEMMs (``influence.gpt.tangent``, tested
against ``torch.func.jvp``); all run in float32 and float64 on any device.
Every query is scored on its own row of the batch (causal attention, masked
mean), so scores do not depend on the batch composition or its padding.
"""

from __future__ import annotations

import threading
from typing import Literal

import torch
from torch.func import functional_call, grad, jvp, vjp, vmap
from torch.nn import functional as F

from ..layout import ParamLayout
from .causal import PAD, CausalLM, block_io, lm_loss, sequence_logprob
from .rules import manual_chunk

Params = dict[str, torch.Tensor]


FORWARD_AD = threading.RLock()
"""torch's forward-mode AD keeps its dual levels in process-wide state, and
``functional_call`` swaps a module's parameters in place: two threads inside
``torch.func.jvp`` on one model corrupt each other ("Trying to access a forward AD
level with an invalid index", or silently other parameters). Every torch.func readout
holds this lock (the hand-derived tangents, pure functions of their inputs, need
none): the service's readout workers and its background store probe share a process."""


def _detached(params: Params) -> Params:
    return {k: v.detach() for k, v in params.items()}


def _dtype(params: Params) -> torch.dtype:
    return next(iter(params.values())).dtype


# -- training gradients ----------------------------------------------------------------
def _block_loss(model: CausalLM, params: Params, block: torch.Tensor) -> torch.Tensor:
    """Summed token cross-entropy of one block ``(T+1,)``: a scalar (``PAD``
    targets of a right-padded block count nowhere: cross_entropy's ignore_index)."""
    inp, tgt = block_io(block[None])
    logits = functional_call(model, params, (inp,))[0]  # (T, V)
    return F.cross_entropy(logits, tgt[0], reduction="sum", ignore_index=PAD)


def _block_grad_chunks(model: CausalLM, params: Params, blocks: torch.Tensor, chunk: int):
    """Yield ``(slice, (c, p) flat gradients)`` per chunk of ``c`` blocks."""
    params = _detached(params)
    layout = ParamLayout.of(params)
    per = vmap(grad(lambda p, b: _block_loss(model, p, b)), in_dims=(None, 0))
    for s in range(0, blocks.shape[0], chunk):
        sl = slice(s, s + chunk)
        yield sl, layout.flatten(per(params, blocks[sl]))


def block_grads(model: CausalLM, params: Params, blocks: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """``blocks (N, T+1)`` → ``(N, p)``: ``∇θ Σ_t ℓ_t`` of each block (summed
    token cross-entropy over its ``T`` targets; no weight decay). ``chunk``
    blocks per vmapped pass (memory only)."""
    out = torch.empty(blocks.shape[0], ParamLayout.of(params).numel, dtype=_dtype(params))
    out = out.to(next(iter(params.values())).device)
    for sl, g in _block_grad_chunks(model, params, blocks, chunk):
        out[sl] = g
    return out


def doc_grads(model: CausalLM, params: Params, blocks: torch.Tensor, block_doc: torch.Tensor, n_docs: int,
              chunk: int = 32, progress=None) -> torch.Tensor:
    """``(n_docs, p)``: the sum of ``block_grads`` over each document's blocks.
    ``block_doc (N,)`` int64 indexes the documents (a document without
    blocks gets a zero row). Accumulated chunk by chunk: at most ``chunk``
    block rows exist at once; ``progress(n)`` after each chunk of ``n`` blocks."""
    first = next(iter(params.values()))
    out = torch.zeros(n_docs, ParamLayout.of(params).numel, dtype=first.dtype, device=first.device)
    owner = block_doc.to(first.device)
    for sl, g in _block_grad_chunks(model, params, blocks, chunk):
        out.index_add_(0, owner[sl], g)
        if progress is not None:
            progress(g.shape[0])
    return out


def doc_grads_and_fisher_sketch(model: CausalLM, params: Params, blocks: torch.Tensor, block_doc: torch.Tensor,
                                n_docs: int, omega: torch.Tensor, chunk: int = 32, progress=None
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``doc_grads`` and, from the same block gradients, ``Y = Σ_b g_b (g_bᵀ Ω) (p, k)``:
    the sketch of the (unnormalised) empirical Fisher ``Σ_b g_b g_bᵀ`` of these blocks
    against ``Ω (p, k)``, for ``spectral.nystrom_from``. One pass; the Fisher never
    exists as a matrix (memory ``p × k`` for ``Y``)."""
    first = next(iter(params.values()))
    out = torch.zeros(n_docs, ParamLayout.of(params).numel, dtype=first.dtype, device=first.device)
    Y = torch.zeros(omega.shape, dtype=first.dtype, device=first.device)
    owner = block_doc.to(first.device)
    omega = omega.to(first.dtype)
    for sl, g in _block_grad_chunks(model, params, blocks, chunk):
        out.index_add_(0, owner[sl], g)
        Y.addmm_(g.T, g @ omega)
        if progress is not None:
            progress(g.shape[0])
    return out, Y


# -- curvature -------------------------------------------------------------------------
class LMGaussNewton:
    """``U (r, p) → G U (r, p)``, ``G`` the Gauss-Newton matrix of the mean
    token cross-entropy over ``blocks (N, T+1)`` (no weight decay, no damping).

    Matrix-free, per chunk of ``chunk`` blocks: one primal pass with its
    ``vjp`` closure; for every direction (``vmap``, sharing the primal) the
    logits tangent ``ż = J u`` by ``jvp``, then ``H ż = p ⊙ (ż − Σ_v p ż)``
    per token, then ``Jᵀ (H ż)`` through the ``vjp``; accumulated over
    chunks. ``dir_chunk`` bounds the directions per vmapped pass (memory:
    ``dir_chunk · chunk · T · V`` logits-tangent floats, a few of them live;
    8 × 8 blocks = 33 MB in float32 on the protocol GPT, about as fast as
    all 32 directions at once, side by side; ``None`` = all at once).
    Symmetric PSD by construction (``H`` is PSD per token)."""

    def __init__(self, model: CausalLM, params: Params, blocks: torch.Tensor, chunk: int = 8,
                 dir_chunk: int | None = 8):
        self.model, self.params = model, _detached(params)
        self.layout = ParamLayout.of(self.params)
        self.blocks, self.chunk, self.dir_chunk = blocks, chunk, dir_chunk
        real = blocks[:, 1:] != PAD  # (N, T): right-padded blocks' real targets
        self.real = None if bool(real.all()) else real
        self.scale = 1.0 / int(real.sum())
        self.on_chunk = None  # called after each chunk of blocks (the build's progress)
        self.share: tuple[int, int] = (0, 1)  # (rank, world): this process sums its contiguous share of chunks
        self.reduce = None  # then ``reduce(acc)`` sums the shares over processes (an all-reduce)

    def chunk_starts(self) -> range:
        """The first block of each chunk this process sums (all of them unless ``share`` splits them)."""
        starts = range(0, self.blocks.shape[0], self.chunk)
        rank, world = self.share
        base, extra = divmod(len(starts), world)
        first = rank * base + min(rank, extra)
        return starts[first : first + base + (rank < extra)]

    def __call__(self, U: torch.Tensor) -> torch.Tensor:
        """``U (r, p)`` → ``G U (r, p)`` (in the parameters' dtype)."""
        U = U.to(_dtype(self.params))
        tangents = self.layout.unflatten(U)
        acc = torch.zeros_like(U)
        for s in self.chunk_starts():
            real = None if self.real is None else self.real[s : s + self.chunk]
            acc += self._chunk(block_io(self.blocks[s : s + self.chunk])[0], tangents, real)
            if self.on_chunk is not None:
                self.on_chunk()
        if self.reduce is not None:
            acc = self.reduce(acc)
        return acc.mul_(self.scale)

    def _chunk(self, inp: torch.Tensor, tangents: Params, real: torch.Tensor | None = None) -> torch.Tensor:
        """``Σ_{blocks, t} Jᵀ H J u`` over one chunk of inputs ``(c, T)``: ``(r, p)``;
        ``real (c, T)``: the targets that count (padded positions' ``H`` is 0)."""
        model, params = self.model, self.params
        f = lambda p: functional_call(model, p, (inp,))  # noqa: E731  (c, T, V)
        logits, vjp_fn = vjp(f, params)
        probs = torch.softmax(logits.detach(), dim=-1)
        if real is not None:
            probs = probs * real[..., None].to(probs.dtype)  # H = p ⊙ (· − p·) is linear in p: 0 where not real

        def one(u: Params) -> Params:
            pz = probs * jvp(f, (params,), (u,))[1]  # p ⊙ J u, (c, T, V)
            return vjp_fn(pz.sub_(probs * pz.sum(-1, keepdim=True)))[0]  # Jᵀ (p ⊙ (ż − p·ż))

        return self.layout.flatten(vmap(one, chunk_size=self.dir_chunk)(tangents))


def hvp_lm(model: CausalLM, params: Params, blocks: torch.Tensor):
    """Exact Hessian product of the mean token cross-entropy over ``blocks
    (N, T+1)`` (all at once; a reference for small models): a ``Product``
    ``U (r, p) → ∇²L U (r, p)``."""
    params = _detached(params)
    layout = ParamLayout.of(params)
    g = grad(lambda p: lm_loss(model, blocks, p))

    def apply(U: torch.Tensor) -> torch.Tensor:
        one = lambda u: jvp(g, (params,), (u,))[1]  # noqa: E731
        return layout.flatten(vmap(one)(layout.unflatten(U.to(_dtype(params)))))

    return apply


# -- readout ---------------------------------------------------------------------------
def _query_fn(model: CausalLM, x: torch.Tensor, target_mask: torch.Tensor | None):
    """``θ ↦ f(q; θ) (B,)`` for queries ``x (B, T+1)``."""
    return lambda p: sequence_logprob(model, x, p, target_mask)


def jvp_scores(model: CausalLM, params: Params, U: torch.Tensor, x: torch.Tensor,
               target_mask: torch.Tensor | None = None, chunk: int | None = None, head: bool = True,
               impl: Literal["manual", "func"] = "manual", logprobs: bool = False,
               tangent_params: Params | None = None, per_token: bool = False
               ) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Forward-only readout ``τ(q, r) = d/dh f(q; θ + h u_r)|₀``: ``(B, R)``.

    ``U (R, p)`` responses (cast to the parameters' dtype), ``x (B, T+1)``
    token ids, ``target_mask (B, T)`` (1 = the target counts; ``None`` = all).
    No backward pass: forward tangents only, ``chunk`` responses at a time.

    ``head=True`` (default) contracts the tied output layer analytically
    instead of carrying the ``(chunk, B, T, V)`` logits tangent: with
    ``a_t`` the final LayerNorm's output, ``W`` = ``tok_emb.weight`` and
    ``g_t = w_t (e_{y_t} − p_t)`` (``w_t`` the mask weight of target ``t``),
    ``ḟ = Σ_t (g_t W)·ȧ_t + ⟨Ẇ, Σ_t g_t a_tᵀ⟩`` (exact: the derivative of
    ``Σ_t w_t log softmax(a_t Wᵀ)_{y_t}`` along ``(ȧ, Ẇ)``): the trunk
    tangents ``ȧ (chunk, B, T, d)`` plus one ``(R, V·d) @ (V·d, B)`` GEMM.
    The trunk tangents:

    - ``impl="manual"`` (default): ``tangent.trunk_tangents``, hand-derived
      rules for every op (the exact derivative, as ``torch.func.jvp``, up to
      rounding; tested against it at 1e-10 in float64), the primal computed
      once for all ``R`` (its ``a`` also feeds the head) and each chunk of
      directions batched into a few large GEMMs; ``chunk`` default
      ``rules.manual_chunk``: 8 in float32 (the fastest on a 1-thread
      CPU for R = 15 and 450, blocks of 4 × 64 positions), 16 in bfloat16;
      about ``6 · chunk · B · T · 4d`` values live;
    - ``impl="func"``: ``torch.func.jvp`` of ``_trunk`` vmapped over
      ``chunk`` (default 16) responses, one primal pass per chunk (the
      reference).

    ``head=False``: the plain ``torch.func`` jvp of ``sequence_logprob``
    through the logits (the reference; ``impl`` ignored).

    ``logprobs=True`` (``head=True``): also return the primal's token
    log-probabilities ``(B, T)`` (``token_logprobs`` of the same pass: the
    head's logits are computed once for both).

    ``tangent_params`` (``impl="manual"`` only): the same parameters in a
    reduced precision (``bfloat16``) in which the trunk tangents run, ``U``
    cast to it; the primal, f, the token log-probabilities, the head's
    contraction and the per-row sums stay in ``params``' dtype (the primal's
    activations are rounded once to the tangent dtype). About 3x the GEMM
    rate on CPUs with AVX512-BF16; scores to about 1e-2 relative
    (``bench.serving.load_text``'s precision part measures it).

    ``per_token=True`` (``head=True``): also return every target token's own
    score ``τ_t(q, r) = d/dh log p(y_t | y_<t; θ + h u_r)|₀`` as ``(B, T, R)``
    (0 where ``target_mask`` is 0), from the same tangents before their sum
    over positions: the row's score is the mean of its masked ``τ_t``, to
    rounding. No extra tangent; the trained output layer's direct term per
    token costs one ``(R, V, d)`` contraction per position (a tied, trained
    embedding: the protocol GPT), nothing for a frozen one (LoRA).

    Returns ``scores``, then ``token log-probabilities`` if ``logprobs``, then
    the per-token scores if ``per_token`` (a tuple when either is set)."""
    if impl not in ("manual", "func"):
        raise ValueError(f"impl must be 'manual' or 'func', not {impl!r}")
    if head and model.head_ok and impl == "manual" and model.manual_tangents:
        return _jvp_scores(model, params, U, x, target_mask, chunk, head, logprobs, impl, tangent_params, per_token)
    with FORWARD_AD:  # functional_call swaps the module's parameters in place, and jvp's levels are global
        return _jvp_scores(model, params, U, x, target_mask, chunk, head, logprobs, impl, tangent_params, per_token)


def _jvp_scores(model, params, U, x, target_mask, chunk, head, logprobs, impl, tangent_params, per_token):
    """``jvp_scores``' work (the caller holds ``FORWARD_AD`` on the torch.func path)."""
    params = _detached(params)
    layout = ParamLayout.of(params)
    head = head and model.head_ok
    manual = head and impl == "manual" and model.manual_tangents
    if tangent_params is not None and not manual:
        raise ValueError("tangent_params needs head=True, impl='manual' and a model with manual tangents")
    tparams = params if tangent_params is None else _detached(tangent_params)
    tdt = _dtype(tparams)
    chunk = chunk or (manual_chunk(tdt) if manual else 16)
    R = U.shape[0]
    spans = [(s, min(s + chunk, R)) for s in range(0, R, chunk)]
    # U is read a chunk of rows at a time (a dense tensor, or PackedRows dequantised block by block)
    rows = lambda s, e: layout.unflatten(U[s:e].to(tdt))  # noqa: E731
    if not head:
        if logprobs or per_token:
            raise ValueError("logprobs=True and per_token=True need head=True")
        f = _query_fn(model, x, target_mask)
        one = lambda u: jvp(f, (params,), (u,))[1]  # noqa: E731
        return torch.cat([vmap(one)(rows(s, e)) for s, e in spans]).T
    inp, tgt = x[:, :-1], x[:, 1:]
    trunk = lambda p: _trunk(model, p, inp)  # noqa: E731
    primal = model.tangent_primal(params, inp) if manual else None
    a = primal.a if manual else trunk(params)  # (B, T, d)
    W, bias, w_name = model.head(params)  # (V, d), (V,) or None, W's name when trained
    # the head's softmax and its gradient in at least float32 (e_y − p loses everything in bfloat16)
    hd = torch.promote_types(a.dtype, torch.float32)
    a, W = a.to(hd), W.to(hd)
    bias = None if bias is None else bias.to(hd)
    logits = a @ W.T if bias is None else torch.addmm(bias, a.flatten(0, 1), W.T).view(*a.shape[:2], -1)
    lp = torch.log_softmax(logits, dim=-1)  # (B, T, V)
    tok = lp.gather(-1, tgt[..., None])[..., 0]  # (B, T): log p(y_t | y_<t)
    g = lp.exp_().neg_()  # d log p(y_t) / d logits = e_y − p (the scatter below adds e_y)
    g.scatter_add_(-1, tgt[..., None], torch.ones_like(tgt[..., None], dtype=g.dtype))
    m = torch.ones_like(tgt, dtype=g.dtype) if target_mask is None else target_mask.to(g.dtype)
    g.mul_((m / m.sum(-1, keepdim=True).clamp_min(1.0))[..., None])
    gw = g @ W  # (B, T, d): the output gradient seen from a
    B, T = tgt.shape
    direct = torch.zeros(R, B, dtype=g.dtype, device=g.device)
    out = torch.empty_like(direct)
    per = torch.zeros(R, B, T, dtype=g.dtype, device=g.device) if per_token else None
    ga = None if w_name is None else torch.einsum("btv,btd->bvd", g, a).reshape(B, -1).T  # (V·d, B)
    tprimal, tgw = (primal, gw) if tdt == gw.dtype or not manual else (primal.to(tdt), gw.to(tdt))

    def one(u):
        prod = jvp(trunk, (params,), (u,))[1] * gw  # (B, T, d)
        return (prod.sum((-1, -2)), prod.sum(-1)) if per_token else prod.sum((-1, -2))

    def head_term(s: int, e: int, Wd: torch.Tensor) -> None:
        """A trained output layer: its own tangent enters directly, ⟨Ẇ, Σ_t g_t a_tᵀ⟩ (``Wd (rows, V·d)``)."""
        direct[s:e] = Wd @ ga
        if per_token:  # per position: ⟨Ẇ, g_t a_tᵀ⟩ = (g_t Ẇ)·a_t
            per[s:e] += torch.stack([(torch.einsum("btv,vd->btd", g, w.view(W.shape)) * a).sum(-1) for w in Wd])

    dense = torch.is_tensor(U)  # a dense U: the head's term in one GEMM over every row (packed rows: per block)
    if w_name is not None and dense:
        head_term(0, R, layout.unflatten(U.to(tdt))[w_name].reshape(R, -1).to(g.dtype))
    for s, e in spans:
        part = rows(s, e)
        if w_name is not None and not dense:
            head_term(s, e, part[w_name].reshape(e - s, -1).to(g.dtype))
        if manual:
            prod = model.tangent_trunk(tparams, inp, part, tprimal) * tgw  # (chunk, B, T, d)
            out[s:e] = prod.sum((-1, -2), dtype=out.dtype)
            if per_token:
                per[s:e] += prod.sum(-1, dtype=per.dtype)
        else:
            got = vmap(one)(part)
            out[s:e] = got[0] if per_token else got
            if per_token:
                per[s:e] += got[1]
    scores = (out + direct).T  # the same sums with per_token on or off: the answer does not move
    if not per_token:
        return (scores, tok) if logprobs else scores
    # per (R, B, T) holds w_t τ_t with w_t = m_t / n, the mean's weight: τ_t is n times it (0 where m_t = 0)
    per = per.permute(1, 2, 0).mul_(m.sum(-1).clamp_min(1.0)[:, None, None])  # (B, T, R)
    return (scores, tok, per) if logprobs else (scores, per)


def _trunk(model: CausalLM, params: Params, inp: torch.Tensor) -> torch.Tensor:
    """The hidden state the output layer reads, ``(B, T, d)`` for inputs
    ``(B, T)`` (tested against ``head=False``)."""
    return functional_call(model, params, (inp,), {"trunk": True})


def difference_scores(model: CausalLM, params: Params, U: torch.Tensor, x: torch.Tensor,
                      target_mask: torch.Tensor | None = None, h: float = 1e-3,
                      chunk: int = 16) -> torch.Tensor:
    """Two-point difference ``(f(θ+hu) − f(θ−hu)) / 2h`` per response:
    ``(B, R)``. Error ``O(h²)`` (plus rounding ``O(eps/h)``): float64 for
    tight agreement."""
    params = _detached(params)
    layout = ParamLayout.of(params)
    f = _query_fn(model, x, target_mask)

    def one(u: Params) -> torch.Tensor:
        plus = {k: params[k] + h * u[k] for k in params}
        minus = {k: params[k] - h * u[k] for k in params}
        return (f(plus) - f(minus)) / (2 * h)

    return vmap(one, chunk_size=chunk)(layout.unflatten(U.to(_dtype(params)))).T


def query_grads(model: CausalLM, params: Params, x: torch.Tensor,
                target_mask: torch.Tensor | None = None, chunk: int = 16) -> torch.Tensor:
    """``∇θ f(q)`` per query: ``(B, p)`` (a backward pass each; baselines and
    tests). Each query is differentiated on its own row ``x[b:b+1]``."""
    params = _detached(params)
    layout = ParamLayout.of(params)
    mask = torch.ones(x.shape[0], x.shape[1] - 1, dtype=torch.bool, device=x.device) \
        if target_mask is None else target_mask

    def single(p: Params, xb: torch.Tensor, mb: torch.Tensor) -> torch.Tensor:
        return sequence_logprob(model, xb[None], p, mb[None])[0]

    per = vmap(grad(single), in_dims=(None, 0, 0))
    return torch.cat([layout.flatten(per(params, x[s : s + chunk], mask[s : s + chunk]))
                      for s in range(0, x.shape[0], chunk)])


def gradient_scores(model: CausalLM, params: Params, U: torch.Tensor, x: torch.Tensor,
                    target_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reference ``∇f(q) · u_r`` (backward pass): ``(B, R)``. Never serves."""
    g = query_grads(model, params, x, target_mask)
    return g @ U.to(g.dtype).T
