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

The rules (embedding: ``ḣ = Ṫ[x] + Ṗ[0:T]``; LayerNorm, attention, GELU and
linear layers: ``rules.py``; residual adds) are each the exact derivative of
the primal op, so the result is the exact directional derivative of the
trunk, in the parameters' dtype.

Every query row is computed on its own rows of every product (causal
attention per row), so a row's tangents do not depend on the other rows of
the batch. float32 and float64 (the parameters' dtype); any device.

Cost per direction and query row of ``T`` positions: twice the trunk's
primal products (``ẋ W`` and ``x Ẇ``; ``Ṡ`` and ``Ȯ`` two products each),
``2 · layers · (2 · 12 T d² + 4 T² d)`` flops = 29.4 MFLOP for the protocol
GPT. Memory: a handful of ``(B·T, K, 4d)`` and ``(B·H, T, K, T)`` buffers
(``K · B · T · 256`` floats each for d = 64; 2 MB at K = 8, B = 4, T = 64).
(``rules.CHUNK`` directions per pass.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..text.rules import LNPrimal, TrunkPrimal, attn_primal, attn_t, gelu_grad, layer_norm, layer_norm_t, linear_t

Params = dict[str, torch.Tensor]


@dataclass
class _Layer:
    """One block's primal activations needed by its tangent (``N = B·T`` rows)."""

    ln1: LNPrimal
    qs: torch.Tensor  # (B·H, T, hs): q / √hs
    ks: torch.Tensor  # (B·H, T, hs): k / √hs
    v: torch.Tensor  # (B·H, T, hs)
    A: torch.Tensor  # (B·H, T, T): attention probabilities (0 above the diagonal)
    o: torch.Tensor  # (N, d): attention output, the input of proj
    ln2: LNPrimal
    g: torch.Tensor  # (N, 4d): gelu(fc(ln2)), the input of fc2
    dg: torch.Tensor  # (N, 4d): gelu'(fc(ln2)) = Φ + u φ


def _spec(spec_or_model):
    """A ``GPTSpec`` from itself or a ``GPT`` (duck-typed: this module does not import ``gpt.py``, which imports it)."""
    return getattr(spec_or_model, "spec", spec_or_model)


@torch.no_grad()
def trunk_primal(params: Params, spec_or_model, inp: torch.Tensor) -> TrunkPrimal:
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
        ln1 = layer_norm(h, P("ln1.weight"), P("ln1.bias"))
        qkv = torch.addmm(P("qkv.bias"), ln1.y, P("qkv.weight").T)  # (N, 3d)
        qs, ks, v, A, o = attn_primal(qkv, B, T, H, mask)
        h = h + torch.addmm(P("proj.bias"), o, P("proj.weight").T)
        ln2 = layer_norm(h, P("ln2.weight"), P("ln2.bias"))
        u = torch.addmm(P("fc.bias"), ln2.y, P("fc.weight").T)  # (N, 4d)
        g = F.gelu(u)
        h = h + torch.addmm(P("fc2.bias"), g, P("fc2.weight").T)
        layers.append(_Layer(ln1, qs, ks, v, A, o, ln2, g, gelu_grad(u)))
    return TrunkPrimal(B, T, layers, layer_norm(h, params["ln_f.weight"], params["ln_f.bias"]))


@torch.no_grad()
def trunk_tangents(params: Params, spec_or_model, inp: torch.Tensor,
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
        xd = layer_norm_t(hd, L.ln1, P("ln1.weight"), D("ln1.weight"), D("ln1.bias"))
        yd = linear_t(L.ln1.y, xd, P("qkv.weight"), D("qkv.weight"), D("qkv.bias"))
        od = attn_t(yd, L, B, T, H)
        linear_t(L.o, od, P("proj.weight"), D("proj.weight"), D("proj.bias"), out=hd)
        # MLP
        xd = layer_norm_t(hd, L.ln2, P("ln2.weight"), D("ln2.weight"), D("ln2.bias"))
        ud = linear_t(L.ln2.y, xd, P("fc.weight"), D("fc.weight"), D("fc.bias")).mul_(L.dg[:, None])
        linear_t(L.g, ud, P("fc2.weight"), D("fc2.weight"), D("fc2.bias"), out=hd)
    ad = layer_norm_t(hd, pr.lnf, params["ln_f.weight"], U["ln_f.weight"], U["ln_f.bias"])
    return pr.a, ad.view(B, T, K, d).permute(2, 0, 1, 3)
