"""The ``gpt`` kind: the protocol GPT with its word-level tokenizer
(``docs/lm-protocol.md``), trained from scratch with a fixed recipe; its
hand-derived batched tangents (``influence.gpt.tangent``) are its fast path.
Everything else is the causal-LM engine's (``influence.text``)."""

from __future__ import annotations

import torch

from influence.gpt.model import GPT, GPTSpec
from influence.gpt.tokenizer import Tokenizer
from influence.kind import ModelKind


def load(store, device: torch.device, dtype: torch.dtype):
    """``(GPT, Tokenizer)`` of a published ``gpt`` store (``store``: an ``influence.store.Store``)."""
    tok = Tokenizer.from_json(store.assets["tokenizer.json"].decode())
    return GPT(store.manifest.model, seed=None).to(device, dtype), tok


KIND = ModelKind(
    name="gpt", spec=GPTSpec, queries="text", curvatures=("ggn", "fisher"),
    recipes={None: frozenset({"seed", "device"})}, datasets=("brown",), load=load)
