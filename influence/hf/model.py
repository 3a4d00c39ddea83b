"""``HFCausalLM``: a ``transformers`` causal LM (optionally with ``peft`` LoRA
adapters) behind the ``CausalLM`` interface of ``influence.text.causal``.

``forward(inp (B, T) int64)`` returns logits ``(B, T, V)`` and
``forward(inp, trunk=True)`` the decoder's last hidden state ``(B, T, d)``
(after its final norm: what the output layer reads); both run under
``torch.func.functional_call`` with any subset of the parameters given, so
the trained parameters alone are the inputs of every gradient, curvature
product and forward tangent. No attention mask is passed: queries are
right-padded and attention is causal, so padding never changes a real
position (the text LM's convention).

What works with forward-mode AD (``torch.func.jvp`` / ``vmap``): eager
attention (``attn_implementation="eager"``, set at load); GPT-2 (``Conv1D``),
Llama, Qwen2 and GPT-NeoX (Pythia) blocks use plain matmuls, softmax, norms
and rotary embeddings, all of which have forward-mode rules. SDPA and flash
attention kernels have no forward-mode rule on every backend, and dropout
must be 0 (the model is kept in eval mode). Llama-family RMSNorm computes in
float32 internally, so float64 checks on those models agree to about 1e-7,
not 1e-12.

Output layer: the fast readout contracts the output layer analytically
(``head()``: its weight ``(V, d)`` and, when trained, its name); a model
whose logits are not ``hidden @ Wᵀ`` (a logit scale or soft-capping) is
detected at build (``head_ok``) and read out through the full logits instead.
"""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

from .spec import HFSpec, LoraSpec
from .targets import lora_targets

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


def _conv1d_targets(base: nn.Module, targets: list[str]) -> bool:
    """GPT-2's ``Conv1D`` stores weights (in, out): LoRA needs ``fan_in_fan_out``."""
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) for n, m in base.named_modules() if n.split(".")[-1] in targets)


def add_lora(base: nn.Module, lora: LoraSpec, seed: int) -> nn.Module:
    """``peft`` LoRA adapters on ``base`` (dropout 0, no bias training, base
    frozen): ``torch.manual_seed(seed)`` right before wrapping, so A is seeded
    and B starts at zero (ft-protocol)."""
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(base, lora.target_modules)
    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=0.0, bias="none", target_modules=targets,
                     fan_in_fan_out=_conv1d_targets(base, targets))
    torch.manual_seed(seed)
    lm = get_peft_model(base, cfg)
    lm.fa_lora_targets = targets  # what with_layout records in the spec
    return lm


class HFCausalLM(nn.Module):
    """The wrapped model ``lm`` (a ``PreTrainedModel`` or a ``PeftModel``)."""

    manual_tangents = False  # set by wrap(): hand-derived rules for GPT-2 + LoRA (gpt2_tangent), else torch.func

    def __init__(self, lm: nn.Module, context: int):
        super().__init__()
        self.lm = lm
        self.context = context
        base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
        self._decoder = getattr(base, base.base_model_prefix)
        self._head = base.get_output_embeddings()
        self._head_name: str | None = None  # the output weight's name among named_parameters (head())
        self.head_ok = True

    def forward(self, inp: torch.Tensor, trunk: bool = False) -> torch.Tensor:
        if trunk:
            return self._decoder(input_ids=inp, use_cache=False).last_hidden_state
        return self.lm(input_ids=inp, use_cache=False).logits

    def tangent_primal(self, params: dict[str, torch.Tensor], inp: torch.Tensor):
        return self._rules.primal(params, inp)

    def tangent_trunk(self, params: dict[str, torch.Tensor], inp: torch.Tensor, U: dict, primal) -> torch.Tensor:
        return self._rules.tangents(params, inp, U, primal)

    def use_manual_tangents(self, on: bool = True) -> bool:
        """Switch the hand-derived GPT-2 + LoRA rules on (when they apply) or off; returns the state."""
        from .gpt2_tangent import rules_for

        self._rules = rules_for(self) if on else None
        self.manual_tangents = self._rules is not None
        return self.manual_tangents

    def trained(self) -> dict[str, torch.Tensor]:
        """The trained parameters (``requires_grad``), detached, in registration order."""
        return {k: v.detach() for k, v in self.named_parameters() if v.requires_grad}

    def head(self, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None, str | None]:
        """``(W (V, d), bias (V,) or None, name of W among params or None)``."""
        w = self._head.weight
        if self._head_name is None:  # found once: the readout calls this for every batch
            self._head_name = next((k for k, v in self.named_parameters() if v is w), "")
        name = self._head_name
        if name and name in params:
            return params[name], self._head.bias, name
        return w.detach(), self._head.bias, None

    @torch.no_grad()
    def check_head(self) -> bool:
        """Whether logits equal ``trunk @ Wᵀ (+ b)`` on a probe input (sets ``head_ok``)."""
        x = torch.arange(min(8, self.context), device=self._head.weight.device)[None] % self._head.weight.shape[0]
        W, b, _ = self.head({})
        a = self(x, trunk=True)
        want = a @ W.T + (0 if b is None else b)
        self.head_ok = bool(torch.allclose(self(x), want, rtol=1e-4, atol=1e-4))
        return self.head_ok


def mark_trained(model: nn.Module, spec: HFSpec) -> None:
    """``requires_grad`` for ``spec.trained``: all, the LoRA adapters (peft set them), or name patterns."""
    if spec.trained == "lora":
        return
    hits = 0
    for n, p in model.named_parameters():
        on = spec.trained == "all" or any(fnmatch.fnmatchcase(n, pat) for pat in spec.patterns)
        p.requires_grad_(on)
        hits += on
    if hits == 0:
        raise ValueError(f"patterns: {spec.patterns} match no parameter of this model")


def context_of(config) -> int:
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        v = getattr(config, key, None)
        if isinstance(v, int) and v > 0:
            return v
    raise ValueError("the model config names no context length (n_positions / max_position_embeddings)")


def wrap(base: nn.Module, spec: HFSpec, seed: int = 0) -> HFCausalLM:
    """``base`` with the trained subspace of ``spec`` set up, wrapped; eval
    mode, dropout off, in ``spec.dtype``. ``seed`` seeds the LoRA A matrices."""
    base.eval()
    if spec.trained == "lora":
        for p in base.parameters():
            p.requires_grad_(False)
        lm = add_lora(base, spec.lora, seed)
    else:
        lm = base
    model = HFCausalLM(lm.to(DTYPES[spec.dtype]), context_of(base.config))
    model.eval()
    mark_trained(model.lm, spec)  # patterns name the base's parameters (transformer.h.3.*)
    model.check_head()
    model.use_manual_tangents()
    return model


def with_layout(spec: HFSpec, model: HFCausalLM) -> HFSpec:
    """``spec`` with ``names`` / ``shapes`` of the model's trained parameters filled in."""
    tr = model.trained()
    if not tr:
        raise ValueError("no trained parameter: check model.trained / patterns")
    update = {"names": list(tr), "shapes": [list(v.shape) for v in tr.values()]}
    targets = getattr(model.lm, "fa_lora_targets", None)
    if spec.trained == "lora" and targets is not None:
        update["lora"] = spec.lora.model_copy(update={"target_modules": list(targets)})
    return spec.model_copy(update=update)
