"""API keys: 401 without a key, 403 with a wrong one (same body whatever
the reason), roles, and publishers that see only their own lines."""

from __future__ import annotations

import httpx
import pytest

from service.settings import Settings

from .util import query, serve

KEYS = dict(query_keys=["q-key"], admin_keys=["a-key"], report_keys=["r-key"],
            publisher_keys={"p0-key": "publisher-00", "p1-key": "publisher-01"}, metrics_public=False)
REPORT = {"start": "2000-01-01", "end": "2100-01-01", "amount": "10.00", "currency": "EUR"}


@pytest.fixture(scope="module")
def keyed(tiny_store, tmp_path_factory):
    import uuid

    import redis

    from .util import REDIS_URL

    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    s = Settings(_env_file=None, store=tiny_store, redis_url=REDIS_URL, redis_prefix=prefix,
                 data_dir=tmp_path_factory.mktemp("var"), **KEYS)
    with serve(s) as base:
        yield base
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)


def _h(key: str | None, bearer: bool = True) -> dict:
    if key is None:
        return {}
    return {"Authorization": f"Bearer {key}"} if bearer else {"X-API-Key": key}


def test_missing_and_wrong_keys(keyed, train_x):
    body = {"queries": [query(train_x[0])]}
    r = httpx.post(keyed + "/v1/attributions", json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    wrong = httpx.post(keyed + "/v1/attributions", json=body, headers=_h("nope"))
    lacking = httpx.post(keyed + "/v1/attributions", json=body, headers=_h("r-key"))
    assert wrong.status_code == lacking.status_code == 403
    assert wrong.json() == lacking.json() == {"error": {
        "status": 403, "code": "forbidden", "message": "authorization: forbidden",
        "fields": [{"path": "authorization", "in": "header", "reason": "forbidden"}]}}
    assert httpx.post(keyed + "/v1/attributions", json=body, headers=_h("q-key", bearer=False)).status_code == 200
    assert httpx.post(keyed + "/v1/attributions", json=body, headers=_h("a-key")).status_code == 200
    # health needs no key; metrics is private in this configuration
    assert httpx.get(keyed + "/healthz").status_code == 200 and httpx.get(keyed + "/readyz").status_code == 200
    assert httpx.get(keyed + "/metrics").status_code == 401
    assert httpx.get(keyed + "/metrics", headers=_h("r-key")).status_code == 200


@pytest.mark.parametrize("method,path,params,allowed", [
    ("POST", "/v1/admin/reload", None, {"a-key"}),
    ("GET", "/v1/sources", None, {"a-key", "r-key", "p0-key", "p1-key"}),
    ("GET", "/v1/reports/compensation", REPORT, {"a-key", "r-key", "p0-key", "p1-key"}),
    ("GET", "/v1/stats", None, {"a-key", "r-key", "q-key"}),
    ("GET", "/v1/store", None, {"a-key", "r-key", "q-key", "p0-key", "p1-key"}),
])
def test_roles(keyed, method, path, params, allowed):
    for key in ("q-key", "a-key", "r-key", "p0-key", "p1-key"):
        r = httpx.request(method, keyed + path, params=params, headers=_h(key))
        assert r.status_code == (200 if key in allowed else 403), (key, path, r.text)
    assert httpx.request(method, keyed + path, params=params).status_code == 401


def test_publisher_sees_only_own_lines(keyed, train_x):
    body = {"queries": [query(train_x[i]) for i in range(8)]}
    httpx.post(keyed + "/v1/attributions", json=body, headers=_h("q-key")).raise_for_status()
    full = httpx.get(keyed + "/v1/sources", headers=_h("r-key")).json()
    assert len(full["sources"]) == 5
    own = httpx.get(keyed + "/v1/sources", headers=_h("p0-key")).json()
    assert [s["id"] for s in own["sources"]] == ["publisher-00"]
    assert httpx.get(keyed + "/v1/sources/publisher-00", headers=_h("p0-key")).status_code == 200
    assert httpx.get(keyed + "/v1/sources/publisher-01", headers=_h("p0-key")).status_code == 403
    assert httpx.get(keyed + "/v1/sources/unknown", headers=_h("p0-key")).status_code == 403
    rep = httpx.get(keyed + "/v1/reports/compensation", params=REPORT, headers=_h("p1-key")).json()
    assert [line["source_id"] for line in rep["lines"]] == ["publisher-01"]
    everyone = httpx.get(keyed + "/v1/reports/compensation", params=REPORT, headers=_h("r-key")).json()
    assert rep["lines"][0] in everyone["lines"] or rep["lines"][0]["credit_units"] == 0
    csv_text = httpx.get(keyed + "/v1/reports/compensation", params={**REPORT, "format": "csv"},
                         headers=_h("p0-key")).text
    assert all("publisher-01" not in line for line in csv_text.splitlines())
