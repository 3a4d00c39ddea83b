"""Bad input. A property-based fuzz of every operation of the API from its
own OpenAPI schema (``schemathesis``: valid and invalid requests) finds no
5xx and no answer that violates the documented schema; and the classic
hostile bodies (oversized, deeply nested, NaN/inf, wrong types, unknown ids)
each get a 4xx with the error body, never a 5xx.

Hand-written generators (``hypothesis``) then aim at what a schema fuzz does
not reach (issue 12): report dates in years 1 and 9999 with offsets, amounts
with huge exponents and NaN/Infinity, non-ASCII currencies and source ids,
deep nesting, invalid UTF-8, wrong content types, whitespace around keys.
Each answer is below 500 and a 4xx names the field or header at fault."""

from __future__ import annotations

import shutil
import socket
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import quote

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

from service.app import create_app  # noqa: E402
from service.reports import CURRENCIES  # noqa: E402
from service.settings import Settings  # noqa: E402

from ..service.util import REDIS_URL, drop_prefix, query, raw_request, serve  # noqa: E402

MAX_EXAMPLES = 50


@pytest.fixture(scope="module")
def live(tiny_store, tmp_path_factory):
    """One service for the module: a private store copy, its own key prefix."""
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(tiny_store, root / "store")
    prefix = f"test:fuzz:{uuid.uuid4().hex[:10]}:"
    s = Settings(_env_file=None, store=root / "store", redis_url=REDIS_URL, redis_prefix=prefix,
                 data_dir=root / "var", max_wait_ms=1.0, max_queries=8, max_body_bytes=50_000, max_top_k=50)
    with serve(s) as base:
        yield base
    drop_prefix(REDIS_URL, prefix)


# The schema the app serves at /openapi.json, taken from the app object itself (building an app does
# no I/O); the requests go to the live service. (``schemathesis.pytest.from_fixture`` does not work
# with pytest 9: it reads ``request.node._nodeid``.)
schema = schemathesis.openapi.from_dict(create_app(Settings(_env_file=None)).openapi())


SEEN: Counter = Counter()  # (operation, status) of every fuzz request


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_fuzz_no_5xx_and_answers_match_the_schema(case, live):
    r = case.call_and_validate(base_url=live, checks=[not_a_server_error, response_schema_conformance],
                               timeout=30)
    SEEN[(f"{case.operation.method.upper()} {case.operation.path}", r.status_code)] += 1


def test_fuzz_figures(figures):
    """Runs after the fuzz (file order): what it sent and what came back."""
    if not SEEN:
        pytest.skip("the fuzz did not run")
    by_status: Counter = Counter()
    for (_, status), n in SEEN.items():
        by_status[status] += n
    figures.append({"scenario": "schema fuzz (schemathesis, valid + invalid requests)",
                    "requests": sum(SEEN.values()), "operations": len({op for op, _ in SEEN}),
                    "status_counts": {str(k): v for k, v in sorted(by_status.items())},
                    "failed_requests": sum(n for st, n in by_status.items() if st >= 500),
                    "lost": 0, "double_counted": 0})
    assert all(st < 500 for st in by_status)


def _error(r: httpx.Response, status: int | tuple[int, ...]) -> dict:
    assert r.status_code in ((status,) if isinstance(status, int) else status), (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert err["status"] == r.status_code and "Traceback" not in r.text
    return err


def _post(base: str, content: bytes | str, **headers) -> httpx.Response:
    return httpx.post(base + "/v1/attributions", content=content,
                      headers={"content-type": "application/json", **headers}, timeout=30)


def test_oversized_bodies_get_413(live, train_x):
    big = b'{"queries": [' + b",".join([b'{"input": [' + b",".join([b"0.5"] * 64) + b"]}"] * 200) + b"]}"
    assert len(big) > 50_000
    _error(_post(live, big), 413)

    def chunks():  # no Content-Length: the limit applies to what is streamed
        for _ in range(100):
            yield b" " * 1000

    r = httpx.post(live + "/v1/attributions", content=chunks(), headers={"content-type": "application/json"})
    _error(r, 413)
    # a declared length far beyond the limit is refused before any of the body is read
    host, port = live.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/attributions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 999999999999\r\n\r\n{}")
        head = sock.recv(65536).split(b"\r\n", 1)[0]
    assert head.split()[1] in (b"400", b"413"), head


@pytest.mark.parametrize("depth", [100, 5_000, 24_000])
def test_deeply_nested_json_is_a_4xx(live, depth):
    for body in ("[" * depth + "]" * depth, '{"queries": ' + "[" * depth + "]" * depth + "}",
                 '{"a":' * depth + "1" + "}" * depth):
        r = _post(live, body)
        assert 400 <= r.status_code < 500, (depth, r.status_code, r.text[:200])
        assert _error(r, r.status_code).get("fields"), r.text[:200]  # names the field (or the body)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e39"])
def test_non_finite_numbers_are_422(live, token):
    values = ",".join(["0.5"] * 5 + [token] + ["0.5"] * 58)
    err = _error(_post(live, '{"queries": [{"input": [' + values + "]}]}"), 422)
    assert any(f["path"].startswith("queries[0].input") for f in err["fields"]), err


@pytest.mark.parametrize("bad", [
    {"queries": [{"input": "abc"}]},
    {"queries": [{"input": ["a"] * 64}]},
    {"queries": [{"input": [[0.5]] * 64}]},
    {"queries": [{"input": [{"x": 1}] * 64}]},
    {"queries": [{"input": [None] * 64}]},
    {"queries": [{"input": [True] * 64}]},
    {"queries": [{"input": [0.5] * 64, "target": "3"}]},
    {"queries": [{"input": [0.5] * 64, "target": 2.5}]},
    {"queries": [{"input": [0.5] * 64, "target": 10**30}]},
    {"queries": [{"input": [0.5] * 64, "target": -1}]},
    {"queries": [{"input": [0.5] * 64, "client_id": 7}]},
    {"queries": {"input": [0.5] * 64}},
    {"queries": [{"input": [0.5] * 64}], "top_k": "ten"},
    {"queries": [{"input": [0.5] * 64}], "top_k": 10**30},
    {"queries": [{"input": [0.5] * 64}], "record": "maybe"},
    {"queries": [{"input": [0.5] * 63}]},
    {"queries": [{"input": []}]},
    {"queries": [None]},
    {"queries": []},
    [],
    "queries",
    None,
])
def test_wrong_types_are_422(live, bad):
    _error(httpx.post(live + "/v1/attributions", json=bad, timeout=30), 422)


def test_not_json_and_wrong_content_type(live, train_x):
    for body in (b"", b"{", b"\xff\xfe\x00garbage", b'{"queries": [}', b"\x00" * 100):
        r = _post(live, body)
        assert 400 <= r.status_code < 500, (body, r.status_code)
    r = httpx.post(live + "/v1/attributions", content=b'{"queries": []}', headers={"content-type": "text/plain"})
    assert _named(r, 415) == ("content-type", "header")


def test_unknown_ids_are_4xx(live, train_x):
    _error(httpx.get(live + "/v1/sources/no-such-publisher"), 404)
    _error(httpx.post(live + "/v1/admin/reload", params={"version": "v999999"}), 404)
    _error(httpx.post(live + "/v1/admin/reload", params={"version": "../../etc"}), (404, 422))
    _error(httpx.get(live + "/v1/no-such-route"), 404)
    _error(httpx.delete(live + "/v1/attributions"), 405)
    r = httpx.get(live + "/v1/reports/compensation", params={"start": "yesterday", "end": "x", "amount": "-1",
                                                               "currency": "???"})
    _error(r, (400, 422))
    # an example id that does not exist cannot be asked for; a target beyond the classes is refused
    _error(httpx.post(live + "/v1/attributions", json={"queries": [query(train_x[0], target=10)]}), 422)


# ---- hand-written generators: what the schema fuzz does not reach (issue 12) ----------------------
FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
REPORT_FIELDS = {"start", "end", "amount", "currency", "format"}
TEXT = st.characters(exclude_categories=["Cs"])  # anything a URL can carry (UTF-8 encodable)


def _named(r: httpx.Response, status: int | None = None) -> tuple[str, str]:
    """Below 500; a 4xx in the error shape naming a field: -> its (path, in)."""
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if status is not None:
        assert r.status_code == status, (r.status_code, r.text[:300])
    err = _error(r, r.status_code)
    assert err.get("fields"), err
    f = err["fields"][0]
    assert err["message"].startswith(f["path"] + ": "), err
    return f["path"], f["in"]


@pytest.fixture(scope="module")
def keyed_live(tiny_store, tmp_path_factory):
    """A service with keys (``r-key`` may read reports, ``q-key`` may query)."""
    root = tmp_path_factory.mktemp("fuzz-keyed")
    prefix = f"test:fuzz:{uuid.uuid4().hex[:10]}:"
    s = Settings(_env_file=None, store=tiny_store, redis_url=REDIS_URL, redis_prefix=prefix, data_dir=root / "var",
                 max_wait_ms=1.0, max_body_bytes=50_000, query_keys=["q-key"], report_keys=["r-key"])
    with serve(s) as base:
        yield base
    drop_prefix(REDIS_URL, prefix)


_offsets = st.integers(-1439, 1439).map(lambda m: timezone(timedelta(minutes=m)))
DATES = st.one_of(
    st.sampled_from(["0001-01-01T00:00:00+05:00", "0001-01-01T00:00:00-05:00", "9999-12-31T23:00:00-05:00",
                     "9999-12-31T23:00:00+05:00", "9999-12-31T23:59:59.999999-23:59", "0001-01-01", "9999-12-31",
                     "1970-01-01", "1969-12-31T23:00:00Z", "9999-01-01", "2025-01-01T00:00:00+14:00"]),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59),
                 timezones=st.one_of(st.none(), st.just(UTC), _offsets)).map(lambda d: d.isoformat()),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23)).map(
        lambda d: d.replace(minute=0, second=0, microsecond=0).isoformat() + "Z"),
    st.text(TEXT, max_size=30),
)
AMOUNTS = st.one_of(
    st.sampled_from(["1e999999", "-1e-999999", "1e-999999", "NaN", "-NaN", "sNaN", "Infinity", "-Infinity", "inf",
                     "1E+999999999", "1e-9999999999", "9999999999999999.99", "1e18", "0e999999", "-0", "1_000",
                     "\u0661\u0660\u0660", "0x10", "1" * 200]),
    st.builds(lambda m, e: f"{m}e{e}", st.integers(-10**6, 10**20), st.integers(-10**7, 10**7)),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.text(TEXT, max_size=30),
)
CURRENCY_CODES = st.one_of(st.sampled_from(["EUR", "jpy", "KWD", "XYZ", "ÄÖÜ", "XAU", "€", "EU R", "ＥＵＲ"]),
                           st.text(TEXT, max_size=5))


def _in_range(r: httpx.Response) -> None:
    """A report's period lies in the documented range (years 1970 .. 9998, end up to 9999-01-01)."""
    if "json" not in r.headers["content-type"]:
        return
    rep = r.json()
    assert "1970-01-01T00:00:00Z" <= rep["start"] < rep["end"] <= "9999-01-01T00:00:00Z", rep
    assert len(rep["start"]) == len(rep["end"]) == 20, rep


@FUZZ
@given(start=DATES, end=DATES, amount=AMOUNTS, currency=CURRENCY_CODES,
       fmt=st.one_of(st.none(), st.sampled_from(["json", "csv", "xml", "ÄÖÜ"])))
def test_fuzz_report_parameters(live, start, end, amount, currency, fmt):
    params = {"start": start, "end": end, "amount": amount, "currency": currency}
    if fmt is not None:
        params["format"] = fmt
    r = httpx.get(live + "/v1/reports/compensation", params=params, timeout=30)
    if r.status_code == 200:
        _in_range(r)
    else:
        path, where = _named(r, 422)
        assert path in REPORT_FIELDS and where == "query", (path, where)


@FUZZ
@given(field=st.sampled_from(["start", "end"]), value=DATES)
def test_fuzz_one_bad_date(live, field, value):
    """Only one date varies: an answer other than 200 names exactly it."""
    params = {"start": "2025-01-01", "end": "2025-02-01", "amount": "100", "currency": "EUR", field: value}
    r = httpx.get(live + "/v1/reports/compensation", params=params, timeout=30)
    if r.status_code == 200:
        _in_range(r)
    else:
        assert _named(r, 422) == (field, "query")


@FUZZ
@given(amount=AMOUNTS, currency=st.sampled_from(["EUR", "JPY", "KWD"]))
def test_fuzz_one_bad_amount(live, amount, currency):
    params = {"start": "2025-01-01", "end": "2025-02-01", "amount": amount, "currency": currency}
    r = httpx.get(live + "/v1/reports/compensation", params=params, timeout=30)
    if r.status_code == 200:
        assert 0 <= r.json()["pool_minor"] < 10**18
    else:
        assert _named(r, 422) == ("amount", "query")


@FUZZ
@given(currency=CURRENCY_CODES)
def test_fuzz_one_bad_currency(live, currency):
    params = {"start": "2025-01-01", "end": "2025-02-01", "amount": "0", "currency": currency}
    r = httpx.get(live + "/v1/reports/compensation", params=params, timeout=30)
    if r.status_code == 200:
        assert r.json()["currency"] in CURRENCIES  # shipped ISO-4217 codes only (not "XYZ", not "ÄÖÜ")
    else:
        assert _named(r, 422) == ("currency", "query")


@FUZZ
@given(sid=st.text(st.characters(exclude_categories=["Cs"], exclude_characters="/"), min_size=1, max_size=40)
       .filter(lambda s: s.strip(".")),
       inm=st.sampled_from([None, "*", '"x", *', 'W/"nope"']))
def test_fuzz_source_ids(live, sid, inm):
    known = {x["id"] for x in httpx.get(live + "/v1/sources", timeout=30).json()["sources"]}
    r = httpx.get(live + "/v1/sources/" + quote(sid, safe=""), headers={"If-None-Match": inm} if inm else {},
                  timeout=30)
    if sid in known:
        assert r.status_code in (200, 304), r.text[:300]
    else:  # an unknown id is 404, whatever If-None-Match says (``*`` matches only what exists)
        assert _named(r, 404) == ("source_id", "path")


@FUZZ
@given(depth=st.integers(1_000, 30_000), opener=st.sampled_from(["[", '{"a":', '{"queries":[', "[{}, "]))
def test_fuzz_deep_nesting(live, depth, opener):
    closer = {"[": "]", '{"a":': "}", '{"queries":[': "]}", "[{}, ": "]"}[opener]
    r = _post(live, opener * depth + "1" + closer * depth)
    path, where = _named(r)
    assert r.status_code in (413, 422) and where == "body"
    if depth >= 5_000:  # beyond what the parser nests (even with hypothesis's raised recursion limit)
        assert path == "body", r.text[:300]


@FUZZ
@given(junk=st.binary(min_size=1, max_size=40))
def test_fuzz_invalid_utf8(live, junk):
    body = b'{"queries": [{"input": [0.5], "client_id": "' + junk + b'"}]}'
    r = _post(live, body)
    try:
        junk.decode("utf-8")
    except UnicodeDecodeError:
        assert _named(r, 422) == ("body", "body")
        assert r.json()["error"]["fields"][0]["reason"] == "body is not valid UTF-8"
    else:
        _named(r)  # valid UTF-8: not JSON, or the wrong input length: a 4xx naming a field


def _is_json(ct: str) -> bool:
    media = ct.split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


@FUZZ
@given(ctype=st.one_of(
    st.sampled_from(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                     "application/xml", "text/json", "application/jsonx", "application/json; charset=utf-8",
                     "APPLICATION/JSON", "application/ld+json", "*/*", "json", ""]),
    st.from_regex(r"\A[a-z]{1,12}/[a-z0-9.+-]{1,16}(; ?[a-z]{1,8}=[a-z0-9-]{1,8})?\Z")))
def test_fuzz_content_types(live, train_x, ctype):
    body = httpx.Request("POST", "/", json={"queries": [query(train_x[0])], "record": False}).content
    r = httpx.post(live + "/v1/attributions", content=body, headers={"content-type": ctype}, timeout=30)
    if _is_json(ctype):
        assert r.status_code == 200, (ctype, r.text[:200])
    else:
        assert _named(r, 415) == ("content-type", "header"), ctype


WS = st.text(st.sampled_from(" \t"), max_size=3)


@FUZZ
@given(before=WS, after=WS, bearer=st.booleans(), scheme=st.sampled_from(["Bearer", "bearer", "BEARER"]))
def test_fuzz_whitespace_around_keys(keyed_live, before, after, bearer, scheme):
    """Surrounding whitespace is no part of the key, in either header."""
    value = f"{scheme} {before}r-key{after}" if bearer else f"{before}r-key{after}"
    header = ("Authorization: " if bearer else "X-API-Key: ") + value
    req = f"GET /v1/sources HTTP/1.1\r\nHost: x\r\n{header}\r\nConnection: close\r\n\r\n".encode()
    assert raw_request(keyed_live, req)[0] == 200, header


@FUZZ
@given(body=st.one_of(st.binary(max_size=200), st.just(b"[" * 20_000), st.just(b"x" * 60_000)),
       ctype=st.sampled_from(["application/json", "text/plain", None]),
       key=st.sampled_from([None, "", "nope", "r-key"]))
def test_fuzz_no_key_is_401_or_403_whatever_the_body(keyed_live, body, ctype, key):
    headers = ({"content-type": ctype} if ctype else {}) | ({"X-API-Key": key} if key is not None else {})
    r = httpx.post(keyed_live + "/v1/attributions", content=body, headers=headers, timeout=30)
    assert r.status_code == (401 if not key else 403), (r.status_code, r.text[:200])
    assert r.json()["error"]["code"] in ("unauthorized", "forbidden")
