"""``CausalLM``: what simulation, readout, stores and the service need from a
causal language model, whatever its kind (the protocol ``gpt`` of
``influence.text.gpt``, a Hugging Face model of ``influence.hf.model``).

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
  (the protocol GPT: ``influence.text.tangent``; GPT-2 with LoRA:
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


@runtime_checkable
class CausalLM(Protocol):
    manual_tangents: bool
    head_ok: bool

    @property
    def context(self) -> int: ...

    def __call__(self, inp: torch.Tensor, trunk: bool = False) -> torch.Tensor: ...

    def trained(self) -> dict[str, torch.Tensor]: ...

    def head(self, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None, str | None]: ...
