"""A text store (``model.kind == "gpt"``) served over a real uvicorn and a
real Redis: text and prompt/completion queries answer with f, per-token
log-probabilities, publishers and documents equal to ``TextAttributor.score``;
wrong query forms and over-long queries are 422s naming the field; answers
are bit-identical with batching on and off for a mixed-length burst; a
recorded query credits the publishers by the credit rule."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
import torch

from service.credit import credit

from .util import query, ready_probed, serve, strip_volatile


@pytest.fixture
def text_server(text_settings):
    s = text_settings()
    with serve(s) as base:
        yield base, s


def _fields(r: httpx.Response) -> list[str]:
    err = r.json()["error"]
    assert err["status"] == r.status_code == 422 and "Traceback" not in r.text
    return [f["path"] for f in err.get("fields", [])]


def _words(n: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    pool = [f"w{i}" for i in range(60)] + [f"s{s}x{i}" for s in range(3) for i in range(15)]
    return " ".join(rng.choice(pool, size=n))


def test_text_and_prompt_queries_match_the_library(text_server, text_att):
    base, _ = text_server
    ready = ready_probed(base)
    assert ready["batch_invariant"] is True
    info = httpx.get(base + "/v1/store").json()
    assert info["model"]["kind"] == "gpt" and info["source_ids"] == ["pub-0", "pub-1", "pub-2"]
    qs = [{"text": "W1 w2 zzz s0x1 w5, w7.", "client_id": "a"},
          {"prompt": "w3 w4", "completion": "s1x2 s1x4 w9"},
          {"text": "s2x1 s2x2 w0 w1", "pretokenized": True}]
    r = httpx.post(base + "/v1/attributions", json={"queries": qs, "granularity": "both", "top_k": 3,
                                                    "record": False})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["output"] == "logprob" and out["store_version"] == text_att.version
    enc = [text_att.encode(text="W1 w2 zzz s0x1 w5, w7."), text_att.encode(prompt="w3 w4", completion="s1x2 s1x4 w9"),
           text_att.encode(text="s2x1 s2x2 w0 w1", pretokenized=True)]
    names = text_att.manifest.extra["source_names"]
    for a, q, e in zip(out["attributions"], qs, enc, strict=True):
        ref = text_att.score([e])
        assert a["client_id"] == q.get("client_id")
        assert a["oov"] == e.oov and a["n_targets"] == e.n_targets and a["n_tokens"] == len(e.ids)
        assert len(a["token_logprobs"]) == e.n_targets
        torch.testing.assert_close(torch.tensor(a["token_logprobs"]), torch.tensor(ref.token_logprobs[0]),
                                   rtol=1e-5, atol=1e-6)
        assert abs(a["logprob"] - float(ref.logprob[0])) < 1e-5
        assert abs(a["logprob"] - sum(a["token_logprobs"]) / e.n_targets) < 1e-5
        top = torch.topk(ref.sources[0], 3)
        assert [s["id"] for s in a["sources"]] == [text_att.manifest.source_ids[i] for i in top.indices.tolist()]
        assert [s["name"] for s in a["sources"]] == [names[i] for i in top.indices.tolist()]
        scale = ref.sources.abs().max().item()
        torch.testing.assert_close(torch.tensor([s["score"] for s in a["sources"]]), top.values, rtol=1e-4,
                                   atol=1e-5 * scale)
        topx = torch.topk(ref.examples[0], 3)
        assert [d["index"] for d in a["examples"]] == topx.indices.tolist()
        torch.testing.assert_close(torch.tensor([d["score"] for d in a["examples"]]), topx.values, rtol=1e-4,
                                   atol=1e-5 * ref.examples.abs().max().item())
        for d in a["examples"]:
            doc = text_att.documents[d["index"]]
            assert d["id"] == doc["id"] and d["source"] == doc["source"] and doc["snippet"].startswith(d["snippet"])
            assert "genre" not in d  # this corpus has none
    assert out["attributions"][0]["oov"] == 3  # "zzz", "," and "." (this corpus has no punctuation)
    # only sources by default; a repeat is served from the cache, unchanged
    body = {"queries": qs[:2], "top_k": 100}
    first = httpx.post(base + "/v1/attributions", json=body).json()
    second = httpx.post(base + "/v1/attributions", json=body).json()
    assert first["attributions"][0]["examples"] is None and len(first["attributions"][0]["sources"]) == 3
    assert [a["cached"] for a in second["attributions"]] == [True, True]
    assert strip_volatile(first) == strip_volatile(second)


def test_wrong_query_form_is_a_422_naming_the_field(text_server, server, train_x):
    text_base, _ = text_server
    vec_base, _ = server
    cases = [
        (text_base, {"queries": [{"text": "w1 w2"}, query(train_x[0])]}, "queries[1].input"),
        (text_base, {"queries": [{"text": "w1 w2"}], "output": "margin"}, "output"),
        (text_base, {"queries": [{"text": "w1 w2", "target": 3}]}, "queries[0].target"),
        (text_base, {"queries": [{"text": 3}]}, "queries[0].text"),
        (text_base, {"queries": [{"text": "w1 w2", "pretokenized": "yes"}]}, "queries[0].pretokenized"),
        (text_base, {"queries": [{"prompt": "w1 w2"}]}, "queries[0].completion"),
        (vec_base, {"queries": [query(train_x[0]), {"text": "w1 w2"}]}, "queries[1].text"),
        (vec_base, {"queries": [{"prompt": "w1", "completion": "w2"}]}, "queries[0].prompt"),
    ]
    for base, body, path in cases:
        r = httpx.post(base + "/v1/attributions", json=body)
        assert r.status_code == 422, (body, r.text)
        assert path in _fields(r), (path, r.json())
        assert r.json()["error"]["message"].startswith(path), r.json()
    for base in (text_base, vec_base):
        assert httpx.get(base + "/v1/stats").json()["batches"] == 0  # nothing reached the readout


def test_limits_tokens_characters_queries(text_settings):
    with serve(text_settings(max_text_chars=300, max_queries=4)) as base:
        post = lambda body: httpx.post(base + "/v1/attributions", json={**body, "record": False})  # noqa: E731
        ok = post({"queries": [{"text": _words(65)}]})
        assert ok.status_code == 200, ok.text
        assert ok.json()["attributions"][0]["n_tokens"] == 65
        long = post({"queries": [{"text": "w1 w2"}, {"text": _words(66)}]})
        assert _fields(long) == ["queries[1].text"] and "66 tokens: at most 65" in long.json()["error"]["message"]
        pair = post({"queries": [{"prompt": _words(40), "completion": _words(26, 1)}]})
        assert _fields(pair) == ["queries[0].prompt", "queries[0].completion"]
        chars = post({"queries": [{"text": "w1 " + "w2" * 200}]})
        assert _fields(chars) == ["queries[0].text"] and "at most 300 characters" in chars.json()["error"]["message"]
        for short in ({"text": "w1"}, {"text": "   "}, {"prompt": " ", "completion": "w1"}):
            assert post({"queries": [short]}).status_code == 422, short
        assert _fields(post({"queries": [{"text": "w1 w2"}] * 5})) == ["queries"]
        assert httpx.get(base + "/v1/stats").json()["batches"] == 1  # only the good request was read out


def _text_requests() -> list[dict]:
    """12 requests of 1-3 text queries of 2 to 65 tokens, mixed forms and options."""
    out, k = [], 0
    for n in range(12):
        qs = []
        for _ in range(1 + n % 3):
            k += 1
            length = 2 + (k * 17) % 64
            if k % 3 == 0:
                qs.append({"prompt": _words(length // 2, k), "completion": _words(length - length // 2, 1000 + k)})
            else:
                qs.append({"text": _words(length, k) + (" qqq" if k % 4 == 0 else "")})
        out.append({"queries": qs, "granularity": ("sources", "examples", "both")[n % 3], "top_k": 5,
                    "order": ("positive", "abs", "negative")[n % 3], "record": False})
    return out


async def _fire(base: str, bodies: list[dict]) -> list[dict]:
    async with httpx.AsyncClient(base_url=base, timeout=60) as c:
        rs = await asyncio.gather(*(c.post("/v1/attributions", json=b) for b in bodies))
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs if r.status_code != 200]
    return [r.json() for r in rs]


@pytest.mark.parametrize("workers", [1, 2])
def test_text_batching_on_equals_off(text_settings, workers):
    """Also with two readout workers reading batches out side by side."""
    bodies = _text_requests()
    lengths = {a for b in bodies for q in b["queries"] for a in [len(" ".join(q.values()).split())]}
    assert len(lengths) > 10
    with serve(text_settings(batching=True, max_wait_ms=40, max_batch=16, readout_block=4, cache_ttl_s=0,
                             adaptive_wait=False, readout_workers=workers)) as base:
        on = asyncio.run(_fire(base, bodies))
    with serve(text_settings(batching=False, readout_block=4, cache_ttl_s=0)) as base:
        off = [asyncio.run(_fire(base, [b]))[0] for b in bodies]
    assert any(r["timings"]["batch_queries"] > len(b["queries"]) for r, b in zip(on, bodies, strict=True))
    assert all(r["timings"]["batch_queries"] == len(b["queries"]) for r, b in zip(off, bodies, strict=True))
    for a, b in zip(on, off, strict=True):
        assert json.dumps(strip_volatile(a), sort_keys=True) == json.dumps(strip_volatile(b), sort_keys=True)


def test_sources_only_equals_sources_of_a_full_answer(text_server, text_att):
    """A store with per-source rows reads a sources-only request with 3
    tangents, not the documents', and answers the very same source scores."""
    base, _ = text_server
    assert text_att.tangents(examples=False) < text_att.tangents(examples=True)
    qs = [{"text": _words(n, n)} for n in (3, 17, 40)]
    got = {g: httpx.post(base + "/v1/attributions", json={"queries": qs, "granularity": g, "top_k": 3,
                                                            "record": False}).json() for g in ("sources", "both")}
    for a, b in zip(got["sources"]["attributions"], got["both"]["attributions"], strict=True):
        assert a["sources"] == b["sources"] and a["examples"] is None and b["examples"]


def test_recorded_query_credits_publishers(text_server, text_att):
    base, s = text_server
    q = {"text": "s0x1 s0x2 s0x3 w4 w5 s0x6 s0x7"}
    assert httpx.get(base + "/v1/sources").json()["total_queries"] == 0
    headers = {"Idempotency-Key": "text-1"}
    r = httpx.post(base + "/v1/attributions", json={"queries": [q], "top_k": 3}, headers=headers)
    assert r.status_code == 200 and r.json()["recorded"] is True
    again = httpx.post(base + "/v1/attributions", json={"queries": [q], "top_k": 3}, headers=headers)
    assert again.headers.get("idempotent-replayed") == "true"
    v = httpx.get(base + "/v1/sources").json()
    assert v["total_queries"] == 1  # the retry counted once
    got = {x["id"]: x["credit_units"] for x in v["sources"] if x["credit_units"]}
    scores = [sc["score"] for sc in sorted(r.json()["attributions"][0]["sources"],
                                           key=lambda sc: text_att.manifest.source_ids.index(sc["id"]))]
    want = {text_att.manifest.source_ids[i]: u for i, u in credit(scores, s.credit_units, s.credit_rule).items()}
    assert got == want and sum(got.values()) == s.credit_units
    ref = text_att.score([text_att.encode(text=q["text"])]).sources[0]
    assert set(got) == {text_att.manifest.source_ids[i] for i in range(3) if ref[i] > 0}


def test_openapi_shows_both_query_forms(text_server):
    base, _ = text_server
    for path in ("/v1/playground/examples", "/v1/playground/training/0"):  # vector inputs only: 404, never a 500
        assert httpx.get(base + path).status_code == 404
    doc = httpx.get(base + "/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert {"Query", "TextQuery", "PromptQuery", "TextAttribution"} <= set(schemas)
    assert schemas["TextQuery"]["examples"] and schemas["PromptQuery"]["examples"]
    body = doc["paths"]["/v1/attributions"]["post"]["requestBody"]["content"]["application/json"]
    assert {"vector", "text", "prompt"} <= set(body["examples"])
    assert "text" in body["examples"]["text"]["value"]["queries"][0]


def test_bfloat16_tangents_served(text_settings, text_store, text_att):
    """``FA_TEXT_TANGENT_DTYPE=bfloat16`` over a real uvicorn: /v1/store says
    so, f and the token log-probabilities are the float32 ones, the source
    scores those of a bf16 ``TextAttributor`` and near the float32 ones,
    batch invariance still holds; a wrong value is refused at start-up."""
    from influence.store import open_store
    from influence.text.attributor import TextAttributor

    bf = TextAttributor(open_store(text_store), "cpu", tangent_dtype=torch.bfloat16)
    texts = ["w1 w2 s0x1 w5 w7", "s1x2 s1x4 w9 w3", "s2x1 s2x2 w0 w1 s2x3"]
    with serve(text_settings(text_tangent_dtype="bfloat16")) as base:
        assert ready_probed(base)["batch_invariant"] is True
        assert httpx.get(base + "/v1/store").json()["readout_dtype"] == "bfloat16"
        r = httpx.post(base + "/v1/attributions", json={"queries": [{"text": t} for t in texts], "top_k": 3,
                                                        "record": False})
    assert r.status_code == 200, r.text
    for a, t in zip(r.json()["attributions"], texts, strict=True):
        e = text_att.encode(text=t)
        ref, mine = text_att.score([e]), bf.score([e])
        assert abs(a["logprob"] - float(ref.logprob[0])) < 1e-5
        scale = ref.sources.abs().max().item()
        got = torch.tensor([s["score"] for s in a["sources"]])
        idx = [text_att.manifest.source_ids.index(s["id"]) for s in a["sources"]]
        torch.testing.assert_close(got, mine.sources[0, idx], rtol=1e-4, atol=1e-5 * scale)
        torch.testing.assert_close(got, ref.sources[0, idx], rtol=0, atol=5e-2 * scale)
    with pytest.raises(ValueError, match="text_tangent_dtype"):
        text_settings(text_tangent_dtype="float8")
