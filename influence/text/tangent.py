"""Hand-derived, batched forward tangent of the GPT trunk (``gpt.py``:
embeddings, blocks, ``ln_f``; the tied head is contracted by ``lm_math``).

For ``K`` parameter directions ``u_k`` and a batch of inputs ``inp (B, T)``,
``trunk_tangents`` returns the primal output ``a = ln_f(h_L)`` ``(B, T, d)``
and the directional derivatives ``ȧ_k = d/dε a(θ + ε u_k)|₀`` ``(K, B, T, d)``:
the same numbers as ``torch.func.jvp`` of ``lm_math._trunk`` vmapped over the
directions (up to rounding), but with the primal computed once
(``trunk_primal``, reusable across chunks of directions) and every tangent op
batched over ``K``, so that the linear layers are a few large GEMMs instead
of ``K`` small ones. Tangents live in an ``(N, K, ·)`` layout (``N = B·T``
positions, direction inside), in which both halves of a linear layer's
tangent ``ẏ = ẋ Wᵀ + x Ẇᵀ + ḃ`` are single matrix products without any
permutation of the activations: ``ẋ Wᵀ`` is ``(N·K, in) @ (in, out)`` and
``x Ẇᵀ`` is ``(N, in) @ (in, K·out)`` with the ``K`` weight tangents side by
side (both written into the same ``(N, K·out)`` buffer).

The rules (each the exact derivative of the primal op, so the result is the
exact directional derivative of the trunk, in the parameters' dtype):

- embedding: ``ḣ = Ṫ[x] + Ṗ[0:T]`` (the tangent rows of ``tok_emb`` and ``pos_emb``);
- LayerNorm ``y = n γ + β``, ``n = (h − μ)/σ``, ``σ = sqrt(var + eps)`` (biased
  variance, as ``torch.nn.LayerNorm``): ``ṅ = (ḣ − mean(ḣ) − n·mean(n ⊙ ḣ))/σ``
  and ``ẏ = ṅ γ + n γ̇ + β̇``;
- attention ``S = q kᵀ/√hs + mask``, ``A = softmax(S)``, ``O = A v``:
  ``Ṡ = (q̇ kᵀ + q k̇ᵀ)/√hs``, ``Ȧ = A ⊙ (Ṡ − Σ_j A ⊙ Ṡ)`` (masked entries
  have ``A = 0``, hence ``Ȧ = 0``), ``Ȯ = Ȧ v + A v̇``; per (row, head) these
  are batched matrix products with the ``K`` directions stacked along rows
  (``q̇``, ``Ȧ``) or columns (``k̇``, ``v̇``);
- exact erf GELU: ``ġ = u̇ ⊙ (Φ(u) + u φ(u))``; residual adds.

Every query row is computed on its own rows of every product (causal
attention per row), so a row's tangents do not depend on the other rows of
the batch. float32 and float64 (the parameters' dtype); any device.

Cost per direction and query row of ``T`` positions: twice the trunk's
primal products (``ẋ W`` and ``x Ẇ``; ``Ṡ`` and ``Ȯ`` two products each),
``2 · layers · (2 · 12 T d² + 4 T² d)`` flops = 29.4 MFLOP for the protocol
GPT. Memory: a handful of ``(B·T, K, 4d)`` and ``(B·H, T, K, T)`` buffers
(``K · B · T · 256`` floats each for d = 64; 2 MB at K = 8, B = 4, T = 64).
``CHUNK`` = 8 directions per pass measured fastest on one CPU thread
(R = 15 and 450, B = 4, T = 64; 6–16 within noise, 24–32 markedly slower,
presumably as the working set outgrows the caches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, is_dataclass

import torch
from torch.nn import functional as F

from .gpt import GPT, GPTSpec

Params = dict[str, torch.Tensor]
EPS = 1e-5  # gpt.py's LayerNorm eps
CHUNK = 8  # directions per pass in lm_math.jvp_scores (impl="manual"); see the module docstring


def manual_chunk(dtype: torch.dtype) -> int:
    """Directions per pass for tangents in ``dtype``: ``CHUNK``, doubled for
    2-byte types (bfloat16: the same working set in bytes; 16 measured 1.13x
    faster than 8 on one thread, 1.05x on two, ``bench/text_precision``'s host)."""
    return CHUNK * 2 if dtype.itemsize < 4 else CHUNK


@dataclass
class _LN:
    """A LayerNorm's primal: ``n (N, d)`` normalised input, ``rstd (N, 1)`` = 1/σ, ``y (N, d)`` output."""

    n: torch.Tensor
    rstd: torch.Tensor
    y: torch.Tensor


@dataclass
class _Layer:
    """One block's primal activations needed by its tangent (``N = B·T`` rows)."""

    ln1: _LN
    qs: torch.Tensor  # (B·H, T, hs): q / √hs
    ks: torch.Tensor  # (B·H, T, hs): k / √hs
    v: torch.Tensor  # (B·H, T, hs)
    A: torch.Tensor  # (B·H, T, T): attention probabilities (0 above the diagonal)
    o: torch.Tensor  # (N, d): attention output, the input of proj
    ln2: _LN
    g: torch.Tensor  # (N, 4d): gelu(fc(ln2)), the input of fc2
    dg: torch.Tensor  # (N, 4d): gelu'(fc(ln2)) = Φ + u φ


@dataclass
class TrunkPrimal:
    """The trunk's primal pass over ``inp (B, T)``, kept for its tangents
    (``layers``: one record per block, of this module's ``_Layer`` or another
    architecture's, e.g. ``influence.hf.gpt2_tangent``)."""

    B: int
    T: int
    layers: list[_Layer]
    lnf: _LN

    @property
    def a(self) -> torch.Tensor:
        """The final LayerNorm's output ``(B, T, d)``."""
        return self.lnf.y.view(self.B, self.T, -1)

    def to(self, dtype: torch.dtype) -> TrunkPrimal:
        """The same activations in ``dtype`` (one rounding each): the primal of
        a reduced-precision tangent pass, computed once in full precision."""
        return _cast(self, dtype)


def _cast(obj, dtype: torch.dtype):
    if torch.is_tensor(obj):
        return obj.to(dtype)
    if isinstance(obj, list):
        return [_cast(o, dtype) for o in obj]
    if isinstance(obj, dict):
        return {k: _cast(v, dtype) for k, v in obj.items()}
    if is_dataclass(obj):
        return type(obj)(**{f.name: _cast(getattr(obj, f.name), dtype) for f in fields(obj)})
    return obj


def _spec(spec_or_model: GPTSpec | GPT) -> GPTSpec:
    return spec_or_model.spec if isinstance(spec_or_model, GPT) else spec_or_model


def _ln(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = EPS) -> _LN:
    mu = h.mean(-1, keepdim=True)
    xc = h - mu
    rstd = xc.square().mean(-1, keepdim=True).add_(eps).rsqrt_()
    n = xc.mul_(rstd)
    return _LN(n, rstd, torch.addcmul(b, n, w))


def _gelu_grad(u: torch.Tensor) -> torch.Tensor:
    """``d gelu(u)/du = Φ(u) + u φ(u)`` (exact erf GELU)."""
    cdf = torch.erf(u * (1.0 / math.sqrt(2.0))).add_(1.0).mul_(0.5)
    pdf = torch.exp(u.square().mul_(-0.5)).mul_(1.0 / math.sqrt(2.0 * math.pi))
    return cdf.addcmul_(u, pdf)


@torch.no_grad()
def trunk_primal(params: Params, spec_or_model: GPTSpec | GPT, inp: torch.Tensor) -> TrunkPrimal:
    """The primal pass of the trunk over ``inp (B, T)`` int64, keeping what the tangent needs."""
    spec = _spec(spec_or_model)
    B, T = inp.shape
    d, H = spec.d, spec.heads
    N = B * T
    dtype = params["tok_emb.weight"].dtype
    mask = torch.full((T, T), float("-inf"), dtype=dtype, device=inp.device).triu(1)
    h = F.embedding(inp.reshape(-1), params["tok_emb.weight"]).view(B, T, d).add_(params["pos_emb.weight"][:T])
    h = h.view(N, d)
    layers = []
    for l in range(spec.layers):
        P = lambda name, l=l: params[f"blocks.{l}.{name}"]  # noqa: E731
        ln1 = _ln(h, P("ln1.weight"), P("ln1.bias"))
        qkv = torch.addmm(P("qkv.bias"), ln1.y, P("qkv.weight").T)  # (N, 3d)
        qs, ks, v, A, o = attn_primal(qkv, B, T, H, mask)
        h = h + torch.addmm(P("proj.bias"), o, P("proj.weight").T)
        ln2 = _ln(h, P("ln2.weight"), P("ln2.bias"))
        u = torch.addmm(P("fc.bias"), ln2.y, P("fc.weight").T)  # (N, 4d)
        g = F.gelu(u)
        h = h + torch.addmm(P("fc2.bias"), g, P("fc2.weight").T)
        layers.append(_Layer(ln1, qs, ks, v, A, o, ln2, g, _gelu_grad(u)))
    return TrunkPrimal(B, T, layers, _ln(h, params["ln_f.weight"], params["ln_f.bias"]))


def _ln_t(hd: torch.Tensor, ln: _LN, w: torch.Tensor, wd: torch.Tensor | None = None,
          bd: torch.Tensor | None = None) -> torch.Tensor:
    """LayerNorm tangent: ``hd (N, K, d)``, ``wd``/``bd (K, d)`` (None: frozen) → ``ẏ (N, K, d)``."""
    n = ln.n[:, None]  # (N, 1, d)
    m1 = hd.mean(-1, keepdim=True)  # (N, K, 1)
    m2 = (hd * n).mean(-1, keepdim=True)  # (N, K, 1): mean(n ⊙ ḣ)
    out = hd - m1
    out.addcmul_(n, m2, value=-1.0)  # σ ṅ
    out.mul_(ln.rstd[:, None] * w)  # ṅ γ
    if wd is not None:
        out.addcmul_(n, wd)  # + n γ̇
    return out if bd is None else out.add_(bd)  # + β̇


def _lin_t(x: torch.Tensor, xd: torch.Tensor, W: torch.Tensor, Wd: torch.Tensor, bd: torch.Tensor,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """Linear tangent ``ẏ = ẋ Wᵀ + x Ẇᵀ + ḃ``: ``x (N, in)``, ``xd (N, K, in)``,
    ``W (out, in)``, ``Wd (K, out, in)``, ``bd (K, out)`` → ``(N, K, out)``;
    ``out`` given: added to it in place (a residual add) and returned."""
    N, K, i = xd.shape
    o = W.shape[0]
    WdT = Wd.reshape(K * o, i).T  # (in, K·out): the K weight tangents side by side
    if out is None:
        y = torch.addmm(bd.reshape(K * o), x, WdT)  # (N, K·out): ḃ + x Ẇ_kᵀ
    else:
        y = out.view(N, K * o).addmm_(x, WdT)
        y.view(N, K, o).add_(bd)
    y.view(N * K, o).addmm_(xd.reshape(N * K, i), W.T)  # += ẋ Wᵀ, one GEMM over all N·K rows
    return y.view(N, K, o)


def attn_t(yd: torch.Tensor, L, B: int, T: int, H: int) -> torch.Tensor:
    """Causal attention's tangent: ``yd (N, K, 3d)`` the tangent of the fused
    q, k, v projection (q, k, v consecutive ``d``-column chunks, heads
    consecutive ``hs``-column chunks of each); ``L`` the layer's primal
    (``qs``, ``ks`` scaled by 1/√hs, ``v``, ``A``) → ``ȯ (N, K, d)``."""
    N, K, d3 = yd.shape
    d = d3 // 3
    hs, BH = d // H, B * H
    yd = yd.view(B, T, K, 3, H, hs)
    qd = yd[:, :, :, 0].permute(0, 3, 1, 2, 4).reshape(BH, T * K, hs)  # rows (i, k)
    kd = yd[:, :, :, 1].permute(0, 3, 2, 1, 4).reshape(BH, K * T, hs)  # rows (k, j)
    vd = yd[:, :, :, 2].permute(0, 3, 1, 2, 4).reshape(BH, T, K * hs)  # (j, (k, c))
    Sd = torch.bmm(qd, L.ks.transpose(1, 2))  # (BH, T·K, T): q̇ kᵀ/√hs at [i, k, j]
    Sd.view(BH, T, K * T).baddbmm_(L.qs, kd.transpose(1, 2))  # += q k̇ᵀ/√hs at [i, (k, j)]
    A4 = L.A[:, :, None, :]  # (BH, T, 1, T)
    Ad = Sd.view(BH, T, K, T).mul_(A4)  # A ⊙ Ṡ
    Ad.addcmul_(A4, Ad.sum(-1, keepdim=True), value=-1.0)  # Ȧ = A ⊙ Ṡ − A Σ_j A ⊙ Ṡ
    Od = torch.bmm(Ad.view(BH, T * K, T), L.v)  # (BH, T·K, hs): Ȧ v at [i, k, c]
    Od.view(BH, T, K * hs).baddbmm_(L.A, vd)  # += A v̇
    return Od.view(B, H, T, K, hs).permute(0, 2, 3, 1, 4).reshape(N, K, d)


def attn_primal(qkv: torch.Tensor, B: int, T: int, H: int, mask: torch.Tensor):
    """``(qs, ks, v, A, o)`` of causal attention from the fused projection
    ``qkv (N, 3d)``: ``qs``/``ks`` = q/√hs, k/√hs ``(B·H, T, hs)``, ``A``
    the probabilities ``(B·H, T, T)``, ``o (N, d)`` the heads' output."""
    d = qkv.shape[1] // 3
    hs = d // H
    scale = 1.0 / math.sqrt(hs)
    heads = qkv.view(B, T, 3, H, hs).permute(2, 0, 3, 1, 4)  # (3, B, H, T, hs)
    q, k, v = (heads[i].reshape(B * H, T, hs) for i in range(3))
    qs, ks = q * scale, k * scale
    A = torch.baddbmm(mask, qs, k.transpose(1, 2)).softmax(dim=-1)  # (B·H, T, T)
    o = torch.bmm(A, v).view(B, H, T, hs).permute(0, 2, 1, 3).reshape(B * T, d)
    return qs, ks, v, A, o


@torch.no_grad()
def trunk_tangents(params: Params, spec_or_model: GPTSpec | GPT, inp: torch.Tensor,
                   U: torch.Tensor | Params, primal: TrunkPrimal | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a (B, T, d), ȧ (K, B, T, d))``: the trunk's output on ``inp (B, T)``
    int64 and its directional derivatives along the ``K`` directions ``U``,
    flat ``(K, p)`` in ``spec.layout()`` order or unflattened ``{name: (K,
    *shape)}`` (in the parameters' dtype). ``primal``: a ``trunk_primal`` of
    the same ``params`` and ``inp`` to reuse (computed here otherwise).
    ``ȧ`` is a permuted view of an ``(B, T, K, d)`` buffer."""
    spec = _spec(spec_or_model)
    if isinstance(U, torch.Tensor):
        U = spec.layout().unflatten(U)
    pr = trunk_primal(params, spec, inp) if primal is None else primal
    B, T = inp.shape
    d, H = spec.d, spec.heads
    N = B * T
    tok = U["tok_emb.weight"]
    K = tok.shape[0]
    # embedding: ḣ[b, t, k] = Ṫ_k[x_bt] + Ṗ_k[t], gathered straight into the (N, K, d) layout
    hd = tok.transpose(0, 1).index_select(0, inp.reshape(-1)).view(B, T, K, d)
    hd += U["pos_emb.weight"][:, :T].transpose(0, 1)
    hd = hd.view(N, K, d)
    for l, L in enumerate(pr.layers):
        P = lambda name, l=l: params[f"blocks.{l}.{name}"]  # noqa: E731
        D = lambda name, l=l: U[f"blocks.{l}.{name}"]  # noqa: E731
        # attention
        xd = _ln_t(hd, L.ln1, P("ln1.weight"), D("ln1.weight"), D("ln1.bias"))
        yd = _lin_t(L.ln1.y, xd, P("qkv.weight"), D("qkv.weight"), D("qkv.bias"))
        od = attn_t(yd, L, B, T, H)
        _lin_t(L.o, od, P("proj.weight"), D("proj.weight"), D("proj.bias"), out=hd)
        # MLP
        xd = _ln_t(hd, L.ln2, P("ln2.weight"), D("ln2.weight"), D("ln2.bias"))
        ud = _lin_t(L.ln2.y, xd, P("fc.weight"), D("fc.weight"), D("fc.bias")).mul_(L.dg[:, None])
        _lin_t(L.g, ud, P("fc2.weight"), D("fc2.weight"), D("fc2.bias"), out=hd)
    ad = _ln_t(hd, pr.lnf, params["ln_f.weight"], U["ln_f.weight"], U["ln_f.bias"])
    return pr.a, ad.view(B, T, K, d).permute(2, 0, 1, 3)
