"""The ``hf`` kind: a local Hugging Face causal LM, LoRA / named / fully
fine-tuned with the typed AdamW recipe; GPT-2 with LoRA has hand-derived
tangents (``influence.hf.gpt2_tangent``), any other architecture the
``torch.func`` readout. Everything else is the causal-LM engine's."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import StoreError
from ..kind import ModelKind
from .loader import load_model, load_tokenizer, verify_checksums
from .model import wrap
from .spec import HFSpec
from .tokenizer import HFTokenizer


def base_dir(store) -> Path:
    """The store's base model directory: its own ``base/`` copy, or the
    referenced path after checking every recorded sha256."""
    spec = store.manifest.model
    if spec.base == "store":
        return store.path / "base"
    path = Path(spec.base_path or "")
    if not path.is_dir():
        raise StoreError(f"{path}: the store's base model directory is missing (store {store.path})")
    verify_checksums(path, spec.base_sha256)
    return path


def load(store, device: torch.device, dtype: torch.dtype):
    """``(wrapped CausalLM, HFTokenizer)`` of a published ``hf`` store."""
    spec = store.manifest.model
    name = str(dtype).removeprefix("torch.")
    model = wrap(load_model(base_dir(store), dtype), spec.model_copy(update={"dtype": name}), seed=0)
    return model.to(device), HFTokenizer(load_tokenizer(store.path / "tokenizer"))


KIND = ModelKind(
    name="hf", spec=HFSpec, queries="text", curvatures=("ggn", "fisher"),
    recipes={"adamw": frozenset({"optimizer", "lr", "betas", "eps", "weight_decay", "batch_size", "epochs", "seed",
                                 "device"})},
    datasets=("brown-ft",), needs_path=True, load=load)
