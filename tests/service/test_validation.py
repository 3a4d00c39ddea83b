"""4xx answers name the field path and the reason, before any work is done;
no stack trace ever reaches a client."""

from __future__ import annotations

import httpx
import pytest

from .util import query


def _fields(r: httpx.Response) -> list[tuple[str, str]]:
    err = r.json()["error"]
    assert err["status"] == r.status_code and "Traceback" not in r.text
    return [(f["path"], f["in"]) for f in err.get("fields", [])]


@pytest.fixture
def base(settings_for):
    from .util import serve

    with serve(settings_for(max_queries=4, max_body_bytes=20_000, max_top_k=20)) as url:
        yield url


def test_bad_queries_name_the_field(base, train_x):
    good = query(train_x[0])
    cases = [
        ({"queries": [good, {"input": [1.0, 2.0]}]}, "queries[1].input"),
        ({"queries": [good, query(train_x[1], target=10)]}, "queries[1].target"),
        ({"queries": [good, query(train_x[1], target=-1)]}, "queries[1].target"),
        ({"queries": [good] * 5}, "queries"),
        ({"queries": [good], "top_k": 21}, "top_k"),
        ({"queries": [good], "top_k": 0}, "top_k"),
        ({"queries": []}, "queries"),
        ({"queries": [good], "granularity": "pixels"}, "granularity"),
        ({"queries": [good], "output": "accuracy"}, "output"),
        ({"queries": [good], "colour": "blue"}, "colour"),
        ({"queries": [{"input": "abc"}]}, "queries[0].input"),
        ({"queries": [{"input": [1e39] * 64}]}, "queries[0].input"),
        ({}, "queries"),
    ]
    for body, path in cases:
        r = httpx.post(base + "/v1/attributions", json=body)
        assert r.status_code == 422, (body, r.text)
        assert path in [p for p, _ in _fields(r)], (path, r.json())
    stats = httpx.get(base + "/v1/stats").json()
    assert stats["batches"] == 0  # nothing reached the readout


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_inf_rejected(base, token):
    values = ",".join(["0.5"] * 10 + [token] + ["0.5"] * 53)
    r = httpx.post(base + "/v1/attributions", content='{"queries": [{"input": [' + values + "]}]}",
                   headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert ("queries[0].input[10]", "body") in _fields(r)


def test_invalid_json_and_oversized_body(base, train_x):
    r = httpx.post(base + "/v1/attributions", content=b'{"queries": [', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["error"]["message"]
    big = {"queries": [query(train_x[0])] * 4, "pad": "x" * 30_000}
    r = httpx.post(base + "/v1/attributions", json=big)
    assert r.status_code == 413 and _fields(r) == [("body", "body")]

    def chunks():  # no Content-Length: the limit holds on the streamed body too
        for _ in range(30):
            yield b" " * 1000

    r = httpx.post(base + "/v1/attributions", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_bad_report_parameters(base):
    url = base + "/v1/reports/compensation"
    ok = {"start": "2025-01-01", "end": "2025-02-01", "amount": "100", "currency": "EUR"}
    cases = [
        ({**ok, "start": "yesterday"}, "start"),
        ({**ok, "start": "2025-01-01T00:30:00Z"}, "start"),
        ({**ok, "end": "2024-12-01"}, "end"),
        ({**ok, "amount": "-3"}, "amount"),
        ({**ok, "amount": "1.001"}, "amount"),
        ({**ok, "amount": "lots"}, "amount"),
        ({**ok, "currency": "EURO"}, "currency"),
        ({**ok, "format": "xml"}, "format"),
        ({k: v for k, v in ok.items() if k != "amount"}, "amount"),
    ]
    for params, path in cases:
        r = httpx.get(url, params=params)
        assert r.status_code == 422, (params, r.text)
        assert (path, "query") in _fields(r), r.json()
    assert httpx.get(url, params={**ok, "currency": "JPY", "amount": "100"}).json()["pool_minor"] == 100


def test_unknown_routes_and_methods(base):
    assert httpx.get(base + "/v1/nothing").json()["error"]["code"] == "not_found"
    assert httpx.get(base + "/v1/attributions").status_code == 405
    r = httpx.post(base + "/v1/admin/reload", params={"version": "v999999"})
    assert r.status_code == 404 and _fields(r) == [("version", "query")]
