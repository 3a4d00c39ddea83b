"""``CausalLM``: what simulation, readout, stores and the service need from a
causal language model, whatever its kind (the protocol ``gpt`` of
``influence.gpt.model``, a Hugging Face model of ``influence.hf.model``).

An implementation is an ``nn.Module`` whose parameters (or a subset of them,
the *trained* ones) are the inputs of ``torch.func.functional_call``:

- ``forward(inp (B, T) int64) -> logits (B, T, V)``; ``forward(inp,
  trunk=True) -> (B, T, d)``, the hidden state the output layer reads;
- ``trained() -> {name: tensor}``: the trained parameters, in order (the
  flat layout of every response, ``ParamLayout.of``);
- ``head(params) -> (W (V, d), bias (V,) | None, name | None)``: the output
  layer (logits = trunk @ Wᵀ + bias); ``name`` is W's key in ``params`` when
  it is trained (then its tangent enters the readout directly);
- ``head_ok``: whether logits really are ``trunk @ Wᵀ + bias`` (else the
  readout differentiates through the full logits);
- ``manual_tangents``: whether hand-derived batched tangent rules apply
  (the protocol GPT: ``influence.gpt.tangent``; GPT-2 with LoRA:
  ``influence.hf.gpt2_tangent``), through ``tangent_primal(params, inp)``
  and ``tangent_trunk(params, inp, U, primal) -> ȧ (K, B, T, d)``, or the
  readout uses ``torch.func.jvp`` (any other model);
- ``context``: the longest input, tokens.

``lm_math`` (gradients, Gauss-Newton products, forward-only readout) and
``lm_simulate`` take any ``CausalLM`` with the trained parameters as a dict.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch.func import functional_call
from torch.nn import functional as F


@runtime_checkable
class CausalLM(Protocol):
    manual_tangents: bool
    head_ok: bool

    @property
    def context(self) -> int: ...

    def __call__(self, inp: torch.Tensor, trunk: bool = False) -> torch.Tensor: ...

    def trained(self) -> dict[str, torch.Tensor]: ...

    def head(self, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None, str | None]: ...


def token_logprobs(model: CausalLM, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``x (B, T+1)`` → ``log p(x[:, t+1] | x[:, :t+1])`` as ``(B, T)``."""
    inp, tgt = x[:, :-1], x[:, 1:]
    logits = model(inp) if params is None else functional_call(model, params, (inp,))
    lp = logits.log_softmax(dim=-1)  # (B, T, V)
    return lp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)


def sequence_logprob(
    model: CausalLM,
    x: torch.Tensor,
    params: dict[str, torch.Tensor] | None = None,
    target_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``f(q)``: mean over the targets of ``log p(y_t | y_<t)``, ``(B,)``.
    ``x (B, T+1)``; ``target_mask (B, T)`` bool/float: average only over the
    targets where it is set (prompt/completion; right padding). A row with an
    empty mask gives 0."""
    lp = token_logprobs(model, x, params)
    if target_mask is None:
        return lp.mean(dim=-1)
    m = target_mask.to(lp.dtype)
    return (lp * m).sum(dim=-1) / m.sum(dim=-1).clamp_min(1.0)


PAD = -100  # a training block's padding (F.cross_entropy's ignore_index): no input, no target


def block_io(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs (B, T), targets (B, T))`` of training blocks ``x (B, T+1)``
    that may be right-padded with ``PAD``: padded inputs read token 0 (only
    later, padded positions see them: attention is causal), padded targets
    stay ``PAD`` and count nowhere."""
    return x[:, :-1].clamp_min(0), x[:, 1:]


def lm_loss(model: CausalLM, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Mean token cross-entropy over the ``B × T`` targets of ``x (B, T+1)``
    (over the real ones where blocks are padded with ``PAD``)."""
    inp, tgt = block_io(x)
    logits = model(inp) if params is None else functional_call(model, params, (inp,))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=PAD)


def pad_right(seqs: list[list[int]], pad: int = 0, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x (B, L) int64, target_mask (B, L-1) bool)`` for sequences of
    different lengths (each ≥ 2 tokens, ≤ context + 1); ``L`` = ``length``
    or the longest sequence's."""
    n = max(len(s) for s in seqs) if length is None else length
    x = torch.full((len(seqs), n), pad, dtype=torch.long)
    m = torch.zeros(len(seqs), n - 1, dtype=torch.bool)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        m[i, : len(s) - 1] = True
    return x, m
