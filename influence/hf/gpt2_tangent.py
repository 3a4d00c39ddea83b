"""Hand-derived, batched forward tangents of a ``transformers`` GPT-2 with
``peft`` LoRA adapters on its ``Conv1D`` layers (the brown-ft case), for the
serving readout: the same numbers as ``torch.func.jvp`` through the model
(tested at 1e-10 in float64) with the primal computed once per query batch
and every layer's tangent a few large GEMMs over all ``K`` directions, as
``influence.gpt.tangent`` does for the protocol GPT (whose attention and
LayerNorm rules it reuses).

Only the LoRA factors move (the base is frozen), so the embeddings carry no
tangent and a layer's tangent is

    ẏ = ẋ W_eff + s [(x Ȧᵀ) Bᵀ + (x Aᵀ) Ḃᵀ]          (W_eff = W + s Aᵀ Bᵀ, Conv1D's (in, out) layout)

with ``x Aᵀ`` shared by all directions: for rank r the extra terms cost
``2 r (in + out)`` flops per position and direction beside ``ẋ W_eff``'s
``2 in·out``. GELU is GPT-2's ``gelu_new`` (tanh) or exact ``gelu``.
``rules_for(model)`` gives the rules when a wrapped model is of this form (else the
readout uses ``torch.func.jvp``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..text.rules import LNPrimal, TrunkPrimal, attn_primal, attn_t, layer_norm, layer_norm_t

ACTS = ("gelu_new", "gelu", "gelu_pytorch_tanh")
_C = math.sqrt(2.0 / math.pi)


def _act(u: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(act(u), act'(u))``: tanh GELU (``gelu_new``) or exact erf GELU."""
    if name == "gelu":
        cdf = torch.erf(u * (1.0 / math.sqrt(2.0))).add_(1.0).mul_(0.5)
        pdf = torch.exp(u.square().mul(-0.5)).mul_(1.0 / math.sqrt(2.0 * math.pi))
        return u * cdf, cdf.addcmul_(u, pdf)
    t = torch.tanh(_C * (u + 0.044715 * u.pow(3)))
    g = 0.5 * u * (1.0 + t)
    dg = 0.5 * (1.0 + t) + 0.5 * u * (1.0 - t.square()) * _C * (1.0 + 3 * 0.044715 * u.square())
    return g, dg


@dataclass
class _Lora:
    """One adapted ``Conv1D``: frozen ``W (in, out)``, ``b (out,)``, the trained factors' names, scale ``s``."""

    W: torch.Tensor
    b: torch.Tensor
    a_name: str | None
    b_name: str | None
    s: float


@dataclass
class _Layer:
    ln1: LNPrimal
    qs: torch.Tensor
    ks: torch.Tensor
    v: torch.Tensor
    A: torch.Tensor
    o: torch.Tensor
    ln2: LNPrimal
    g: torch.Tensor
    dg: torch.Tensor
    xa: dict  # module key -> x Aᵀ (N, r) of each adapted layer (shared by every direction)


def _modules(model) -> tuple[object, list[dict], object] | None:
    lm = model.lm
    if not hasattr(lm, "get_base_model"):
        return None
    base = lm.get_base_model()
    if type(base).__name__ != "GPT2LMHeadModel":
        return None
    cfg = base.config
    if cfg.activation_function not in ACTS or cfg.scale_attn_by_inverse_layer_idx or cfg.reorder_and_upcast_attn \
            or not cfg.scale_attn_weights or getattr(cfg, "add_cross_attention", False):
        return None
    blocks = []
    for blk in base.transformer.h:
        blocks.append({"ln1": blk.ln_1, "c_attn": blk.attn.c_attn, "a_proj": blk.attn.c_proj, "ln2": blk.ln_2,
                       "c_fc": blk.mlp.c_fc, "m_proj": blk.mlp.c_proj})
    return base, blocks, cfg


class GPT2LoraTangents:
    """The manual tangent rules bound to one wrapped GPT-2 + LoRA model."""

    def __init__(self, model):
        base, blocks, cfg = _modules(model)
        self.H, self.eps, self.act = cfg.n_head, cfg.layer_norm_epsilon, cfg.activation_function
        self.wte, self.wpe, self.lnf = base.transformer.wte, base.transformer.wpe, base.transformer.ln_f
        names = {id(p): n for n, p in model.named_parameters()}
        self.blocks = []
        for blk in blocks:
            entry = {"ln1": blk["ln1"], "ln2": blk["ln2"]}
            for key in ("c_attn", "a_proj", "c_fc", "m_proj"):
                entry[key] = self._lora(blk[key], names)
            self.blocks.append(entry)

    @staticmethod
    def _lora(m, names: dict) -> _Lora:
        W = m.base_layer.weight if hasattr(m, "base_layer") else m.weight
        b = m.base_layer.bias if hasattr(m, "base_layer") else m.bias
        if hasattr(m, "lora_A") and "default" in m.lora_A:
            A, Bm = m.lora_A["default"].weight, m.lora_B["default"].weight
            return _Lora(W.detach(), b.detach(), names[id(A)], names[id(Bm)], float(m.scaling["default"]))
        return _Lora(W.detach(), b.detach(), None, None, 0.0)

    def _lin(self, L: _Lora, params: dict, x: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Primal ``y = x W_eff + b`` and ``x Aᵀ`` (None without adapter)."""
        y = torch.addmm(L.b.to(dtype), x, L.W.to(dtype))
        if L.a_name is None:
            return y, None
        xa = x @ params[L.a_name].T  # (N, r)
        return y.addmm_(xa, params[L.b_name].T, alpha=L.s), xa

    @torch.no_grad()
    def primal(self, params: dict, inp: torch.Tensor) -> TrunkPrimal:
        B, T = inp.shape
        # at least float32: LayerNorm statistics and softmax in bfloat16 arithmetic lose too much (the
        # readout rounds these activations once to the tangents' dtype, as for the protocol GPT)
        dtype = torch.promote_types(next(iter(params.values())).dtype, torch.float32)
        params = {k: v.to(dtype) for k, v in params.items()}
        mask = torch.full((T, T), float("-inf"), dtype=dtype, device=inp.device).triu(1)
        pos = torch.arange(T, device=inp.device)
        h = (self.wte.weight[inp] + self.wpe.weight[pos]).to(dtype).view(B * T, -1)
        layers = []
        for e in self.blocks:
            ln1 = layer_norm(h, e["ln1"].weight.to(dtype), e["ln1"].bias.to(dtype), self.eps)
            qkv, xa1 = self._lin(e["c_attn"], params, ln1.y, dtype)
            qs, ks, v, A, o = attn_primal(qkv, B, T, self.H, mask)
            y, xa2 = self._lin(e["a_proj"], params, o, dtype)
            h = h + y
            ln2 = layer_norm(h, e["ln2"].weight.to(dtype), e["ln2"].bias.to(dtype), self.eps)
            u, xa3 = self._lin(e["c_fc"], params, ln2.y, dtype)
            g, dg = _act(u, self.act)
            y, xa4 = self._lin(e["m_proj"], params, g, dtype)
            h = h + y
            layers.append(_Layer(ln1, qs, ks, v, A, o, ln2, g, dg,
                                 {"c_attn": xa1, "a_proj": xa2, "c_fc": xa3, "m_proj": xa4}))
        return TrunkPrimal(B, T, layers, layer_norm(h, self.lnf.weight.to(dtype), self.lnf.bias.to(dtype), self.eps))

    def _lin_t(self, L: _Lora, params: dict, U: dict, x: torch.Tensor, xa, xd: torch.Tensor | None,
               out: torch.Tensor | None = None) -> torch.Tensor | None:
        """``ẏ (N, K, out)`` of an adapted layer (added into ``out`` when given)."""
        N = x.shape[0]
        W = L.W.to(x.dtype)
        if L.a_name is not None:
            Ad, Bd = U[L.a_name], U[L.b_name]  # (K, r, in), (K, out, r)
            K, r, i = Ad.shape
            o = Bd.shape[1]
            Bm = params[L.b_name]  # (out, r)
            xad = (x @ Ad.reshape(K * r, i).T).view(N * K, r)  # x Ȧ_kᵀ
            y = xad @ (L.s * Bm.T)  # (N·K, out): s (x Ȧᵀ) Bᵀ
            y.view(N, K * o).addmm_(xa, Bd.permute(2, 0, 1).reshape(r, K * o), alpha=L.s)  # + s (x Aᵀ) Ḃᵀ
            y = y.view(N, K, o)
            if xd is not None:
                Weff = W.addmm(params[L.a_name].T, Bm.T, alpha=L.s)  # (in, out)
                y.view(N * K, o).addmm_(xd.reshape(N * K, -1), Weff)
        elif xd is not None:
            y = (xd.reshape(-1, xd.shape[-1]) @ W).view(N, xd.shape[1], -1)
        else:
            return out
        return y if out is None else out.add_(y)

    @torch.no_grad()
    def tangents(self, params: dict, inp: torch.Tensor, U: dict, pr: TrunkPrimal) -> torch.Tensor:
        """``ȧ (K, B, T, d)``: the final LayerNorm's output's tangent along the
        ``K`` directions ``U`` (``{name: (K, *shape)}`` over the LoRA factors)."""
        B, T = inp.shape
        K = next(iter(U.values())).shape[0]
        hd = None  # (N, K, d): the residual stream's tangent (zero until the first adapter)
        for e, L in zip(self.blocks, pr.layers):
            xd = None if hd is None else layer_norm_t(hd, L.ln1, e["ln1"].weight.to(hd.dtype))
            yd = self._lin_t(e["c_attn"], params, U, L.ln1.y, L.xa["c_attn"], xd)
            od = None if yd is None else attn_t(yd, L, B, T, self.H)
            y = self._lin_t(e["a_proj"], params, U, L.o, L.xa["a_proj"], od)
            hd = y if hd is None else (hd if y is None else hd.add_(y))
            xd = None if hd is None else layer_norm_t(hd, L.ln2, e["ln2"].weight.to(hd.dtype))
            ud = self._lin_t(e["c_fc"], params, U, L.ln2.y, L.xa["c_fc"], xd)
            gd = None if ud is None else ud.mul_(L.dg[:, None])
            y = self._lin_t(e["m_proj"], params, U, L.g, L.xa["m_proj"], gd)
            hd = y if hd is None else (hd if y is None else hd.add_(y))
        if hd is None:
            d = pr.lnf.y.shape[-1]
            return pr.lnf.y.new_zeros(K, B, T, d)
        ad = layer_norm_t(hd, pr.lnf, self.lnf.weight.to(hd.dtype))
        return ad.view(B, T, K, -1).permute(2, 0, 1, 3)


def rules_for(model) -> GPT2LoraTangents | None:
    """The rules bound to ``model`` when it is a GPT-2 whose trained parameters
    are exactly LoRA factors of its Conv1D layers, else None."""
    if _modules(model) is None:
        return None
    t = GPT2LoraTangents(model)
    lora = {n for e in t.blocks for k in ("c_attn", "a_proj", "c_fc", "m_proj") for n in (e[k].a_name, e[k].b_name)
            if n is not None}
    return t if lora == set(model.trained()) else None
