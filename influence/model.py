"""Model specification and the flat parameter layout shared by worker,
store and readout.

Parameters are handled as an ordered dict ``name -> tensor`` (the names of
``nn.Module.named_parameters``) and, for responses, as flat vectors of
length ``p`` laid out in that order (``ParamLayout``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, Discriminator, Field, Tag, field_validator
from torch import nn

Activation = Literal["relu", "tanh", "gelu", "sigmoid"]
_ACT = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}


class MLPSpec(BaseModel):
    """An MLP ``widths[0] -> ... -> widths[-1]`` with one activation between
    linear layers; ``widths[0]`` is the input dimension, ``widths[-1]`` the
    number of classes."""

    kind: Literal["mlp"] = "mlp"
    widths: list[int] = Field(min_length=2)
    activation: Activation = "relu"

    @field_validator("widths")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(w < 1 for w in v):
            raise ValueError("every width must be >= 1")
        if v[-1] < 2:
            raise ValueError("the last width (number of classes) must be >= 2")
        return v

    def layout(self) -> ParamLayout:
        return ParamLayout.for_spec(self)

    @property
    def in_dim(self) -> int:
        return self.widths[0]

    @property
    def n_classes(self) -> int:
        return self.widths[-1]


def build_mlp(spec: MLPSpec) -> nn.Sequential:
    """``nn.Sequential`` of Linear/activation pairs; parameter names are
    ``"{2l}.weight"`` / ``"{2l}.bias"`` for linear layer ``l``."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(spec.widths[:-1], spec.widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(spec.widths) - 2:
            layers.append(_ACT[spec.activation]())
    return nn.Sequential(*layers)


def init_params(spec: MLPSpec, seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """PyTorch's default Linear initialisation, deterministic for ``seed``."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = build_mlp(spec).to(dtype)
    finally:
        torch.random.set_rng_state(gen_state)
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@dataclass(frozen=True)
class ParamLayout:
    """Order, shapes and offsets of the parameters inside a flat vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, params: dict[str, torch.Tensor]) -> ParamLayout:
        return cls(tuple(params), tuple(tuple(v.shape) for v in params.values()))

    @classmethod
    def for_spec(cls, spec: MLPSpec) -> ParamLayout:
        names, shapes = [], []
        for i, (a, b) in enumerate(zip(spec.widths[:-1], spec.widths[1:])):
            names += [f"{2 * i}.weight", f"{2 * i}.bias"]
            shapes += [(b, a), (b,)]
        return cls(tuple(names), tuple(shapes))

    @property
    def sizes(self) -> list[int]:
        return [int(torch.Size(s).numel()) for s in self.shapes]

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def flatten(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """dict of ``(*batch, *shape)`` tensors -> ``(*batch, p)``."""
        first = params[self.names[0]]
        batch = first.shape[: first.dim() - len(self.shapes[0])]
        return torch.cat([params[n].reshape(*batch, -1) for n in self.names], dim=-1)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(*batch, p)`` -> dict of ``(*batch, *shape)`` views."""
        parts = torch.split(flat, self.sizes, dim=-1)
        batch = flat.shape[:-1]
        return {n: t.reshape(*batch, *s) for n, s, t in zip(self.names, self.shapes, parts)}


def _kind(v) -> str:
    return v.get("kind", "mlp") if isinstance(v, dict) else getattr(v, "kind", "mlp")


from .text.gpt import GPTSpec  # noqa: E402  (after ParamLayout: gpt.py imports it lazily)

ModelSpec = Annotated[Annotated[MLPSpec, Tag("mlp")] | Annotated[GPTSpec, Tag("gpt")], Discriminator(_kind)]
"""A model kind's spec as the manifest and the worker config carry it: ``kind``
``mlp`` (the default, so manifests written before kinds existed still read)
or ``gpt``; ``spec.layout()`` is its flat parameter layout."""
