"""Integers too long for Python (issue 28, row 5): a number of more than
``sys.get_int_max_str_digits()`` (4,300) digits anywhere in a body is a
422 naming the field it stands in, never a 500 -- and so are long integers
Python still reads (400 digits: beyond a float) -- for attributions and
what-ifs alike."""

from __future__ import annotations

import sys
import uuid

import httpx
import pytest
import redis

from service.settings import Settings

from .util import REDIS_URL, serve

LIMIT = sys.get_int_max_str_digits() or 4300
SIZES = [LIMIT + 1, 5001, 400]  # digits: past Python's limit, the issue's, and a float's range only


@pytest.fixture(scope="module")
def base(tiny_store, tmp_path_factory):
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    s = Settings(_env_file=None, store=tiny_store, redis_url=REDIS_URL, redis_prefix=prefix, max_wait_ms=1.0,
                 data_dir=tmp_path_factory.mktemp("huge"))
    with serve(s) as b:
        yield b
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="module")
def source(base) -> str:
    return httpx.get(base + "/v1/store").json()["source_ids"][0]


def _q(**over) -> str:
    q = {"input": "[" + ",".join(["0.5"] * 64) + "]", **over}
    return "{" + ",".join(f'"{k}":{v}' for k, v in q.items()) + "}"


def _input_with(big: str) -> str:
    return "[0.5,0.5,0.5," + big + "," + ",".join(["0.5"] * 60) + "]"


# (endpoint, body with N where the number goes and SRC a source id, the field the answer names)
Q = _q()
CASES = [
    ("attributions", '{"queries":[' + Q + '],"top_k":N}', "top_k"),
    ("attributions", '{"queries":[' + Q + '],"top_k":-N}', "top_k"),
    ("attributions", '{"queries":[' + _q(target="N") + ']}', "queries[0].target"),
    ("attributions", '{"queries":[' + _q(input=_input_with("N")) + ']}', "queries[0].input[3]"),
    ("attributions", '{"queries":[' + _q(client_id="N") + ']}', "queries[0].client_id"),
    ("attributions", '{"queries":[' + Q + '],"colour":N}', "colour"),
    ("attributions", '{"queries":[' + Q + '],"record":N}', "record"),
    ("attributions", '{"queries":[' + Q + '],"granularity":N}', "granularity"),
    ("attributions", '{"queries":N}', "queries"),
    ("whatif", '{"sample":N,"remove":["SRC"]}', "sample"),
    ("whatif", '{"sample":4,"weights":{"SRC":N}}', "weights.SRC"),
    ("whatif", '{"sample":4,"remove":[N]}', "remove[0]"),
    ("whatif", '{"queries":[' + _q(input=_input_with("N")) + '],"remove":["SRC"]}', "queries[0].input[3]"),
    ("whatif", '{"queries":[' + Q + '],"remove":["SRC"],"colour":N}', "colour"),
]


@pytest.mark.parametrize("digits", SIZES)
@pytest.mark.parametrize(("endpoint", "body", "field"), CASES, ids=[c[2] + "-" + c[0] for c in CASES])
def test_huge_integers_are_422_naming_the_field(base, source, endpoint, body, field, digits):
    raw = body.replace("SRC", source).replace("N", "9" * digits).encode()
    r = httpx.post(f"{base}/v1/{endpoint}", content=raw, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 422, (r.status_code, r.text[:300])
    err = r.json()["error"]
    path = field.replace("SRC", source)
    assert path in [f["path"] for f in err["fields"]], err
    assert "Traceback" not in r.text and len(r.content) < 4096


def test_huge_integer_deep_inside_an_unknown_field_names_its_path(base):
    raw = ('{"queries":[' + _q() + '],"extra":{"a":[1,{"b":' + "7" * (LIMIT + 1) + '}]}}').encode()
    r = httpx.post(f"{base}/v1/attributions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text[:300]
    assert [f["path"] for f in r.json()["error"]["fields"]] in (["extra"], ["extra.a[1].b"])
