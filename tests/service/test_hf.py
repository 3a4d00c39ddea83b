"""A Hugging Face store (``model.kind == "hf"``: a tiny GPT-2 with its own
byte-level BPE, LoRA fine-tuned by the worker) served over a real uvicorn
and Redis, like a ``gpt`` text store: text and prompt/completion queries
encoded by the store's tokenizer and answered as ``TextAttributor.score``
answers them, the tokens decoded to readable pieces; limits from the model's
context (32 + 1 tokens here); every refusal names the kind ``hf``; batching
on = off bit for bit; an idempotent retry counts once and credit follows the
scores; what-if; the held-out passages of a ``brown-ft`` store."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch

from influence.store import read_manifest
from service import heldout
from service.credit import credit
from service.errors import ApiError
from service.forms import form_of
from service.runtime import change_refused

from .hf_store import HF_NAMES, fit_words
from .util import ready_probed, serve, strip_volatile

POOL = [f"w{i}" for i in range(60)] + [f"s{s}x{i}" for s in range(3) for i in range(15)]


@pytest.fixture
def hf_server(hf_settings):
    s = hf_settings()
    with serve(s) as base:
        yield base, s


def _words(n: int, seed: int = 0) -> list[str]:
    return list(np.random.default_rng(seed).choice(POOL, size=n))


def _fields(r: httpx.Response) -> list[str]:
    err = r.json()["error"]
    assert err["status"] == r.status_code == 422 and "Traceback" not in r.text
    return [f["path"] for f in err.get("fields", [])]


def test_hf_queries_match_the_library(hf_server, hf_att):
    base, _ = hf_server
    assert ready_probed(base)["batch_invariant"] is True
    info = httpx.get(base + "/v1/store").json()
    assert info["model"]["kind"] == "hf" and info["model"]["context"] == 32
    assert info["source_ids"] == ["pub-0", "pub-1", "pub-2"] and info["version"] == hf_att.version
    qs = [{"text": "W1 w2 zzz s0x1 w5, w7.", "client_id": "a"},
          {"prompt": "w3 w4", "completion": " s1x2 s1x4 w9"},
          {"text": "s2x1   s2x2 w0 w1", "pretokenized": True},
          {"text": "w1 café 😀 日本語 e\u0301 w2"}]
    r = httpx.post(base + "/v1/attributions", json={"queries": qs, "granularity": "both", "top_k": 3,
                                                    "record": False})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["output"] == "logprob" and out["store_version"] == hf_att.version
    enc = [hf_att.encode(text=qs[0]["text"]), hf_att.encode(prompt="w3 w4", completion=" s1x2 s1x4 w9"),
           hf_att.encode(text="s2x1 s2x2 w0 w1", pretokenized=True), hf_att.encode(text=qs[3]["text"])]
    tok = hf_att.tokenizer
    for a, q, e in zip(out["attributions"], qs, enc, strict=True):
        ref = hf_att.score([e])
        assert a["client_id"] == q.get("client_id")
        assert a["oov"] == 0 and a["n_targets"] == e.n_targets and a["n_tokens"] == len(e.ids)
        # the text's own pieces (issue 28 row 9), joining back into it: no '�', no added leading space
        assert len(a["tokens"]) == len(e.ids)
        assert "".join(a["tokens"]) == q.get("text", q.get("prompt", "") + q.get("completion", ""))
        assert not any("Ġ" in t or "\ufffd" in t for t in a["tokens"])
        assert len(a["token_logprobs"]) == e.n_targets
        torch.testing.assert_close(torch.tensor(a["token_logprobs"]), torch.tensor(ref.token_logprobs[0]),
                                   rtol=1e-5, atol=1e-6)
        assert abs(a["logprob"] - float(ref.logprob[0])) < 1e-5
        top = torch.topk(ref.sources[0], 3)
        ids = hf_att.manifest.source_ids
        assert [s["id"] for s in a["sources"]] == [ids[i] for i in top.indices.tolist()]
        assert [s["name"] for s in a["sources"]] == [HF_NAMES[ids[i]] for i in top.indices.tolist()]
        scale = ref.sources.abs().max().item()
        torch.testing.assert_close(torch.tensor([s["score"] for s in a["sources"]]), top.values, rtol=1e-4,
                                   atol=1e-5 * scale)
        topx = torch.topk(ref.examples[0], 3)
        assert [d["index"] for d in a["examples"]] == topx.indices.tolist()
        for d in a["examples"]:
            doc = hf_att.documents[d["index"]]
            assert d["id"] == doc["id"] and d["source"] == doc["source"] and doc["snippet"].startswith(d["snippet"])
    assert [t.strip() for t in out["attributions"][2]["tokens"]] ==\
        [t.strip() for t in tok.decode(tok.encode_text("s2x1 s2x2 w0 w1"))]
    assert any("\ufffd" in t for t in tok.decode(enc[3].ids))  # what each piece decoded alone gave
    assert out["attributions"][0]["tokens"][0] == "W" and tok.decode(enc[0].ids)[0] == " "  # (the prefix space)
    # the result cache keys hf queries by their token ids too
    body = {"queries": qs[:2], "top_k": 3}
    first = httpx.post(base + "/v1/attributions", json={**body, "record": False}).json()
    again = httpx.post(base + "/v1/attributions", json={**body, "record": False}).json()
    assert [a["cached"] for a in again["attributions"]] == [True, True]
    assert strip_volatile(first) == strip_volatile(again)


def test_hf_limits_come_from_the_context_and_errors_name_the_kind(hf_settings, hf_att):
    tok, most = hf_att.tokenizer, hf_att.spec.context + 1
    assert most == 33
    fits = fit_words(tok, _words(40, 1), most)
    n = len(tok.tokenize(fits))
    longer = fits + " w1 w2 w3"
    with serve(hf_settings(max_text_chars=400)) as base:
        post = lambda body: httpx.post(base + "/v1/attributions", json={**body, "record": False})  # noqa: E731
        ok = post({"queries": [{"text": fits}]})
        assert ok.status_code == 200, ok.text
        assert ok.json()["attributions"][0]["n_tokens"] == n >= most - 3
        long = post({"queries": [{"text": "w1 w2"}, {"text": longer}]})
        assert _fields(long) == ["queries[1].text"]
        m = len(tok.tokenize(longer))
        assert f"{m} tokens: at most 33 per query (the model's context of 32 + 1)" in long.json()["error"]["message"]
        pair = post({"queries": [{"prompt": fits, "completion": " w5 w6"}]})
        assert _fields(pair) == ["queries[0].prompt", "queries[0].completion"]
        for body, path in (({"queries": [{"input": [1.0, 2.0]}]}, "queries[0].input"),
                           ({"queries": [{"text": "w1 w2", "target": 1}]}, "queries[0].target"),
                           ({"queries": [{}]}, "queries[0].text")):
            r = post(body)
            assert _fields(r) == [path], r.text
            if path != "queries[0].target":
                assert "kind hf" in r.json()["error"]["message"] and "kind gpt" not in r.text, r.text
        r = post({"queries": [{"text": "w1 w2"}], "output": "margin"})
        assert _fields(r) == ["output"]
        assert post({"queries": [{"text": "w"}]}).status_code == 422  # one token: nothing to score
        assert httpx.get(base + "/v1/stats").json()["batches"] == 1  # only the good request was read out


def test_hf_kind_prepare_names_the_kind(hf_att):
    """Past the body pre-check too (a what-if's inline queries, a kind's own check)."""
    from service.schemas import AttributionRequest, Query
    from service.settings import Settings

    req = AttributionRequest.model_construct(queries=[Query(input=[1.0])], output=None, top_k=3,
                                             granularity="sources", order="positive", record=False)
    with pytest.raises(ApiError) as e:
        form_of(hf_att.manifest).prepare(hf_att, req, Settings(_env_file=None))
    assert "(kind hf)" in e.value.message and e.value.fields[0][0] == "queries[0].input"
    assert form_of(hf_att.manifest) is form_of(hf_att.manifest) and form_of(hf_att.manifest).text


def _hf_requests(tok) -> list[dict]:
    """12 requests of 1-3 queries of 2-33 tokens, mixed forms and options."""
    out, k = [], 0
    for n in range(12):
        qs = []
        for _ in range(1 + n % 3):
            k += 1
            words = 1 + (k * 5) % 11
            if k % 3 == 0:
                qs.append({"prompt": fit_words(tok, _words(max(1, words // 2), k), 16),
                           "completion": " " + fit_words(tok, _words(max(1, words - words // 2), 1000 + k), 16)})
            else:
                qs.append({"text": fit_words(tok, _words(words + 1, k), 33)})
        out.append({"queries": qs, "granularity": ("sources", "examples", "both")[n % 3], "top_k": 5,
                    "order": ("positive", "abs", "negative")[n % 3], "record": False})
    return out


async def _fire(base: str, bodies: list[dict]) -> list[dict]:
    async with httpx.AsyncClient(base_url=base, timeout=60) as c:
        rs = await asyncio.gather(*(c.post("/v1/attributions", json=b) for b in bodies))
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs if r.status_code != 200]
    return [r.json() for r in rs]


def test_hf_batching_on_equals_off(hf_settings, hf_att):
    bodies = _hf_requests(hf_att.tokenizer)
    with serve(hf_settings(batching=True, max_wait_ms=40, max_batch=16, cache_ttl_s=0, adaptive_wait=False)) as base:
        on = asyncio.run(_fire(base, bodies))
    with serve(hf_settings(batching=False, cache_ttl_s=0)) as base:
        off = [asyncio.run(_fire(base, [b]))[0] for b in bodies]
    assert len({a["n_tokens"] for r in off for a in r["attributions"]}) > 8
    assert any(r["timings"]["batch_queries"] > len(b["queries"]) for r, b in zip(on, bodies, strict=True))
    for a, b in zip(on, off, strict=True):
        assert json.dumps(strip_volatile(a), sort_keys=True) == json.dumps(strip_volatile(b), sort_keys=True)


def test_hf_idempotent_replay_counts_once_and_credits_by_score(hf_server, hf_att):
    base, s = hf_server
    q = {"text": "s0x1 s0x2 s0x3 w4 w5 s0x6"}
    headers = {"Idempotency-Key": "hf-1"}
    r = httpx.post(base + "/v1/attributions", json={"queries": [q], "top_k": 3}, headers=headers)
    assert r.status_code == 200 and r.json()["recorded"] is True
    again = httpx.post(base + "/v1/attributions", json={"queries": [q], "top_k": 3}, headers=headers)
    assert again.headers.get("idempotent-replayed") == "true" and again.content == r.content
    other = httpx.post(base + "/v1/attributions", json={"queries": [{"text": "w1 w2"}]}, headers=headers)
    assert other.status_code == 422 and other.json()["error"]["fields"][0]["path"] == "Idempotency-Key"
    v = httpx.get(base + "/v1/sources").json()
    assert v["total_queries"] == 1
    got = {x["id"]: x["credit_units"] for x in v["sources"] if x["credit_units"]}
    ids = hf_att.manifest.source_ids
    scores = [sc["score"] for sc in sorted(r.json()["attributions"][0]["sources"], key=lambda sc: ids.index(sc["id"]))]
    want = {ids[i]: u for i, u in credit(scores, s.credit_units, s.credit_rule).items()}
    assert got == want and sum(got.values()) == s.credit_units


def test_hf_whatif_and_passages(hf_server, hf_att):
    base, _ = hf_server
    q = [{"text": "w1 w2 s0x3 s0x4"}, {"prompt": "w5", "completion": " s1x2"}]
    r = httpx.post(base + "/v1/whatif", json={"queries": q, "remove": ["pub-0"]})
    assert r.status_code == 200, r.text
    w = r.json()
    assert w["n"] == hf_att.manifest.data["n_targets"] and w["n_unit"] == "training target tokens"
    ref = hf_att.score([hf_att.encode(text=q[0]["text"])]).sources[0]
    assert abs(w["queries"][0]["change"] - (-float(ref[0]) / w["n"])) < 1e-4 * abs(float(ref[0]) / w["n"]) + 1e-9
    none = httpx.post(base + "/v1/whatif", json={"sample": 5, "remove": ["pub-0"]})  # a JSONL store: no held-out text
    assert none.status_code == 422 and none.json()["error"]["fields"][0]["path"] == "sample"
    p = httpx.get(base + "/v1/playground/passages?n=4").json()
    assert p["kind"] == "training" and p["max_tokens"] == 33 and len(p["passages"]) == 4
    assert all(x["oov"] == 0 and 2 <= x["n_tokens"] <= 33 for x in p["passages"])
    assert [x["source_name"] for x in p["passages"][:3]] == list(HF_NAMES.values())
    assert httpx.get(base + "/v1/playground/examples").status_code == 404


def test_brown_ft_passages_are_the_benchmarks_heldout_windows(hf_att):
    """A ``brown-ft`` store's held-out sample (``ftdata.ft_heldout_sample``,
    published as ``heldout.json``): its passages and what-if sample are the
    fine-tuning benchmark's query windows of held-out documents, one per
    genre first (no brown-ft store is built here: its sample and the tiny
    store's tokenizer stand in)."""
    from influence.datasets.brown import load_brown
    from influence.datasets.brown_ft import all_query_windows, ft_heldout_sample, ft_text

    text = ft_text()
    man = SimpleNamespace(data={"name": "brown-ft", "level": "publication"},
                          source_ids=text.source_ids["publication"], extra={"source_names":
                                                                           text.source_names["publication"]})
    att = SimpleNamespace(manifest=man, version="v000009", tokenizer=hf_att.tokenizer,
                          spec=SimpleNamespace(context=128), documents=[], heldout=ft_heldout_sample("publication"))
    got = heldout.passages(att, 15)
    assert got["kind"] == "heldout" and got["max_tokens"] == 129 and len(got["passages"]) == 15
    windows = {}
    for d, _, w in all_query_windows(text):
        windows.setdefault(text.heldout_ids[d], w)
    by_id = {x.id: x for x in load_brown()}
    genres = [p["genre"] for p in got["passages"]]
    assert len(set(genres)) == len(genres)  # one per genre first
    for p in got["passages"]:
        doc = by_id[p["document"]]
        assert p["id"] == f"heldout-{doc.id}" and windows[doc.id].startswith(p["text"])
        assert p["source"] == doc.publisher_id and p["source_name"] == doc.publisher
        assert 2 <= p["n_tokens"] <= 129 and p["oov"] == 0
    qs, ids = heldout.queries(att, form_of(hf_att.manifest), 5)
    assert ids == [p["id"] for p in got["passages"][:5]] and [q.text for q in qs] ==\
        [p["text"] for p in got["passages"][:5]]
    # a store without a held-out sample: training starts, labelled so, and no what-if sample
    att.heldout = None
    assert heldout.passages(att, 3)["kind"] == "training" and heldout.queries(att, form_of(hf_att.manifest), 3) is None


def test_switching_gpt_and_hf_needs_allow_kind_change(hf_store, text_store):
    gpt = read_manifest(next((text_store / "versions").iterdir()))
    hf = read_manifest(next((hf_store / "versions").iterdir()))
    with pytest.raises(ApiError) as e:
        change_refused(gpt, "gpt", hf, False, True)
    assert e.value.status == 409 and "holds a hf store" in e.value.message and "tokenizer change" in e.value.message
    change_refused(gpt, "gpt", hf, True, True)  # allowed with the flag


def test_openapi_examples_mention_hf(hf_server):
    base, _ = hf_server
    doc = httpx.get(base + "/openapi.json").json()
    body = doc["paths"]["/v1/attributions"]["post"]["requestBody"]["content"]["application/json"]
    assert "hf" in body["examples"]["text"]["summary"] and "hf" in body["examples"]["prompt"]["summary"]
    assert "hf" in doc["paths"]["/v1/attributions"]["post"]["description"]
