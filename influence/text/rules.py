"""The exact forward-tangent rules of a causal transformer's ops, shared by
every hand-derived trunk tangent (the protocol GPT's ``tangent.py``, GPT-2 +
LoRA's ``influence.hf.gpt2_tangent``).

Tangents live in an ``(N, K, ·)`` layout (``N = B·T`` positions, ``K``
directions inside), in which both halves of a linear layer's tangent
``ẏ = ẋ Wᵀ + x Ẇᵀ + ḃ`` are single matrix products without any permutation
of the activations. Each rule is the exact derivative of its primal op:

- LayerNorm ``y = n γ + β``, ``n = (h − μ)/σ``, ``σ = sqrt(var + eps)`` (biased
  variance, as ``torch.nn.LayerNorm``): ``ṅ = (ḣ − mean(ḣ) − n·mean(n ⊙ ḣ))/σ``
  and ``ẏ = ṅ γ + n γ̇ + β̇``;
- attention ``S = q kᵀ/√hs + mask``, ``A = softmax(S)``, ``O = A v``:
  ``Ṡ = (q̇ kᵀ + q k̇ᵀ)/√hs``, ``Ȧ = A ⊙ (Ṡ − Σ_j A ⊙ Ṡ)`` (masked entries
  have ``A = 0``, hence ``Ȧ = 0``), ``Ȯ = Ȧ v + A v̇``, batched matrix
  products per (row, head) with the ``K`` directions stacked along rows
  (``q̇``, ``Ȧ``) or columns (``k̇``, ``v̇``);
- exact erf GELU: ``ġ = u̇ ⊙ (Φ(u) + u φ(u))``.

``CHUNK`` = 8 directions per pass measured fastest on one CPU thread
(R = 15 and 450, B = 4, T = 64; 6–16 within noise, 24–32 markedly slower,
presumably as the working set outgrows the caches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, is_dataclass

import torch

EPS = 1e-5  # the protocol GPT's LayerNorm eps
CHUNK = 8  # directions per pass in lm_math.jvp_scores (impl="manual"); see the module docstring


def manual_chunk(dtype: torch.dtype) -> int:
    """Directions per pass for tangents in ``dtype``: ``CHUNK``, doubled for
    2-byte types (bfloat16: the same working set in bytes; 16 measured 1.13x
    faster than 8 on one thread, 1.05x on two, ``bench/text_precision``'s host)."""
    return CHUNK * 2 if dtype.itemsize < 4 else CHUNK


@dataclass
class LNPrimal:
    """A LayerNorm's primal: ``n (N, d)`` normalised input, ``rstd (N, 1)`` = 1/σ, ``y (N, d)`` output."""

    n: torch.Tensor
    rstd: torch.Tensor
    y: torch.Tensor


@dataclass
class TrunkPrimal:
    """The trunk's primal pass over ``inp (B, T)``, kept for its tangents
    (``layers``: one record per block, of the architecture's own layer record,
    e.g. ``tangent._Layer`` or ``influence.hf.gpt2_tangent._Layer``)."""

    B: int
    T: int
    layers: list
    lnf: LNPrimal

    @property
    def a(self) -> torch.Tensor:
        """The final LayerNorm's output ``(B, T, d)``."""
        return self.lnf.y.view(self.B, self.T, -1)

    def to(self, dtype: torch.dtype) -> TrunkPrimal:
        """The same activations in ``dtype`` (one rounding each): the primal of
        a reduced-precision tangent pass, computed once in full precision."""
        return cast(self, dtype)


def cast(obj, dtype: torch.dtype):
    if torch.is_tensor(obj):
        return obj.to(dtype)
    if isinstance(obj, list):
        return [cast(o, dtype) for o in obj]
    if isinstance(obj, dict):
        return {k: cast(v, dtype) for k, v in obj.items()}
    if is_dataclass(obj):
        return type(obj)(**{f.name: cast(getattr(obj, f.name), dtype) for f in fields(obj)})
    return obj


def layer_norm(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = EPS) -> LNPrimal:
    mu = h.mean(-1, keepdim=True)
    xc = h - mu
    rstd = xc.square().mean(-1, keepdim=True).add_(eps).rsqrt_()
    n = xc.mul_(rstd)
    return LNPrimal(n, rstd, torch.addcmul(b, n, w))


def gelu_grad(u: torch.Tensor) -> torch.Tensor:
    """``d gelu(u)/du = Φ(u) + u φ(u)`` (exact erf GELU)."""
    cdf = torch.erf(u * (1.0 / math.sqrt(2.0))).add_(1.0).mul_(0.5)
    pdf = torch.exp(u.square().mul_(-0.5)).mul_(1.0 / math.sqrt(2.0 * math.pi))
    return cdf.addcmul_(u, pdf)


def layer_norm_t(hd: torch.Tensor, ln: LNPrimal, w: torch.Tensor, wd: torch.Tensor | None = None,
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


def linear_t(x: torch.Tensor, xd: torch.Tensor, W: torch.Tensor, Wd: torch.Tensor, bd: torch.Tensor,
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
