"""``ModelSpec``: a model kind's spec as the manifest and the worker config
carry it, discriminated by ``kind``: ``mlp`` (the default, so manifests
written before kinds existed still read), ``gpt`` (the protocol GPT) or
``hf`` (a Hugging Face causal LM). ``spec.layout()`` is the flat layout of
its trained parameters (the space the responses live in)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Discriminator, Tag

from .hf.spec import HFSpec
from .model import MLPSpec
from .text.gpt import GPTSpec


def _kind(v) -> str:
    return v.get("kind", "mlp") if isinstance(v, dict) else getattr(v, "kind", "mlp")


ModelSpec = Annotated[Annotated[MLPSpec, Tag("mlp")] | Annotated[GPTSpec, Tag("gpt")] | Annotated[HFSpec, Tag("hf")],
                      Discriminator(_kind)]
TEXT_KINDS = ("gpt", "hf")  # kinds whose queries are text (a tokenizer and a causal LM)
