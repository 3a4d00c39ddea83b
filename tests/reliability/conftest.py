"""Reliability scenarios under load: Redis restarted, store hot-swapped,
bad input fuzzed, overload shed. The service fixtures are those of
``tests/service`` (a private copy of the tiny store, a real Redis under a
unique key prefix, uvicorn on loopback).

Each scenario reports its figures (``scenario, requests, lost,
double_counted, failed_requests`` and more) to the ``figures`` fixture; with
``FA_RELIABILITY_OUT=path.json`` set they are written there at the end of
the session (``bench/results/reliability.json`` for BENCHMARKS.md)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.service.conftest import (  # noqa: F401  (fixtures, re-exported for these tests)
    built_store,
    prefix,
    redis_client,
    settings_for,
    store_root,
    train_x,
)


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
