"""Large and many-element bodies (issue 19, finding 3): counts and sizes are
checked before element-wise validation, error answers are bounded (the first
20 fields and a count of the rest), and ``/healthz`` stays fast while
megabyte bodies are being refused."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import httpx
import pytest

from service.errors import MAX_FIELD_ERRORS

from .util import query, serve

JSON = {"content-type": "application/json"}
ONES = b'{"queries":[' + b",".join([b"1"] * 490_000) + b"]}"  # 980 KB
EMPTIES = b'{"queries":[' + b",".join([b"{}"] * 300_000) + b"]}"  # 900 KB


@pytest.fixture(scope="module")
def base(tiny_store, tmp_path_factory):
    from .util import settings_factory

    s = settings_factory(tiny_store, "test:large:", tmp_path_factory.mktemp("large"))()
    with serve(s) as url:
        yield url


def _named(r: httpx.Response, path: str) -> dict:
    assert r.status_code == 422, (r.status_code, r.text[:300])
    assert len(r.content) < 4000, len(r.content)
    err = r.json()["error"]
    assert err["fields"][0]["path"] == path and err["message"].startswith(path + ": "), err
    return err


@pytest.mark.parametrize("route", ["/v1/attributions", "/v1/whatif"])
@pytest.mark.parametrize("body", [ONES, EMPTIES], ids=["ones", "empty-objects"])
def test_huge_query_lists_are_one_small_422(base, route, body):
    t0 = time.perf_counter()
    err = _named(httpx.post(base + route, content=body, headers=JSON, timeout=60), "queries")
    assert "at most 64 queries" in err["message"]
    assert time.perf_counter() - t0 < 5  # was 8-9 s; the real bound is the /healthz test below


def test_sizes_inside_a_query_and_a_whatif_are_checked_first(base, train_x):
    r = httpx.post(base + "/v1/attributions", json={"queries": [{"input": [0.5] * 100_000}]})
    assert "expected 64 values, got 100000" in _named(r, "queries[0].input")["message"]
    r = httpx.post(base + "/v1/whatif", json={"sample": 3, "weights": {f"s{i}": 1 for i in range(50_000)}})
    _named(r, "weights")
    r = httpx.post(base + "/v1/whatif", json={"sample": 3, "remove": ["publisher-00"] * 50_000})
    _named(r, "remove")
    r = httpx.post(base + "/v1/attributions", json={"queries": [query(train_x[0])], **{f"x{i}": 1 for i in range(9)}})
    assert "and 8 more" in _named(r, "x0")["message"]


def test_error_answers_list_at_most_20_fields_and_count_the_rest(base):
    body = {"queries": [{"input": ["a"] * 64} for _ in range(64)]}  # 4,096 bad values
    r = httpx.post(base + "/v1/attributions", json=body)
    err = _named(r, "queries[0].input[0]")
    assert len(err["fields"]) == MAX_FIELD_ERRORS and err["fields_omitted"] == 64 * 64 - MAX_FIELD_ERRORS


SENDER = """
import http.client, sys, time
host, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
bodies = [b'{"queries":[' + b",".join([b"1"] * 490000) + b"]}", b'{"queries":[' + b",".join([b"{}"] * 300000) + b"]}"]
end, n = time.time() + secs, 0
while time.time() < end:
    c = http.client.HTTPConnection(host, port, timeout=60)
    c.request("POST", ("/v1/attributions", "/v1/whatif")[n % 2], body=bodies[(n // 2) % 2],
              headers={"content-type": "application/json"})
    r = c.getresponse(); r.read(); c.close()
    assert r.status == 422, r.status
    n += 1
print(n)
"""


def _probe(c: httpx.Client, until, most: int = 200) -> list[float]:
    """``/healthz`` every 20 ms on one kept-alive connection while ``until()``; latencies, ms."""
    lat = []
    while until() and len(lat) < most:
        t0 = time.perf_counter()
        assert c.get("/healthz").status_code == 200
        lat.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.02)
    return sorted(lat)


def _p90(lat: list[float]) -> float:
    return lat[int(0.9 * (len(lat) - 1))]


def test_healthz_stays_fast_while_megabyte_bodies_are_refused(base):
    """While megabyte bodies arrive back to back and are refused (422),
    ``/healthz`` is answered about as fast as on the same server without
    them, measured just before in this test on this (maybe busy) machine: its
    median within 5x the quiet one (or 50 ms) and its p90 within 10x (or
    250 ms). Before the counts came first (issue 19) every such body held the
    event loop for 8-9 s, so the probes waited seconds. (The speed on an idle
    host: SETTINGS.md, Bad input: median 5.6 ms, p90 11.6 ms.)"""
    host, port = base.split("//")[1].split(":")
    with httpx.Client(base_url=base, timeout=60) as c:
        c.get("/healthz")
        n = iter(range(40))
        quiet = _probe(c, lambda: next(n, None) is not None)
        sender = subprocess.Popen([sys.executable, "-c", SENDER, host, port, "6"], stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(0.5)
            lat = _probe(c, lambda: sender.poll() is None)
        finally:
            out, _ = sender.communicate(timeout=120)
    assert sender.returncode == 0 and int(out) >= 4, out  # big bodies were being refused all along
    median, p90 = statistics.median(lat), _p90(lat)
    print(f"healthz under 1 MB bodies: {len(lat)} probes, median {median:.1f} ms, p90 {p90:.1f} ms, "
          f"max {lat[-1]:.1f} ms; {out.strip()} big requests; without them: median "
          f"{statistics.median(quiet):.1f} ms, p90 {_p90(quiet):.1f} ms")
    assert len(lat) >= 20, lat
    assert median < max(50.0, 5 * statistics.median(quiet)), (lat, quiet)
    assert p90 < max(250.0, 10 * _p90(quiet)), (lat, quiet)
