"""Bad input. A property-based fuzz of every operation of the API from its
own OpenAPI schema (``schemathesis``: valid and invalid requests) finds no
5xx and no answer that violates the documented schema; and the classic
hostile bodies (oversized, deeply nested, NaN/inf, wrong types, unknown ids)
each get a 4xx with the error body, never a 5xx."""

from __future__ import annotations

import shutil
import socket
import uuid
from collections import Counter

import httpx
import pytest
import redis

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

from service.app import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402

from ..service.util import REDIS_URL, query, serve  # noqa: E402

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
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


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
    assert 400 <= r.status_code < 500


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
