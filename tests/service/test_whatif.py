"""``POST /v1/whatif`` against a real uvicorn: the predicted change is the
first order ``Σ_s (w_s − 1) τ(q, s) / n`` of the very scores
``/v1/attributions`` answers (vector store: n training examples; text
store: n training target tokens), for the store's held-out sample and for
inline queries alike; a store without an audit says its accuracy is
unmeasured; every bad scenario is a 422 naming the field."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from .test_text import _words
from .util import serve


def _scores(base: str, queries: list[dict], S: int, output: str | None = None) -> np.ndarray:
    body = {"queries": queries, "top_k": S, "granularity": "sources", "record": False}
    if output:
        body["output"] = output
    r = httpx.post(base + "/v1/attributions", json=body)
    assert r.status_code == 200, r.text
    ids = httpx.get(base + "/v1/store").json()["source_ids"]
    return np.array([[{s["id"]: s["score"] for s in a["sources"]}[i] for i in ids] for a in r.json()["attributions"]])


def _whatif(base: str, **body) -> httpx.Response:
    return httpx.post(base + "/v1/whatif", json=body)


def test_vector_whatif_is_the_first_order_of_the_served_scores(server):
    from influence.datasets.vectors import load_digits_test

    base, _ = server
    st = httpx.get(base + "/v1/store").json()
    ids, n = st["source_ids"], st["n_examples"]
    X, y = load_digits_test()
    qs = [{"input": [float(v) for v in X[i]], "target": int(y[i]), "client_id": f"q{i}"} for i in range(12)]
    tau = _scores(base, qs, len(ids))

    r = _whatif(base, sample=12, remove=[ids[0]])
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["n"] == n and out["n_unit"] == "training examples" and out["weights"] == {ids[0]: 0.0}
    assert [q["client_id"] for q in out["queries"]] == [f"test-{i}" for i in range(12)]
    change = np.array([q["change"] for q in out["queries"]])
    np.testing.assert_allclose(change, -tau[:, 0] / n, rtol=1e-6, atol=1e-12)
    assert out["mean_change"] == pytest.approx(change.mean(), rel=1e-9, abs=1e-15)
    assert out["accuracy"] is None and "no audit" in out["accuracy_note"]

    w = {ids[1]: 2.0, ids[2]: 0.5}
    inline = _whatif(base, queries=qs, weights=w).json()
    assert [q["client_id"] for q in inline["queries"]] == [q["client_id"] for q in qs]
    expect = (tau[:, 1] - 0.5 * tau[:, 2]) / n
    np.testing.assert_allclose([q["change"] for q in inline["queries"]], expect, rtol=1e-6, atol=1e-12)
    # the loss moves the other way from the log-probability: the output option is honoured
    loss = _whatif(base, queries=qs, remove=[ids[0]], output="loss").json()
    np.testing.assert_allclose([q["change"] for q in loss["queries"]], -_scores(base, qs, len(ids), "loss")[:, 0] / n,
                               rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("body, field", [
    ({"remove": ["nope"], "sample": 3}, "remove[0]"),
    ({"weights": {"nope": 0.5}, "sample": 3}, "weights.nope"),
    ({"sample": 3}, "remove"),
    ({"sample": 3, "weights": {"@0": 1.0}}, "remove"),
    ({"sample": 3, "weights": {"@0": -1.0}}, "weights.@0"),
    ({"sample": 3, "remove": ["@0"], "weights": {"@0": 2.0}}, "weights.@0"),
    ({"sample": 3, "remove": ["@0", "@0"]}, "remove[1]"),
    ({"remove": ["@0"]}, "queries"),
    ({"remove": ["@0"], "sample": 3, "queries": [{"input": [0.0] * 64}]}, "queries"),
    ({"remove": ["@0"], "sample": 100000}, "sample"),
    ({"remove": ["@0"], "sample": 0}, "sample"),
    ({"remove": ["@0"], "queries": [{"text": "a b c"}]}, "queries[0].text"),
    ({"remove": ["@0"], "queries": [{"input": [0.0] * 3}]}, "queries[0].input"),
    ({"remove": ["@0"], "sample": 3, "output": "probability"}, "output"),
    ({"remove": "@0", "sample": 3}, "remove"),
])
def test_bad_scenarios_are_422_naming_the_field(server, body, field):
    base, _ = server
    ids = httpx.get(base + "/v1/store").json()["source_ids"]
    fix = lambda v: ids[int(v[1:])] if isinstance(v, str) and v.startswith("@") else v  # noqa: E731
    body = {k: ([fix(x) for x in v] if isinstance(v, list) and k == "remove" else
                {fix(a): b for a, b in v.items()} if isinstance(v, dict) else fix(v)) for k, v in body.items()}
    field = field.replace("@0", ids[0])
    r = _whatif(base, **body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert field in [f["path"] for f in err["fields"]], err


def test_text_whatif_uses_target_tokens_and_has_no_sample(text_settings, text_att):
    with serve(text_settings()) as base:
        st = httpx.get(base + "/v1/store").json()
        ids, n = st["source_ids"], st["data"]["n_targets"]
        qs = [{"text": _words(k, k), "client_id": f"t{k}"} for k in (5, 20, 41)]
        tau = _scores(base, qs, len(ids))
        out = _whatif(base, queries=qs, remove=[ids[2]]).json()
        assert out["n"] == n and out["n_unit"] == "training target tokens" and out["output"] == "logprob"
        np.testing.assert_allclose([q["change"] for q in out["queries"]], -tau[:, 2] / n, rtol=1e-6, atol=1e-15)
        assert out["accuracy"] is None and "no audit" in out["accuracy_note"]
        r = _whatif(base, sample=5, remove=[ids[0]])  # a JSONL corpus: no held-out sample
        assert r.status_code == 422 and r.json()["error"]["fields"][0]["path"] == "sample"
