"""``ModelSpec``: a model kind's spec as the manifest and the worker config
carry it, discriminated by ``kind`` over the registered kinds
(``influence.registry``); ``mlp`` is the default, so manifests written
before kinds existed still read. ``spec.layout()`` is the flat layout of
its trained parameters (the space the responses live in)."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Discriminator, Tag

from .registry import KINDS


def _kind(v) -> str:
    return v.get("kind", "mlp") if isinstance(v, dict) else getattr(v, "kind", "mlp")


ModelSpec = Annotated[Union[tuple(Annotated[k.spec, Tag(n)] for n, k in KINDS.items())],  # noqa: UP007
                      Discriminator(_kind)]
TEXT_KINDS = tuple(n for n, k in KINDS.items() if k.text)  # kinds whose queries are text (a CausalLM)
