"""Which modules of a Hugging Face model carry the LoRA adapters.

The default (``model.lora.target_modules`` empty) is every linear projection
inside the decoder blocks (``nn.Linear`` or GPT-2's ``Conv1D``; the embeddings
and the output layer excluded), by the module's last name component: GPT-2
``c_attn, c_proj, c_fc``; Llama and Qwen2 ``q_proj, k_proj, v_proj, o_proj,
gate_proj, up_proj, down_proj``; GPT-NeoX ``query_key_value, dense,
dense_h_to_4h, dense_4h_to_h``. This is peft's "all-linear" choice, read off
the model itself, so it fits every architecture without a table per model.
A requested name the model does not have is a ``TargetError`` that lists the
model's valid names and the ``--set`` syntax.
"""

from __future__ import annotations

from torch import nn

from ..errors import InfluenceError

SET_SYNTAX = "--set model.lora.target_modules='[\"q_proj\",\"v_proj\"]'"


class TargetError(InfluenceError):
    """``model.lora.target_modules`` names no module of this model, or the model has no block projection."""


def _is_projection(m: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(m, (nn.Linear, Conv1D))


def _head_modules(base: nn.Module) -> set[int]:
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    return set() if head is None else {id(head)}


def block_linear_names(base: nn.Module) -> list[str]:
    """Last name components of the linear projections in the decoder blocks,
    in order of first appearance (the output layer excluded)."""
    skip = _head_modules(base)
    seen: dict[str, None] = {}
    for name, m in base.named_modules():
        # a block is a module under a numbered container (h.0, layers.3): what every causal LM stacks
        parts = name.split(".")
        in_block = any(p.isdigit() for p in parts[:-1])
        if in_block and id(m) not in skip and _is_projection(m):
            seen.setdefault(parts[-1], None)
    return list(seen)


def lora_targets(base: nn.Module, requested: list[str] | tuple[str, ...]) -> list[str]:
    """The module names LoRA wraps: ``requested``, checked against the model,
    or every block projection when ``requested`` is empty."""
    valid = block_linear_names(base)
    if not requested:
        if not valid:
            raise TargetError("model.lora.target_modules: this model has no linear projection inside numbered "
                              f"blocks; name the modules to adapt with {SET_SYNTAX}")
        return valid
    names = {n.split(".")[-1] for n, _ in base.named_modules()}
    missing = [t for t in requested if t not in names]
    if missing:
        raise TargetError(f"model.lora.target_modules: {missing} are not module names of this model; its block "
                          f"projections are {valid} (the default, all of them, when the list is empty); "
                          f"set them with {SET_SYNTAX}")
    return list(requested)
