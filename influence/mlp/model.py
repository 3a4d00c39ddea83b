"""Model specification and the flat parameter layout shared by worker,
store and readout.

Parameters are handled as an ordered dict ``name -> tensor`` (the names of
``nn.Module.named_parameters``) and, for responses, as flat vectors of
length ``p`` laid out in that order (``ParamLayout``).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, Field, field_validator
from torch import nn

from ..layout import ParamLayout

__all__ = ["MLPSpec", "ParamLayout", "build_mlp", "init_params"]

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
        names, shapes = [], []
        for i, (a, b) in enumerate(zip(self.widths[:-1], self.widths[1:])):
            names += [f"{2 * i}.weight", f"{2 * i}.bias"]
            shapes += [(b, a), (b,)]
        return ParamLayout(tuple(names), tuple(shapes))

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
