"""The ``gpt`` kind: the protocol GPT with its word-level tokenizer
(``docs/lm-protocol.md``), trained from scratch with a fixed recipe; its
hand-derived batched tangents (``influence.gpt.tangent``) are its fast path.
Everything else is the causal-LM engine's (``influence.text``)."""

from __future__ import annotations

import torch

from ..kind import ModelKind
from .model import GPT, GPTSpec
from .tokenizer import Tokenizer
from .train import BATCH, BETAS, EPOCHS, EPS, LR_MAX, WEIGHT_DECAY, train_lm


def load(store, device: torch.device, dtype: torch.dtype):
    """``(GPT, Tokenizer)`` of a published ``gpt`` store (``store``: an ``influence.store.Store``)."""
    tok = Tokenizer.from_json(store.assets["tokenizer.json"].decode())
    return GPT(store.manifest.model, seed=None).to(device, dtype), tok


def train(spec: GPTSpec, blocks: torch.Tensor, seed: int, keep=None, **kw):
    """The protocol's recipe from ``spec.build(seed)`` on ``blocks (N, 65)``
    (``keep``: the rows of a subset): ``(model, params, stats)``; the model
    holds the causal-mask buffer on ``blocks``' device, the math runs on
    ``params`` (``influence.gpt.train.train_lm``)."""
    params, stats = train_lm(spec, blocks, keep, seed, **kw)
    return GPT(spec, seed=None).to(blocks.device), params, stats


RECIPE = {"optimizer": "adamw", "lr_max": LR_MAX, "betas": list(BETAS), "eps": EPS, "weight_decay": WEIGHT_DECAY,
          "batch": BATCH, "epochs": EPOCHS, "schedule": "warmup 5% + cosine"}

KIND = ModelKind(
    name="gpt", spec=GPTSpec, queries="text", curvatures=("ggn", "fisher"),
    recipes={None: frozenset({"seed", "device"})}, datasets=("brown",), load=load,
    train=train, recipe=RECIPE)
