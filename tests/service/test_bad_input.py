"""Bad input a new user sends (issue 12): every case is a 4xx in the error
shape that names the field (or header), never a 5xx.

1. report dates outside 1970..9999 (with offsets that overflow a datetime),
2. amounts beyond the pool maximum (``1e999999``), 3. unknown currencies,
4. no key: 401 before the body is read, parsed or measured,
5. unparsable bodies name ``body``; non-JSON bodies are 415 on ``content-type``,
6. ``If-None-Match: *`` on an unknown source is 404,
7. surrounding whitespace of a key is ignored in both headers."""

from __future__ import annotations

import uuid

import httpx
import pytest
import redis

from service.settings import Settings

from .util import REDIS_URL, query, raw_request, serve

OK = {"start": "2025-01-01", "end": "2025-02-01", "amount": "100", "currency": "EUR"}
KEYS = dict(query_keys=["q-key"], report_keys=["r-key"], publisher_keys={"p0-key": "publisher-00"})


def _named(r: httpx.Response, status: int, path: str, where: str) -> dict:
    """The answer is ``status`` in the error shape and names ``path`` (in ``where``)."""
    assert r.status_code == status, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert err["status"] == status and "Traceback" not in r.text
    assert (path, where) in [(f["path"], f["in"]) for f in err.get("fields", [])], err
    assert err["message"].startswith(path + ": "), err
    return err


@pytest.fixture(scope="module")
def services(tiny_store, tmp_path_factory):
    """(open service, keyed service): one of each for the module."""
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    common = dict(_env_file=None, store=tiny_store, redis_url=REDIS_URL, redis_prefix=prefix, max_wait_ms=1.0)
    with serve(Settings(**common, data_dir=tmp_path_factory.mktemp("open"))) as open_, \
            serve(Settings(**common, data_dir=tmp_path_factory.mktemp("keyed"), **KEYS)) as keyed:
        yield open_, keyed
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="module")
def base(services):
    return services[0]


@pytest.fixture(scope="module")
def keyed(services):
    return services[1]


# ---- 1. report dates -------------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("end", "9999-12-31T23:00:00-05:00"),   # past year 9999 in UTC: overflowed before
    ("start", "0001-01-01T00:00:00+05:00"),  # before year 1 in UTC: overflowed before
    ("start", "0001-01-01"),
    ("start", "1969-12-31T23:00:00Z"),
    ("end", "9999-01-01T01:00:00Z"),
    ("end", "9999-12-31T23:00:00+05:00"),
])
def test_dates_outside_the_accepted_range_are_422(base, field, value):
    r = httpx.get(base + "/v1/reports/compensation", params={**OK, field: value})
    err = _named(r, 422, field, "query")
    assert "1970-01-01T00:00:00Z .. 9999-01-01T00:00:00Z" in err["message"]


def test_the_whole_accepted_range_is_a_report(base):
    r = httpx.get(base + "/v1/reports/compensation",
                  params={**OK, "start": "1970-01-01", "end": "9999-01-01T05:00:00+05:00"})
    assert r.status_code == 200, r.text
    assert (r.json()["start"], r.json()["end"]) == ("1970-01-01T00:00:00Z", "9999-01-01T00:00:00Z")
    r = httpx.get(base + "/v1/reports/compensation", params={**OK, "end": "9999-01-01", "format": "csv"})
    assert r.status_code == 200 and "9999-01-01" in r.headers["content-disposition"]


# ---- 2. amounts --------------------------------------------------------------
@pytest.mark.parametrize("amount,currency", [
    ("1e999999", "EUR"), ("1e999999", "JPY"), ("1e-999999", "EUR"), ("-1e-999999", "EUR"), ("1e-9999999999", "KWD"),
    ("NaN", "EUR"), ("sNaN", "EUR"), ("Infinity", "EUR"), ("-Infinity", "EUR"),
    ("10000000000000000", "EUR"), ("1000000000000000000", "JPY"), ("1e15", "KWD"),
    ("1_000", "EUR"), ("\u0661\u0660\u0660", "EUR"), ("1" * 65, "JPY"), ("0x10", "EUR"),
])
def test_amounts_beyond_the_pool_maximum_or_not_decimal_are_422(base, amount, currency):
    r = httpx.get(base + "/v1/reports/compensation", params={**OK, "amount": amount, "currency": currency})
    _named(r, 422, "amount", "query")


def test_the_largest_pool_is_exact(base):
    url = base + "/v1/reports/compensation"
    r = httpx.get(url, params={**OK, "amount": "9999999999999999.99"})
    assert r.status_code == 200 and r.json()["pool_minor"] == 10**18 - 1 and r.json()["pool"] == "9999999999999999.99"
    assert httpx.get(url, params={**OK, "amount": "0e999999"}).json()["pool_minor"] == 0
    assert "18 digits" in _named(httpx.get(url, params={**OK, "amount": "1e16"}), 422, "amount", "query")["message"]


# ---- 3. currencies -------------------------------------------------------------
@pytest.mark.parametrize("currency", ["XYZ", "ÄÖÜ", "XAU", "XXX", "E1R", "", "EURO", "€"])
def test_unknown_currencies_are_422(base, currency):
    r = httpx.get(base + "/v1/reports/compensation", params={**OK, "currency": currency})
    _named(r, 422, "currency", "query")


def test_known_currencies_keep_their_minor_units(base):
    url = base + "/v1/reports/compensation"
    for currency, amount, minor in [("eur", "1.25", 125), ("JPY", "100", 100), ("KWD", "1.001", 1001),
                                    (" usd ", "2", 200), ("CLF", "1.0001", 10001)]:
        r = httpx.get(url, params={**OK, "currency": currency, "amount": amount})
        assert r.status_code == 200, (currency, r.text)
        assert (r.json()["currency"], r.json()["pool_minor"]) == (currency.strip().upper(), minor)
    _named(httpx.get(url, params={**OK, "currency": "JPY", "amount": "1.5"}), 422, "amount", "query")


# ---- 4. the key comes before the body -------------------------------------------
def test_no_key_is_401_before_any_body_work(keyed, train_x):
    url = keyed + "/v1/attributions"
    json_ct = {"content-type": "application/json"}
    for content, headers in [(b'{"queries": [', json_ct), (b'{"queries": []}', json_ct),
                             (b"x" * 2_000_000, json_ct), ("[" * 10_000, json_ct),
                             (b"queries=1", {"content-type": "application/x-www-form-urlencoded"}),
                             (b"\xff\xfe", {})]:
        r = httpx.post(url, content=content, headers=headers, timeout=30)
        assert r.status_code == 401, (content[:20], r.status_code, r.text[:200])
        assert r.json()["error"]["code"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
        wrong = httpx.post(url, content=content, headers={**headers, "X-API-Key": "nope"}, timeout=30)
        lacking = httpx.post(url, content=content, headers={**headers, "X-API-Key": "r-key"}, timeout=30)
        assert wrong.status_code == lacking.status_code == 403, (wrong.text, lacking.text)
    # with the key, the body's own faults
    good = {"X-API-Key": "q-key", **json_ct}
    _named(httpx.post(url, content=b"x" * 2_000_000, headers=good, timeout=30), 413, "body", "body")
    _named(httpx.post(url, content=b'{"queries": [', headers=good), 422, "body", "body")
    assert httpx.post(url, json={"queries": [query(train_x[0])]}, headers={"X-API-Key": "q-key"}).status_code == 200
    # a declared length far beyond the limit, no body sent: still 401 first
    status, _ = raw_request(keyed, b"POST /v1/attributions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            b"Content-Length: 999999999\r\nConnection: close\r\n\r\n")
    assert status == 401


def test_open_service_checks_the_body_as_before(base):
    r = httpx.post(base + "/v1/attributions", content=b'{"queries": [', headers={"content-type": "application/json"})
    _named(r, 422, "body", "body")
    r = httpx.post(base + "/v1/attributions", content=b"x" * 2_000_000, headers={"content-type": "application/json"})
    _named(r, 413, "body", "body")


# ---- 5. bodies that are not JSON ------------------------------------------------------
@pytest.mark.parametrize("content,reason", [
    ("[" * 10_000 + "]" * 10_000, "invalid JSON: nesting too deep"),
    ('{"queries": ' + "[" * 10_000 + "]" * 10_000 + "}", "invalid JSON: nesting too deep"),
    ('{"a":' * 5_000 + "1" + "}" * 5_000, "invalid JSON: nesting too deep"),
    (b'{"queries": [{"input": [0.5], "client_id": "\xff\xfe"}]}', "body is not valid UTF-8"),
    (b'{"queries": [{"input": [0.5], "client_id": "\xc3\x28"}]}', "body is not valid UTF-8"),
])
def test_unparsable_bodies_name_body_and_the_reason(base, content, reason):
    r = httpx.post(base + "/v1/attributions", content=content, headers={"content-type": "application/json"})
    err = _named(r, 422, "body", "body")
    assert err["code"] == "invalid_request" and err["fields"][0]["reason"] == reason, err


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          "application/xml", "text/json", None])
def test_non_json_bodies_are_415_naming_the_content_type(base, train_x, content_type):
    body = httpx.Request("POST", "/", json={"queries": [query(train_x[0])]}).content
    headers = {} if content_type is None else {"content-type": content_type}
    r = httpx.post(base + "/v1/attributions", content=body, headers=headers)
    err = _named(r, 415, "content-type", "header")
    assert err["code"] == "unsupported_media_type" and "application/json" in err["fields"][0]["reason"]


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON", "application/merge-patch+json"])
def test_json_content_types_are_accepted(base, train_x, content_type):
    body = httpx.Request("POST", "/", json={"queries": [query(train_x[0])], "record": False}).content
    r = httpx.post(base + "/v1/attributions", content=body, headers={"content-type": content_type})
    assert r.status_code == 200, r.text


def test_no_body_and_no_content_type_is_422_on_body(base):
    _named(httpx.post(base + "/v1/attributions"), 422, "body", "body")


# ---- 6. If-None-Match: * --------------------------------------------------------------
def test_if_none_match_star_only_matches_what_exists(base):
    star = {"If-None-Match": "*"}
    r = httpx.get(base + "/v1/sources/no-such-publisher", headers=star)
    _named(r, 404, "source_id", "path")
    _named(httpx.get(base + "/v1/sources/no-such-publisher", headers={"If-None-Match": '"x", *'}), 404,
           "source_id", "path")
    r = httpx.get(base + "/v1/sources/publisher-00", headers=star)
    assert r.status_code == 304 and r.headers["etag"]
    assert httpx.get(base + "/v1/sources", headers=star).status_code == 304
    tag = httpx.get(base + "/v1/sources/publisher-00").headers["etag"]
    assert httpx.get(base + "/v1/sources/publisher-00", headers={"If-None-Match": tag}).status_code == 304


# ---- 7. whitespace around a key -----------------------------------------------------------
def _get_sources(header: bytes) -> bytes:
    return b"GET /v1/sources HTTP/1.1\r\nHost: x\r\n" + header + b"\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize("header", [b"X-API-Key: r-key ", b"X-API-Key:   r-key\t", b"Authorization: Bearer r-key ",
                                    b"Authorization: bearer \t r-key  ", b"X-API-Key: r-key"])
def test_surrounding_whitespace_of_a_key_is_ignored_in_both_headers(keyed, header):
    status, body = raw_request(keyed, _get_sources(header))
    assert status == 200, body[:200]


def test_whitespace_inside_or_only_is_not_a_key(keyed):
    for header in (b"X-API-Key: r- key", b"X-API-Key:  ", b"Authorization: Bearer  "):
        status, _ = raw_request(keyed, _get_sources(header))
        assert status in (401, 403), header
    assert httpx.get(keyed + "/v1/sources", headers={"X-API-Key": "r-key"}).status_code == 200


def test_configured_keys_are_stripped_too(settings_for):
    from service.auth import KeyRing

    ring = KeyRing(settings_for(report_keys=[" r-key "], publisher_keys={"p-key ": "publisher-00"}))
    assert ring.lookup("r-key") is not None and ring.lookup(" r-key ") is None
    assert ring.lookup("p-key").source == "publisher-00"


def test_publisher_asking_for_a_non_ascii_id_is_403(keyed):
    for sid in ("ÄÖÜ", "publisher-0\u0660", "\u2603"):
        r = httpx.get(keyed + f"/v1/sources/{sid}", headers={"X-API-Key": "p0-key"})
        assert r.status_code == 403, (sid, r.status_code, r.text[:200])
    r = httpx.get(keyed + "/v1/sources/ÄÖÜ", headers={"X-API-Key": "r-key"})
    _named(r, 404, "source_id", "path")


def test_settings_md_lists_exactly_the_accepted_currencies():
    import re
    from pathlib import Path

    from service.reports import CURRENCIES

    doc = (Path(__file__).parents[2] / "service" / "SETTINGS.md").read_text()
    listed = doc.split("Accepted codes:", 1)[1].split("\n\n", 2)[1]
    assert set(re.findall(r"`([A-Z]{3})`", listed)) == CURRENCIES
