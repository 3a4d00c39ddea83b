"""Bad input against a text store (issue 10): generated text and
prompt/completion queries (any Unicode, control characters, NUL, lone
surrogates escaped in JSON, whitespace only, very long, punctuation only,
numbers and nulls where strings belong, extra fields) sent to a real
uvicorn over loopback never get a 5xx; a 4xx names the field; a 200 answers
every query with finite numbers. The service keeps answering a good query
afterwards with the same result as before the fuzz."""

from __future__ import annotations

import json
import math
import uuid

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.settings import Settings

from ..service.util import REDIS_URL, drop_prefix, serve
from ..text_corpus import TINY_TEXT_STORE, build_text_store

MAX_EXAMPLES = 60


@pytest.fixture(scope="module")
def text_live(tmp_path_factory):
    root = tmp_path_factory.mktemp("text-fuzz")
    build_text_store(root, *TINY_TEXT_STORE)
    prefix = f"test:textfuzz:{uuid.uuid4().hex[:10]}:"
    s = Settings(_env_file=None, store=root / "store", redis_url=REDIS_URL, redis_prefix=prefix,
                 data_dir=root / "var", max_wait_ms=1.0, max_queries=8, max_body_bytes=200_000)
    with serve(s) as base:
        yield base
    drop_prefix(REDIS_URL, prefix)


words = st.sampled_from(["w1", "w2", "s0x1", "s1x3", "W5", "zzz", ",", ".", "é", "日本", "\u200b", "\x00", "\t",
                         "\n", "🙂", "—", "0", "-1e309", "NaN"])
texts = st.one_of(
    st.text(max_size=300),
    st.lists(words, max_size=120).map(" ".join),
    st.just(""), st.just("   "), st.just("w1 " * 2000),
)
bad_values = st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.lists(st.integers(), max_size=3),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.booleans())
query = st.one_of(
    st.fixed_dictionaries({"text": texts}, optional={"pretokenized": st.booleans(), "client_id": st.text(max_size=20)}),
    st.fixed_dictionaries({"prompt": texts, "completion": texts}),
    st.fixed_dictionaries({"text": bad_values}),
    st.fixed_dictionaries({"prompt": texts}),
    st.fixed_dictionaries({"text": texts, "input": st.lists(st.floats(), max_size=3)}),
    st.dictionaries(st.text(max_size=8), texts, max_size=3),
)
body = st.fixed_dictionaries(
    {"queries": st.lists(query, min_size=0, max_size=10)},
    optional={"granularity": st.sampled_from(["sources", "examples", "both", "all", ""]),
              "top_k": st.one_of(st.integers(-3, 2000), st.floats(), st.text(max_size=3)),
              "output": st.sampled_from(["logprob", "loss", "margin", None, 7]),
              "record": st.booleans()},
)


def _check(r: httpx.Response) -> None:
    assert r.status_code < 500, r.text[:500]
    assert "Traceback" not in r.text
    if r.status_code == 200:
        for a in r.json()["attributions"]:
            assert math.isfinite(a["logprob"])
            assert all(math.isfinite(s["score"]) for s in a["sources"] or [])
    else:
        err = r.json()["error"]
        assert err["status"] == r.status_code
        if r.status_code == 422:
            assert err.get("fields"), r.text[:500]
            assert all(f["path"] for f in err["fields"])


@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=body)
def test_generated_text_requests_never_500(text_live, payload):
    raw = json.dumps(payload, ensure_ascii=False).encode("utf-8", "surrogatepass")
    r = httpx.post(text_live + "/v1/attributions", content=raw, headers={"content-type": "application/json"},
                   timeout=60)
    _check(r)


def test_escaped_lone_surrogates_and_nul_are_refused_or_scored(text_live):
    good = {"queries": [{"text": "w1 w2 s0x1 w5"}], "record": False}
    before = httpx.post(text_live + "/v1/attributions", json=good, timeout=60)
    assert before.status_code == 200
    for raw in (b'{"queries": [{"text": "w1 \\ud800 w2"}]}', b'{"queries": [{"text": "w1\\u0000w2 w3"}]}',
                b'{"queries": [{"prompt": "\\udfff", "completion": "w1"}]}'):
        _check(httpx.post(text_live + "/v1/attributions", content=raw,
                          headers={"content-type": "application/json"}, timeout=60))
    after = httpx.post(text_live + "/v1/attributions", json=good, timeout=60)
    assert after.status_code == 200
    a, b = before.json()["attributions"][0], after.json()["attributions"][0]
    assert a["logprob"] == b["logprob"] and a["sources"] == b["sources"]
