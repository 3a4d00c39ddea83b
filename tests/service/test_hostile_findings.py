"""The "should fix" findings of issue 19's hostile test, one test each:
every error carries ``fields``, JSON is UTF-8 whatever the declared charset,
a text store names the form it expects, currencies are three ASCII letters,
report times are whole buckets, ``/v1/store`` shows its root to admin keys
only, the API documents can need a key, ``HEAD`` answers as ``GET``, a body
that never arrives is a 408 and oversized headers a 431."""

from __future__ import annotations

import uuid

import httpx
import pytest
import redis

from service.settings import Settings

from .util import REDIS_URL, query, serve

KEYS = dict(query_keys=["q-key"], report_keys=["r-key"], admin_keys=["a-key"],
            publisher_keys={"p0-key": "publisher-00"})
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def services(tiny_store, text_store, tmp_path_factory):
    """(open vector service, keyed vector service, open text service)."""
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    common = dict(_env_file=None, redis_url=REDIS_URL, redis_prefix=prefix, max_wait_ms=1.0)
    with serve(Settings(**common, store=tiny_store, data_dir=tmp_path_factory.mktemp("open"))) as open_, \
            serve(Settings(**common, store=tiny_store, data_dir=tmp_path_factory.mktemp("keyed"), **KEYS)) as keyed, \
            serve(Settings(**common, store=text_store, data_dir=tmp_path_factory.mktemp("text"))) as text:
        yield open_, keyed, text
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def _h(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def _shape(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert set(err) >= {"status", "code", "message", "fields"} and err["status"] == status, err
    assert isinstance(err["fields"], list)
    if err["fields"]:
        f = err["fields"][0]
        assert err["message"].startswith(f["path"] + ": "), err
    return err


def test_every_error_carries_fields(services, train_x, tmp_path):
    open_, keyed, _ = services
    err = _shape(httpx.post(keyed + "/v1/attributions", json={"queries": []}), 401)
    assert err["fields"][0] == {"path": "authorization", "in": "header", "reason": err["fields"][0]["reason"]}
    err = _shape(httpx.post(keyed + "/v1/attributions", json={"queries": []}, headers=_h("r-key")), 403)
    assert err["fields"] == [{"path": "authorization", "in": "header", "reason": "forbidden"}]
    assert _shape(httpx.get(keyed + "/v1/sources/publisher-01", headers=_h("p0-key")), 403) == err
    assert _shape(httpx.get(open_ + "/v1/nothing"), 404)["fields"] == []
    assert _shape(httpx.delete(open_ + "/v1/attributions"), 405)["fields"] == []
    with serve(Settings(_env_file=None, store=tmp_path / "none", redis_url=REDIS_URL, data_dir=tmp_path / "var",
                        redis_prefix=f"test:{uuid.uuid4().hex[:12]}:"), ready=False) as loading:
        err = _shape(httpx.post(loading + "/v1/attributions", json={"queries": [query(train_x[0])]}), 503)
        assert err["fields"] == [] and err["code"] == "not_ready"


def test_json_is_utf8_whatever_the_declared_charset(services, train_x):
    open_, _, _ = services
    body = httpx.Request("POST", "/", json={"queries": [query(train_x[0])], "record": False}).content
    for ctype in ("application/json; charset=utf-16", "application/json;charset=UTF-32", 'application/json; '
                  'charset="latin-1"'):
        err = _shape(httpx.post(open_ + "/v1/attributions", content=body, headers={"content-type": ctype}), 415)
        assert err["fields"][0]["path"] == "content-type" and err["fields"][0]["in"] == "header"
    for ctype in ("application/json; charset=utf-8", "application/json; charset=UTF8", 'application/json; '
                  'charset="utf-8"'):
        assert httpx.post(open_ + "/v1/attributions", content=body, headers={"content-type": ctype}).status_code == 200
    for enc in ("utf-16", "utf-16-le", "utf-32"):
        r = httpx.post(open_ + "/v1/attributions", content=body.decode().encode(enc), headers=JSON)
        assert _shape(r, 422)["fields"][0] == {"path": "body", "in": "body", "reason": "body is not valid UTF-8"}


@pytest.mark.parametrize("q, path, says", [
    ({}, "queries[0].text", '{"text": "..."}'),
    ({"text": "the jury said", "input": [1.0]}, "queries[0].input", '{"text": "..."}'),
    ({"input": [1.0, 2.0]}, "queries[0].input", '{"prompt": "...", "completion": "..."}'),
    ({"text": "w1 w2", "prompt": "w1", "completion": "w2"}, "queries[0].text", "not both"),
    ({"text": "w1 w2", "colour": "red"}, "queries[0].colour", "unknown field"),
])
def test_a_text_store_names_the_form_it_takes(services, q, path, says):
    _, _, text = services
    err = _shape(httpx.post(text + "/v1/attributions", json={"queries": [q]}), 422)
    assert err["fields"][0]["path"] == path and says in err["message"], err


def test_a_vector_store_names_the_form_it_takes(services):
    open_, _, _ = services
    err = _shape(httpx.post(open_ + "/v1/attributions", json={"queries": [{"input": [0.0] * 64, "text": "a b"}]}),
                 422)
    assert err["fields"][0]["path"] == "queries[0].text" and '{"input": [...]}' in err["message"]


@pytest.mark.parametrize("currency", ["ınr", "ſek", "uſd", "EUR\x00", "ＥＵＲ", "E\u0301UR", "eu r"])
def test_currencies_are_three_ascii_letters(services, currency):
    open_, _, _ = services
    params = {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z", "amount": "10", "currency": currency}
    err = _shape(httpx.get(open_ + "/v1/reports/compensation", params=params), 422)
    assert err["fields"] == [{"path": "currency", "in": "query", "reason": err["fields"][0]["reason"]}]
    assert httpx.get(open_ + "/v1/reports/compensation", params={**params, "currency": " usd "}).json()[
        "currency"] == "USD"


@pytest.mark.parametrize("field, value", [
    ("start", "2026-12-01T00:00:00Z\x00"), ("start", "2026-12-01T00:00:00Z junk"),
    ("start", "9998-12-31T23:00:00.000001Z"), ("end", "9998-12-31T23:00:00.000001Z"),
    ("start", "2026-12-01T00:00:01Z"), ("start", "2026-12-01T00:30:00Z"), ("end", "２０２６-12-01"),
])
def test_report_times_are_whole_hours_in_ascii(services, field, value):
    open_, _, _ = services
    params = {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z", "amount": "10", "currency": "EUR",
              field: value}
    err = _shape(httpx.get(open_ + "/v1/reports/compensation", params=params), 422)
    assert err["fields"][0]["path"] == field and err["fields"][0]["in"] == "query"
    ok = {**params, "start": "2026-11-01T00:00:00.000000Z", "end": "9998-12-31T23:00:00Z"}
    assert httpx.get(open_ + "/v1/reports/compensation", params=ok).status_code == 200


def test_store_root_is_shown_to_admin_keys_only(services):
    _, keyed, _ = services
    assert httpx.get(keyed + "/v1/store", headers=_h("a-key")).json()["root"]
    for key in ("q-key", "r-key", "p0-key"):
        r = httpx.get(keyed + "/v1/store", headers=_h(key))
        assert r.status_code == 200 and r.json()["root"] is None, (key, r.text[:200])


def test_api_documents_can_need_a_key(services, tiny_store, tmp_path):
    _, keyed, _ = services
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert httpx.get(keyed + path).status_code == 200  # docs_public defaults to true
    s = Settings(_env_file=None, store=tiny_store, redis_url=REDIS_URL, data_dir=tmp_path / "var",
                 redis_prefix=f"test:{uuid.uuid4().hex[:12]}:", docs_public=False, metrics_public=False, **KEYS)
    with serve(s) as base:
        for path in ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"):
            assert _shape(httpx.get(base + path), 401)["fields"][0]["path"] == "authorization"
            for key in ("q-key", "r-key", "p0-key", "a-key"):
                assert httpx.get(base + path, headers=_h(key)).status_code == 200
        assert httpx.get(base + "/metrics").status_code == 401
        assert httpx.get(base + "/healthz").status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/v1/store", "/v1/sources", "/metrics", "/openapi.json",
                                  "/v1/playground/names"])
def test_head_answers_as_get_without_a_body(services, path):
    open_, _, _ = services
    get, head = httpx.get(open_ + path), httpx.head(open_ + path)
    assert get.status_code == head.status_code == 200, (head.status_code, head.text)
    assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"]
    if "content-length" in get.headers and path not in ("/metrics", "/readyz", "/v1/sources"):  # (live figures)
        assert head.headers["content-length"] == get.headers["content-length"]
    assert httpx.head(open_ + "/v1/attributions").status_code == 405


def test_a_body_that_never_arrives_is_408(tiny_store, tmp_path):
    import socket
    import time

    s = Settings(_env_file=None, store=tiny_store, redis_url=REDIS_URL, data_dir=tmp_path / "var",
                 redis_prefix=f"test:{uuid.uuid4().hex[:12]}:", body_timeout_s=1.0)
    with serve(s) as base:
        host, port = base.split("//")[1].split(":")
        with socket.create_connection((host, int(port)), timeout=20) as sock:
            t0 = time.monotonic()
            sock.sendall(b"POST /v1/attributions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"queries\"")
            data = b""
            while chunk := sock.recv(65536):  # the server closes the connection after its answer
                data += chunk
            waited = time.monotonic() - t0
        assert data.startswith(b"HTTP/1.1 408"), data[:200]
        assert b'"path":"body"' in data and 0.9 < waited < 10, waited
        assert httpx.get(base + "/healthz").status_code == 200


def test_oversized_headers_are_431(services):
    open_, keyed, _ = services
    err = _shape(httpx.get(open_ + "/healthz", headers={"X-Big": "a" * 1_000_000}), 431)
    assert err["fields"][0] == {"path": "x-big", "in": "header", "reason": err["fields"][0]["reason"]}
    many = {f"X-H{i}": "1" for i in range(2000)}
    assert _shape(httpx.get(open_ + "/healthz", headers=many), 431)["fields"][0]["path"] == "headers"
    # before the key: an oversized request learns nothing about keys
    assert httpx.post(keyed + "/v1/attributions", headers={"X-Big": "a" * 20_000}).status_code == 431
    assert httpx.get(open_ + "/healthz", headers={"X-Ok": "a" * 8000}).status_code == 200
