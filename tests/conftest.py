"""Shared fixtures: float64 tiny models and a tiny published store."""

from __future__ import annotations

import pytest
import torch

import influence  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)
from influence.mlp.model import MLPSpec, init_params


@pytest.fixture
def tiny64():
    """A float64 MLP 5-7-6-4 with random params, queries and responses."""
    torch.manual_seed(0)
    spec = MLPSpec(widths=[5, 7, 6, 4], activation="tanh")
    params = init_params(spec, seed=3, dtype=torch.float64)
    x = torch.randn(9, 5, dtype=torch.float64)
    y = torch.randint(0, 4, (9,))
    return spec, params, x, y


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """A store built by the worker's tiny preset; returns its root."""
    from worker.config import load_config
    from worker.pipeline import build

    root = tmp_path_factory.mktemp("store")
    build(load_config("tiny", overrides=[f'store.root="{root}"']), progress=False)
    return root


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA; skip them (visibly) where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
