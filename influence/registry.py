"""The model-kind registry: one line a kind. A kind is a folder whose
``kind.py`` defines ``KIND`` (an ``influence.kind.ModelKind``); list it in
``BUILT_IN``, or, for a kind of your own outside this repository, name its
module in the environment variable ``FA_KINDS`` (comma-separated; read once,
at import), and every stage (config, worker build, store, readout, service)
takes it.
"""

from __future__ import annotations

import importlib
import os

from .errors import InfluenceError
from .gpt import kind as gpt
from .hf import kind as hf
from .kind import ModelKind
from .mlp import kind as mlp

BUILT_IN: tuple[ModelKind, ...] = (mlp.KIND, gpt.KIND, hf.KIND)
PLUGINS_ENV = "FA_KINDS"


def _plugins() -> list[ModelKind]:
    out = []
    for name in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            kind = importlib.import_module(name).KIND
        except (ImportError, AttributeError) as e:
            raise InfluenceError(f"{PLUGINS_ENV}: cannot load a model kind from module {name!r}: {e}") from None
        if not isinstance(kind, ModelKind):
            raise InfluenceError(f"{PLUGINS_ENV}: {name}.KIND is not an influence.kind.ModelKind")
        out.append(kind)
    return out


KINDS: dict[str, ModelKind] = {}
for _k in (*BUILT_IN, *_plugins()):
    if _k.name in KINDS:
        raise InfluenceError(f"model kind {_k.name!r} is registered twice")
    KINDS[_k.name] = _k


def get(name: str) -> ModelKind:
    """The kind named ``name``; an ``InfluenceError`` listing the known kinds otherwise."""
    if name not in KINDS:
        raise InfluenceError(f"model kind {name!r} is not registered (have {', '.join(KINDS)}; "
                             f"a kind of your own: {PLUGINS_ENV}=your.module)")
    return KINDS[name]


def of(spec) -> ModelKind:
    """The kind of a model spec (a manifest's or a config's ``model``)."""
    return get(getattr(spec, "kind", "mlp"))
