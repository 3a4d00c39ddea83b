"""``ModelKind``: what the engine needs to know of a model kind, in one
small record (in the spirit of kronfluence's ``Task``). Each kind is a
folder (``influence/mlp``, ``influence/gpt``, ``influence/hf``) whose
``kind.py`` defines ``KIND``; ``influence.registry`` lists them, one line a
kind. Everything that differs by kind and is not a hand-derived fast path
is a field here, so the config, the worker, the store reader and the
service ask the kind instead of branching on its name.

Two query forms share one engine each: ``vector`` (a fixed-width numeric
input and a class, ``influence.mlp``) and ``text`` (token ids through a
``CausalLM``, ``influence.text``: simulation, readout, attributor and the
worker's text build are written once against that protocol).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel

QueryForm = Literal["vector", "text"]


@dataclass(frozen=True)
class ModelKind:
    """A model kind.

    ``name``: ``model.kind`` in configs and manifests. ``spec``: its pydantic
    spec class (``kind: Literal[name]``; ``spec.layout()`` the trained
    parameters' flat layout). ``queries``: the query form. ``curvatures``:
    the ``method.curvature`` values its simulator builds. ``recipes``: per
    ``train.optimizer`` the train fields its recipe reads (key ``None``: a
    fixed recipe whatever the optimizer); a field set explicitly that the
    recipe would not read is refused, never ignored. ``datasets``: the
    built-in ``data.name`` values it trains on (a user file otherwise).
    ``member_stride``: member ``e`` trains with seed ``train.seed + stride · e``.
    ``iterates``: whether responses may average over training iterates.
    ``needs_path``: ``model.path`` (a local model directory) is required.
    ``load``: text kinds, ``(store, device, dtype) -> (CausalLM, tokenizer)``
    of a published store. ``train``: a text kind trained from scratch on
    the corpus's word tokenizer (its spec has ``vocab`` and ``context``),
    ``(spec, blocks (N, T+1) int64, seed, keep=None) -> (CausalLM, trained
    params {name: tensor}, stats {"final_loss", "seconds", ...})`` on
    ``blocks``' device, ``keep`` the rows of a training subset (the audit's
    retrains); ``recipe``: its fixed recipe as the manifest records it. A
    kind without ``train`` and with ``needs_path`` fine-tunes a local
    Hugging Face model (``worker.hf_pipeline``).
    """

    name: str
    spec: type[BaseModel]
    queries: QueryForm
    curvatures: tuple[str, ...]
    recipes: Mapping[str | None, frozenset[str]]
    datasets: tuple[str, ...] = ()
    member_stride: int = 1
    iterates: bool = False
    needs_path: bool = False
    load: Callable | None = None
    train: Callable | None = field(default=None, compare=False)
    recipe: Mapping | None = None

    @property
    def text(self) -> bool:
        return self.queries == "text"

    def member_seed(self, seed: int, member: int) -> int:
        """The training seed of ensemble member ``member``."""
        return seed + self.member_stride * member

    def recipe_fields(self, optimizer: str) -> frozenset[str] | None:
        """The train fields the recipe reads with ``optimizer`` (None: an optimizer it does not take)."""
        return self.recipes.get(None) or self.recipes.get(optimizer)
