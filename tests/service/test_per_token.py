"""``"per_token": true`` on ``POST /v1/attributions`` (issue 27): each scored
token's piece, characters, log-probability and top sources, and the spans of
tokens with the same top source, over a real uvicorn and Redis on the tiny
``hf`` and ``gpt`` stores. The sequence's score is the mean of the tokens'
scores; the pieces join back into the scored text (the completion, for a
prompt + completion query) and the spans tile it; off, the answer is the one
of before; batched = alone; bad values are 422s naming the field."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from .hf_store import fit_words
from .test_hf import _fields, _fire
from .util import serve, strip_volatile

HF_QUERIES = [{"text": "W1 w2 café 😀 日本語 e\u0301 w5", "client_id": "a"},
              {"prompt": "w3 w4", "completion": " s1x2 s1x4 w9"},
              {"text": "s2x1   s2x2 w0  w1", "pretokenized": True}]


def _post(base: str, body: dict) -> httpx.Response:
    return httpx.post(base + "/v1/attributions", json=body, timeout=60)


def _scored_text(q: dict) -> str:
    return q["completion"] if "prompt" in q else q["text"]


def _check_answer(a: dict, q: dict, n_sources: int):
    """Pieces, spans and the mean, for an answer read with token_top_k = every source."""
    pt, text = a["per_token"], _scored_text(q)
    assert len(pt) == a["n_targets"] == len(a["token_logprobs"])
    assert [t["logprob"] for t in pt] == a["token_logprobs"]
    assert all(text[t["start_char"]:t["end_char"]] == t["piece"] for t in pt)
    assert all(x["end_char"] == y["start_char"] for x, y in zip(pt, pt[1:], strict=False))
    start = 0 if "prompt" in q else pt[0]["start_char"]
    assert pt[0]["start_char"] == start and pt[-1]["end_char"] == len(text)
    assert "".join(t["piece"] for t in pt) == text[start:]  # the completion, or all but the first token
    # spans: consecutive tokens with the same top source, tiling the scored characters
    sp = a["spans"]
    assert sp[0]["start_char"] == start and sp[-1]["end_char"] == len(text)
    assert all(x["end_char"] == y["start_char"] and x["source"] != y["source"] for x, y in zip(sp, sp[1:],
                                                                                             strict=False))
    assert sum(s["n_tokens"] for s in sp) == len(pt)
    i = 0
    for s in sp:
        run = pt[i:i + s["n_tokens"]]
        assert {t["sources"][0]["id"] for t in run} == {s["source"]}
        assert s["score"] == pytest.approx(np.mean([t["sources"][0]["score"] for t in run]), rel=1e-9)
        i += s["n_tokens"]
    # the sequence's score of each source is the mean of its tokens' scores
    assert all(len(t["sources"]) == n_sources for t in pt)
    seq = {s["id"]: s["score"] for s in a["sources"]}
    assert len(seq) == n_sources
    scale = max(abs(v) for v in seq.values())
    for sid, v in seq.items():
        mean = np.mean([next(x["score"] for x in t["sources"] if x["id"] == sid) for t in pt])
        assert mean == pytest.approx(v, rel=1e-4, abs=1e-5 * scale)


def test_hf_per_token_answers(hf_settings):
    with serve(hf_settings()) as base:
        body = {"queries": HF_QUERIES, "granularity": "both", "top_k": 3, "record": False}
        on = _post(base, {**body, "per_token": True, "token_top_k": 3})
        assert on.status_code == 200, on.text
        for a, q in zip(on.json()["attributions"], HF_QUERIES, strict=True):
            _check_answer(a, q, 3)
            assert not any("\ufffd" in t["piece"] for t in a["per_token"])
        # the default token_top_k (3) and another order
        neg = _post(base, {**body, "per_token": True, "order": "negative"}).json()["attributions"][0]
        assert all(len(t["sources"]) == 3 for t in neg["per_token"])
        assert all(t["sources"][0]["score"] <= t["sources"][-1]["score"] for t in neg["per_token"])
        # off: no per-token keys, and everything else the very answer of per_token on (the sequence's scores)
        off = _post(base, body)
        assert off.status_code == 200
        offj, onj = strip_volatile(off.json()), strip_volatile(on.json())
        for a in onj["attributions"]:
            del a["per_token"], a["spans"]
        assert json.dumps(offj) == json.dumps(onj)
        assert not any("per_token" in a or "spans" in a for a in off.json()["attributions"])
        # the cache keeps per-token answers apart from the others
        again = _post(base, {**body, "per_token": True, "token_top_k": 3}).json()
        assert [a["cached"] for a in again["attributions"]] == [True] * 3
        assert strip_volatile(again) == strip_volatile(on.json())
        one = _post(base, {**body, "per_token": True, "token_top_k": 1}).json()["attributions"]
        assert [a["cached"] for a in one] == [False] * 3 and len(one[0]["per_token"][0]["sources"]) == 1


def test_gpt_per_token_pieces_are_the_texts_characters(text_settings, text_att):
    """A word-level store's tokens are lowercased corpus words; its pieces are the text's own characters."""
    qs = [{"text": "The jury said “the city” was fine."},
          {"prompt": "the jury said", "completion": " the election was fair ."},
          {"text": "the   jury  said it", "pretokenized": True}]
    n = len(text_att.manifest.source_ids)
    k = min(n, 10)
    with serve(text_settings()) as base:
        r = _post(base, {"queries": qs, "top_k": n, "record": False, "per_token": True, "token_top_k": k})
        assert r.status_code == 200, r.text
        out = r.json()["attributions"]
    for a, q in zip(out, qs, strict=True):
        if n == k:
            _check_answer(a, q, n)
    assert [t["piece"] for t in out[0]["per_token"]] == [" jury", " said", " “", "the", " city", "”", " was",
                                                         " fine", "."]
    assert out[0]["tokens"] == text_att.tokenizer.decode(text_att.encode(text=qs[0]["text"]).ids)  # words, as before
    assert [t["piece"] for t in out[2]["per_token"]] == ["   jury", "  said", " it"]


def test_per_token_batched_equals_alone(hf_settings, hf_att):
    from .test_hf import _hf_requests

    bodies = [{**b, "per_token": True, "token_top_k": 2} for b in _hf_requests(hf_att.tokenizer)]
    bodies[1] = {k: v for k, v in bodies[1].items() if k not in ("per_token", "token_top_k")}  # one without, beside
    with serve(hf_settings(batching=True, max_wait_ms=40, max_batch=16, cache_ttl_s=0, adaptive_wait=False)) as base:
        on = asyncio.run(_fire(base, bodies))
    with serve(hf_settings(batching=False, cache_ttl_s=0)) as base:
        off = [asyncio.run(_fire(base, [b]))[0] for b in bodies]
    assert any(r["timings"]["batch_queries"] > len(b["queries"]) for r, b in zip(on, bodies, strict=True))
    assert [strip_volatile(r) for r in on] == [strip_volatile(r) for r in off]
    assert "per_token" in on[0]["attributions"][0] and "per_token" not in on[1]["attributions"][0]


def test_per_token_refusals(hf_settings, settings_for, hf_att):
    q = [{"text": "w1 w2 w3 w4 w5 w6 w7 w8"}]
    with serve(hf_settings(max_per_token_targets=4, max_token_top_k=5)) as base:
        for body, fields, words in [
            ({"queries": q, "per_token": "yes"}, ["per_token"], "bool"),
            ({"queries": q, "per_token": 1}, ["per_token"], "bool"),
            ({"queries": q, "per_token": True, "token_top_k": 6}, ["token_top_k"], "at most 5"),
            ({"queries": q, "per_token": True, "token_top_k": 0}, ["token_top_k"], "greater"),
            ({"queries": q, "token_top_k": 2}, ["token_top_k"], "only with per_token"),
            ({"queries": q, "per_token": True}, ["queries[0].text", "per_token"], "at most 4 per query"),
            ({"queries": [{"prompt": "w1", "completion": " w2 w3 w4 w5 w6 w7"}], "per_token": True},
             ["queries[0].prompt", "queries[0].completion", "per_token"], "max_per_token_targets"),
        ]:
            r = _post(base, {**body, "record": False})
            assert r.status_code == 422 and _fields(r) == fields, (body, r.text)
            assert words in r.text, (words, r.text)
        text = fit_words(hf_att.tokenizer, ["w1", "w2", "w3"], 5)  # at most 4 scored tokens
        short = _post(base, {"queries": [{"text": text}], "per_token": True, "record": False})
        assert short.status_code == 200 and 1 <= len(short.json()["attributions"][0]["per_token"]) <= 4
    with serve(settings_for()) as base:  # a vector store
        r = _post(base, {"queries": [{"input": [0.0] * 64}], "per_token": True, "record": False})
        assert r.status_code == 422 and _fields(r) == ["per_token"] and "text stores" in r.text
