"""Reliability scenarios under load: Redis restarted, store hot-swapped,
bad input fuzzed, overload shed. The service fixtures are those of
``tests/service`` (a private copy of the tiny store, a real Redis under a
unique key prefix, uvicorn on loopback). ``target`` runs a scenario on a
vector store (the tiny digits MLP), on a text store (a tiny GPT built by
the worker from a synthetic corpus) and on a Hugging Face store (``hf``: a
tiny GPT-2 with its own BPE, LoRA fine-tuned on that corpus) alike.

Each scenario reports its figures (``scenario, requests, lost,
double_counted, failed_requests`` and more) to the ``figures`` fixture; with
``FA_RELIABILITY_OUT=path.json`` set they are written there at the end of
the session (``bench/results/reliability.json`` for BENCHMARKS.md)."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.service.conftest import (  # noqa: F401  (fixtures, re-exported for these tests)
    built_store,
    hf_store,
    prefix,
    redis_client,
    settings_for,
    store_root,
    train_x,
)
from tests.service.util import settings_factory

from ..text_corpus import build_text_store
from . import load


@pytest.fixture(scope="session")
def figures():
    rows: list[dict] = []
    yield rows
    out = os.environ.get("FA_RELIABILITY_OUT")
    if out and rows:
        path = Path(out)
        old = json.loads(path.read_text()) if path.exists() else {}
        keep = [r for r in old.get("scenarios", []) if r["scenario"] not in {x["scenario"] for x in rows}]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg": list(os.getloadavg()),
                                    "scenarios": keep + rows}, indent=1) + "\n")


@pytest.fixture(scope="session")
def built_text_store(tmp_path_factory) -> Path:
    """A tiny text store (3 publishers, 40 documents, rank-16 responses), read only."""
    return build_text_store(tmp_path_factory.mktemp("reliability-text"), "method.compress_rank=16")


@dataclass
class Target:
    """One store kind under load: ``root`` a private copy (a test may
    publish into it), ``settings(**over)``, ``bodies(count)`` recorded requests."""

    kind: str
    root: Path
    settings: object
    bodies: object


@pytest.fixture(params=["vector", "text", "hf"])
def target(request, tmp_path) -> Target:
    kind, fixture = request.param, request.getfixturevalue
    src = fixture({"vector": "built_store", "text": "built_text_store", "hf": "hf_store"}[kind])
    key_prefix = fixture("prefix")
    root = tmp_path / "store"
    shutil.copytree(src, root)

    def bodies(count: int = 40) -> list[dict]:
        if kind == "vector":
            return load.bodies(fixture("train_x"), count)
        return load.text_bodies(count, max_words=40 if kind == "text" else 6)  # hf: 33 BPE tokens at most

    return Target(kind, root, settings_factory(root, key_prefix, tmp_path), bodies)
