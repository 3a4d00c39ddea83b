"""The ``mlp`` kind: a classifier on feature vectors (``influence.mlp``:
spec, hand-derived linear-stack readout and curvature, the step-by-step
simulator with iterate averaging)."""

from __future__ import annotations

from ..kind import ModelKind
from .model import MLPSpec

_COMMON = frozenset({"optimizer", "lr", "batch_size", "epochs", "weight_decay", "seed", "device"})

KIND = ModelKind(
    name="mlp", spec=MLPSpec, queries="vector", curvatures=("ggn", "hessian"),
    recipes={"sgd": _COMMON | {"momentum"}, "adam": _COMMON}, datasets=("digits",),
    member_stride=1000, iterates=True)
