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
