"""The protocol's GPT (``docs/lm-protocol.md``): V = 2000, d = 64, 2 layers,
4 heads of 16, context L = 64; 232,192 parameters.

    h = tok_emb[x] + pos_emb[0:T]
    per layer:  h = h + proj(attn(ln1(h)));  h = h + fc2(gelu(fc(ln2(h))))
    logits = ln_f(h) @ tok_embᵀ            (tied head, no output bias)

``attn``: ``qkv = Linear(d, 3d)``; q, k, v are consecutive d-column chunks of
its output and the heads consecutive 16-column chunks of each;
``softmax(q kᵀ / sqrt(16) + causal mask) v``; exact erf GELU; LayerNorm eps
1e-5 with affine parameters; no dropout.

Written for ``torch.func``: plain matmuls and an additive causal-mask buffer
(no ``scaled_dot_product_attention``, no in-place ops on parameters, no
data-dependent Python control flow), so ``functional_call``, ``jvp``,
``vjp`` and ``vmap`` work, in float32 and float64. The mask is a buffer of
``-inf`` above the diagonal (``(L, L)``), not a parameter.

Initialisation (``GPTSpec.build(seed)``): ``torch.manual_seed(seed)``; modules
constructed in the order tok_emb, pos_emb, [per layer: ln1, qkv, proj, ln2,
fc, fc2], ln_f with PyTorch's default initialisation; then tok_emb.weight and
pos_emb.weight (in that order) redrawn from N(0, 0.02²). Parameter names:
``tok_emb.weight``, ``pos_emb.weight``, ``blocks.{l}.{ln1,qkv,proj,ln2,fc,fc2}.*``,
``ln_f.*``.

Scores: ``sequence_logprob(model, x)`` for ``x (B, T+1)`` is the mean over the
``T`` targets ``x[:, 1:]`` of ``log p(x_t | x_<t)`` (natural log), ``(B,)``.
``target_mask (B, T)`` restricts the mean to the masked targets (prompt /
completion, or padding: right-padded positions are excluded by the mask and,
attention being causal, cannot change any real position).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from ..layout import ParamLayout
from .tangent import trunk_primal, trunk_tangents


class GPTSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["gpt"] = "gpt"
    vocab: int = Field(2000, ge=2)
    d: int = Field(64, ge=1)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    context: int = Field(64, ge=1)

    def build(self, seed: int = 0, dtype: torch.dtype = torch.float32) -> GPT:
        """Initialised in float32 (the protocol), then cast to ``dtype``."""
        return GPT(self, seed=seed).to(dtype)

    def layout(self):
        """``ParamLayout`` of ``GPT.named_parameters()`` (built on the meta device: no memory, no RNG use)."""
        with torch.device("meta"):
            model = GPT(self, seed=None)
        return ParamLayout.of(dict(model.named_parameters()))

    def n_params(self) -> int:
        d, v, L = self.d, self.vocab, self.context
        per_layer = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
        return v * d + L * d + self.layers * per_layer + 2 * d


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d, eps=1e-5)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d, eps=1e-5)
        self.fc = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def attn(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``h (B, T, d)``, ``mask (T, T)`` additive → ``(B, T, d)``."""
        B, T, d = h.shape
        hs = d // self.heads
        q, k, v = self.qkv(h).split(d, dim=-1)  # each (B, T, d)
        q = q.reshape(B, T, self.heads, hs).transpose(1, 2)  # (B, H, T, hs)
        k = k.reshape(B, T, self.heads, hs).transpose(1, 2)
        v = v.reshape(B, T, self.heads, hs).transpose(1, 2)
        att = q @ k.transpose(-1, -2) / math.sqrt(hs) + mask  # (B, H, T, T)
        y = att.softmax(dim=-1) @ v  # (B, H, T, hs)
        return y.transpose(1, 2).reshape(B, T, d)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = h + self.proj(self.attn(self.ln1(h), mask))
        return h + self.fc2(F.gelu(self.fc(self.ln2(h))))


class GPT(nn.Module):
    def __init__(self, spec: GPTSpec, seed: int | None = 0):
        super().__init__()
        if spec.d % spec.heads:
            raise ValueError(f"d={spec.d} is not a multiple of heads={spec.heads}")
        self.spec = spec
        if seed is not None:  # None: shapes only (meta device), the global RNG untouched
            torch.manual_seed(seed)
        self.tok_emb = nn.Embedding(spec.vocab, spec.d)
        self.pos_emb = nn.Embedding(spec.context, spec.d)
        self.blocks = nn.ModuleList(Block(spec.d, spec.heads) for _ in range(spec.layers))
        self.ln_f = nn.LayerNorm(spec.d, eps=1e-5)
        with torch.no_grad():
            self.tok_emb.weight.normal_(0.0, 0.02)
            self.pos_emb.weight.normal_(0.0, 0.02)
        L = spec.context
        causal = torch.full((L, L), float("-inf")).triu(1)
        self.register_buffer("mask", causal, persistent=False)

    # -- the CausalLM interface (influence.text.causal) --
    manual_tangents = True  # influence.gpt.tangent's hand-derived rules apply
    head_ok = True

    @property
    def context(self) -> int:
        return self.spec.context

    def forward(self, x: torch.Tensor, trunk: bool = False) -> torch.Tensor:
        """``x (B, T) int64``, ``T <= context`` → logits ``(B, T, V)``;
        ``trunk=True``: the final LayerNorm's output ``(B, T, d)``."""
        T = x.shape[1]
        h = self.tok_emb(x) + self.pos_emb.weight[:T]
        mask = self.mask[:T, :T].to(h.dtype)
        for blk in self.blocks:
            h = blk(h, mask)
        a = self.ln_f(h)
        return a if trunk else a @ self.tok_emb.weight.T

    def trained(self) -> dict[str, torch.Tensor]:
        """Every parameter is trained."""
        return {k: v.detach() for k, v in self.named_parameters()}

    def tangent_primal(self, params: dict[str, torch.Tensor], inp: torch.Tensor):
        """The primal pass the hand-derived tangents reuse (``tangent.trunk_primal``)."""
        return trunk_primal(params, self.spec, inp)

    def tangent_trunk(self, params: dict[str, torch.Tensor], inp: torch.Tensor, U: dict, primal) -> torch.Tensor:
        """``ȧ (K, B, T, d)`` along the directions ``U`` (``tangent.trunk_tangents``)."""
        return trunk_tangents(params, self.spec, inp, U, primal)[1]

    def head(self, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, None, str]:
        """The tied output layer: ``(tok_emb.weight (V, d), no bias, its name)``."""
        return params["tok_emb.weight"], None, "tok_emb.weight"
