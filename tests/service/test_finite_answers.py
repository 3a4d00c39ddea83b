"""No answer carries null where a number is documented (issue 19, finding 4):
what-if weights have a documented range, [0, 1000], and an input whose
values overflow the model is a 422 naming it, for attributions and
what-ifs, on a vector store and a text store."""

from __future__ import annotations

import math

import httpx
import pytest

from .util import query, serve

NUMBERS = {"change", "mean_change", "score", "probability", "logprob", "n"}  # documented as numbers


def _walk_numbers(x, path="", key="") -> list[str]:
    """Paths of every null documented number, or non-finite number, in an answer."""
    if isinstance(x, dict):
        return [p for k, v in x.items() for p in _walk_numbers(v, f"{path}.{k}", k)]
    if isinstance(x, list):
        return [p for i, v in enumerate(x) for p in _walk_numbers(v, f"{path}[{i}]", key)]
    if x is None:
        return [path] if key in NUMBERS else []
    return [path] if isinstance(x, float) and not math.isfinite(x) else []


@pytest.mark.parametrize("w", [1e308, 1e6, 1000.5, -1e-300, -0.5])
def test_weights_outside_the_range_are_422(server, w):
    base, _ = server
    r = httpx.post(base + "/v1/whatif", json={"sample": 3, "weights": {"publisher-00": w}})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["fields"][0]["path"] == "weights.publisher-00" and "[0, 1000]" in err["message"]


def test_the_largest_weight_gives_numbers(server):
    base, _ = server
    r = httpx.post(base + "/v1/whatif", json={"sample": 5, "weights": {"publisher-00": 1000, "publisher-01": 0}})
    assert r.status_code == 200
    body = r.json()
    assert body["mean_change"] is not None and all(q["change"] is not None for q in body["queries"])
    assert _walk_numbers(body) == []


@pytest.mark.parametrize("v", [3e38, -3e38, 1e38])
def test_inputs_that_overflow_the_model_are_422(server, train_x, v):
    base, _ = server
    bad = {"input": [v] * 64}
    r = httpx.post(base + "/v1/attributions", json={"queries": [query(train_x[0]), bad], "granularity": "both"})
    if r.status_code == 200:  # finite after all: then every number must be one
        assert _walk_numbers(r.json()) == [], r.text[:300]
    else:
        assert r.status_code == 422 and r.json()["error"]["fields"][0]["path"] == "queries[1].input", r.text
    w = httpx.post(base + "/v1/whatif", json={"queries": [bad], "remove": ["publisher-00"]})
    if w.status_code == 200:
        assert _walk_numbers(w.json()) == []
    else:
        assert w.status_code == 422 and w.json()["error"]["fields"][0]["path"] == "queries[0].input", w.text
    assert r.status_code == w.status_code


def test_3e38_is_refused_not_answered_with_nulls(server):
    base, _ = server
    r = httpx.post(base + "/v1/attributions", json={"queries": [{"input": [3e38] * 64}], "record": False})
    assert r.status_code == 422 and "not finite" in r.json()["error"]["message"]
    r = httpx.post(base + "/v1/whatif", json={"queries": [{"input": [3e38] * 64}], "remove": ["publisher-00"]})
    assert r.status_code == 422 and "not finite" in r.json()["error"]["message"]  # was a 500


def test_text_store_whatif_extremes(text_settings):
    with serve(text_settings()) as base:
        ids = httpx.get(base + "/v1/store").json()["source_ids"]
        r = httpx.post(base + "/v1/whatif", json={"queries": [{"text": "w1 w2 w3"}], "weights": {ids[0]: 1e308}})
        assert r.status_code == 422 and r.json()["error"]["fields"][0]["path"] == f"weights.{ids[0]}"
        r = httpx.post(base + "/v1/whatif", json={"queries": [{"text": "w1 w2 w3"}], "weights": {ids[0]: 1000}})
        assert r.status_code == 200 and _walk_numbers(r.json()) == [] and r.json()["mean_change"] is not None
