"""Issue 28 row 4: one expensive request must not monopolise the readout.

A request's readout cost (token-rows: each query's length bucket times the
store rows it is read against) is bounded by ``max_request_cost`` (a 422
naming the field and the cost, before any work); a request is read out a
block per batcher round beside the others, so a small one that arrives
behind a large one waits for one of its blocks, not all; a request that
timed out (504) or whose waiter left loses its remaining blocks; answers of
split requests are bit-identical to those read out whole."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass

import httpx
import pytest

from influence.blocks import length_buckets
from service.batcher import Batcher, Piece

from .test_text import _words
from .util import query, serve, strip_volatile


@dataclass
class _Rows:
    value: list  # one per query


def _recording_readout(calls: list, pause_s: float):
    """A ``ReadoutFn`` that logs the request tags of each call and takes ``pause_s``."""
    lock = threading.Lock()

    def run(att, rows, examples):
        with lock:
            calls.append([r[0] for r in rows])
        time.sleep(pause_s)
        return [_Rows([r[1]]) for r in rows]

    return run


def _pieces(tag: str, n: int) -> list[Piece]:
    return [Piece((tag, i), 1, [i]) for i in range(n)]


def test_a_small_request_waits_for_one_block_of_a_large_one_not_all():
    """Old code: the large request's 12 rows were one readout call, the small
    one waited for all of it (its call came second, after 12 rows' work)."""
    calls: list = []
    run = _recording_readout(calls, 0.05)

    async def go():
        b = Batcher(max_batch=4, max_wait_s=0.0, queue_size=64, timeout_s=30)
        b.start()
        try:
            big = asyncio.create_task(b.submit_rows(None, None, 12, ("g",), False, run, _pieces("big", 12)))
            await asyncio.sleep(0.02)  # the large request's first block is being read out
            small = await b.submit_rows(None, None, 1, ("g",), False, run, [Piece(("small", 0), 1)])
            out = await big
            return small, out
        finally:
            await b.stop()

    small, out = asyncio.run(go())
    assert small.value == [0]
    # read out in the round after the block in flight (one block of the large one beside it)
    assert next(i for i, c in enumerate(calls) if "small" in c) <= 1, calls
    assert out.value == list(range(12))  # joined back in order
    assert sum(c.count("big") for c in calls) == 12 and max(c.count("big") for c in calls) == 1


def test_a_timed_out_request_loses_its_remaining_blocks():
    """After the 504 the readout stops working on the request: at most the
    block in flight when it timed out is read out after it. (Old code: one
    call for all its rows, read out whole after the 504.)"""
    calls: list = []
    run = _recording_readout(calls, 0.05)

    async def go():
        b = Batcher(max_batch=1, max_wait_s=0.0, queue_size=64, timeout_s=0.12)
        b.start()
        try:
            with pytest.raises(Exception) as err:
                await b.submit_rows(None, None, 40, ("g",), False, run, _pieces("big", 40))
            at_504 = len(calls)
            await asyncio.sleep(0.4)  # rounds that would have read it out
            after = await b.submit_rows(None, None, 1, ("g",), False, run, [Piece(("next", 0), 1)])
            return err.value, at_504, b.dropped_pieces, after
        finally:
            await b.stop()

    err, at_504, dropped, after = asyncio.run(go())
    assert getattr(err, "status", None) == 504
    big_calls = sum(c.count("big") for c in calls)
    assert big_calls <= at_504 + 1 and big_calls < 10, calls
    assert dropped == 40 - big_calls and after.value == [0] and calls[-1] == ["next"]


def test_a_cancelled_waiter_drops_its_blocks():
    """A handler cancelled while it waits (its client left) takes its
    remaining blocks out of the queue too."""
    calls: list = []
    run = _recording_readout(calls, 0.05)

    async def go():
        b = Batcher(max_batch=1, max_wait_s=0.0, queue_size=64, timeout_s=30)
        b.start()
        try:
            task = asyncio.create_task(b.submit_rows(None, None, 30, ("g",), False, run, _pieces("big", 30)))
            await asyncio.sleep(0.12)
            task.cancel()
            await asyncio.sleep(0.3)
            return b.dropped_pieces, b.queued
        finally:
            await b.stop()

    dropped, queued = asyncio.run(go())
    assert sum(c.count("big") for c in calls) < 10 and dropped == 30 - sum(c.count("big") for c in calls)
    assert queued == 0


def test_over_budget_is_a_422_naming_the_field_and_the_cost(settings_for, train_x):
    # the tiny vector store: 1 position x (sources + examples) rows per query with documents
    with serve(settings_for(max_request_cost=1000, cache_ttl_s=0)) as base:
        st = httpx.get(base + "/v1/store").json()
        per = len(st["source_ids"]) + st["n_examples"]
        n = 1000 // per + 1
        qs = [query(train_x[i]) for i in range(n)]
        r = httpx.post(base + "/v1/attributions", json={"queries": qs, "granularity": "both", "record": False})
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["fields"][0]["path"] == "queries" and f"{n * per:,} token-rows" in err["message"]
        assert "max_request_cost 1,000" in err["message"]
        ok = httpx.post(base + "/v1/attributions", json={"queries": qs, "granularity": "sources", "record": False})
        assert ok.status_code == 200, ok.text  # sources only: fewer rows read, within the budget
        far = httpx.post(base + "/v1/whatif", json={"sample": 1000 // len(st["source_ids"]) + 1,
                                                     "remove": [st["source_ids"][0]]})
        assert far.status_code == 422 and far.json()["error"]["fields"][0]["path"] == "sample", far.text
        assert httpx.get(base + "/v1/stats").json()["batches"] == 1  # only the request within budget read out


def test_text_cost_counts_length_buckets_and_split_answers_match_whole(text_settings, text_att):
    """Text cost: each query's bucket (17, 33, ...) times the tangents; a
    request split into blocks answers as the same queries sent one by one."""
    qs = [{"text": _words(n, seed=n)} for n in (3, 20, 5, 40, 9, 12, 30, 4, 7)]
    body = {"queries": qs, "granularity": "both", "top_k": 5, "record": False}
    with serve(text_settings(cache_ttl_s=0, text_readout_block=2)) as base:
        whole = httpx.post(base + "/v1/attributions", json=body, timeout=60)
        assert whole.status_code == 200, whole.text
        alone = [httpx.post(base + "/v1/attributions", json={**body, "queries": [q]}, timeout=60).json()
                 for q in qs]
    got = strip_volatile(whole.json())["attributions"]
    want = [strip_volatile(a)["attributions"][0] for a in alone]
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)
    buckets = length_buckets(text_att.spec.context)
    cost = sum(next(b for b in buckets if b >= a["n_tokens"]) for a in got) * text_att.tangents(True)
    assert len({next(b for b in buckets if b >= a["n_tokens"]) for a in got}) >= 2  # (several buckets: split)
    with serve(text_settings(cache_ttl_s=0, max_request_cost=cost - 1)) as base:
        r = httpx.post(base + "/v1/attributions", json=body, timeout=60)
        fits = httpx.post(base + "/v1/attributions", json={**body, "queries": qs[1:]}, timeout=60)
    assert r.status_code == 422 and f"{cost:,} token-rows" in r.json()["error"]["message"], r.text
    assert fits.status_code == 200, fits.text


def test_the_store_states_what_a_query_costs(text_settings, text_att, settings_for):
    """/v1/store cost: rows read per query and each bucket's cost, in the unit the 422 counts; a request of
    exactly one query costs what the card says (the budget one below refuses it, at it admits it)."""
    with serve(text_settings(cache_ttl_s=0)) as base:
        card = httpx.get(base + "/v1/store").json()["cost"]
    assert card["unit"] == "token-rows" and card["rows_read"] == {"sources": text_att.tangents(False),
                                                                  "documents": text_att.tangents(True)}
    assert [c["tokens"] for c in card["per_query"]] == length_buckets(text_att.spec.context)
    want = card["per_query"][0]["documents"]  # a short query: the smallest bucket
    body = {"queries": [{"text": "w1 w2 w3"}], "granularity": "both", "record": False}
    for budget, status in ((want - 1, 422), (want, 200)):
        with serve(text_settings(cache_ttl_s=0, max_request_cost=budget)) as base:
            r = httpx.post(base + "/v1/attributions", json=body, timeout=60)
        assert r.status_code == status, r.text
    with serve(settings_for()) as base:
        vec = httpx.get(base + "/v1/store").json()
    n, k = vec["n_examples"], vec["n_sources"]
    assert vec["cost"]["rows_read"] == {"sources": k, "documents": k + n} and len(vec["cost"]["per_query"]) == 1
    # what the rows hold in memory: the vector store's float blocks; the text store's as the attributor holds them
    c = vec["cost"]
    assert c["packed_rows"] is False and c["resident_rows_bytes"] > 0
    # the text store's 3-bit basis rows stay packed in the service (packed_rows on): less than the float ones
    assert card["packed_rows"] is True and not text_att.packed
    assert 0 < card["resident_rows_bytes"] < text_att.resident_bytes()
