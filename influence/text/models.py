"""The one place where a text store's model kind picks its model and
tokenizer: ``load_text_model(store, device, dtype) -> (CausalLM, tokenizer)``.
Everything downstream (``TextAttributor``, ``fa-worker score``, the service)
works through the ``CausalLM`` interface and the tokenizer surface
(``tokenize`` / ``encode`` / ``decode`` / ``vocab_size`` / ``unk_id``)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import StoreError
from ..store import Store
from .causal import CausalLM


def _gpt(store: Store, device: torch.device, dtype: torch.dtype):
    from .gpt import GPT
    from .tokenizer import Tokenizer

    tok = Tokenizer.from_json(store.assets["tokenizer.json"].decode())
    return GPT(store.manifest.model, seed=None).to(device, dtype), tok


def hf_base_dir(store: Store) -> Path:
    """The store's base model directory: its own ``base/`` copy, or the
    referenced path after checking every recorded sha256."""
    from ..hf.loader import verify_checksums

    spec = store.manifest.model
    if spec.base == "store":
        return store.path / "base"
    path = Path(spec.base_path or "")
    if not path.is_dir():
        raise StoreError(f"{path}: the store's base model directory is missing (store {store.path})")
    verify_checksums(path, spec.base_sha256)
    return path


def _hf(store: Store, device: torch.device, dtype: torch.dtype):
    from ..hf.loader import load_model, load_tokenizer
    from ..hf.model import wrap
    from ..hf.tokenizer import HFTokenizer

    spec = store.manifest.model
    model = wrap(load_model(hf_base_dir(store), dtype), spec.model_copy(update={"dtype": _name(dtype)}), seed=0)
    return model.to(device), HFTokenizer(load_tokenizer(store.path / "tokenizer"))


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


LOADERS = {"gpt": _gpt, "hf": _hf}


def load_text_model(store: Store, device: torch.device, dtype: torch.dtype) -> tuple[CausalLM, object]:
    kind = store.manifest.model.kind
    if kind not in LOADERS:
        raise StoreError(f"{store.path}: model kind {kind!r} is not a text model")
    return LOADERS[kind](store, device, dtype)
