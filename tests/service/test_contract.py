"""Contract of every endpoint, over a real uvicorn and a real Redis."""

from __future__ import annotations

import csv
import io

import httpx
import torch

from influence.mlp.attributor import VectorAttributor
from influence.store import open_store

from .util import query, ready_probed


def test_health_ready_store_stats_metrics(server):
    base, s = server
    assert httpx.get(base + "/healthz").json() == {"status": "ok"}
    ready = ready_probed(base)
    assert ready["status"] == "ready" and ready["store_version"] == "v000001" and ready["redis"] is True
    assert ready["batch_invariant"] is True
    info = httpx.get(base + "/v1/store").json()
    assert info["version"] == "v000001" and info["n_sources"] == len(info["source_ids"]) == 5
    assert info["model"]["widths"][0] == 64 and info["device"] == "cpu" and info["n_examples"] == 120
    stats = httpx.get(base + "/v1/stats").json()
    for key in ("throughput_qps", "latency_ms", "batch_queries", "cache", "queue_queries", "journal_entries"):
        assert key in stats
    metrics = httpx.get(base + "/metrics")
    assert metrics.status_code == 200 and "fa_request_seconds_bucket" in metrics.text
    assert metrics.headers["content-type"].startswith("text/plain")


def test_attribution_matches_library_readout(server, built_store, train_x):
    """The answer carries the prediction, top sources / examples with the
    library's scores, the version and timings."""
    base, _ = server
    x = train_x[:3]
    body = {"queries": [query(x[0], client_id="a"), query(x[1], target=7), query(x[2])],
            "granularity": "both", "top_k": 4}
    r = httpx.post(base + "/v1/attributions", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["store_version"] == "v000001" and out["recorded"] is True and len(out["attributions"]) == 3
    assert set(out["timings"]) == {"queue_ms", "readout_ms", "total_ms", "batch_queries"}
    st = open_store(built_store)
    att = VectorAttributor(st, "cpu")
    ref = att.score(x, None, "margin")
    a0 = out["attributions"][0]
    assert a0["client_id"] == "a" and a0["prediction"]["index"] == int(ref.pred[0])
    assert abs(a0["prediction"]["probability"] - float(ref.probs[0].max())) < 1e-6
    top = torch.topk(ref.sources[0], 4)
    assert [s["id"] for s in a0["sources"]] == [st.manifest.source_ids[i] for i in top.indices.tolist()]
    assert torch.allclose(torch.tensor([s["score"] for s in a0["sources"]]), top.values, rtol=1e-5, atol=1e-4)
    topx = torch.topk(ref.examples[0], 4)
    assert [e["index"] for e in a0["examples"]] == topx.indices.tolist()
    assert all(e["source"] == st.manifest.source_ids[st.manifest.example_source[e["index"]]] for e in a0["examples"])
    assert out["attributions"][1]["target"]["index"] == 7


def test_options_granularity_output_order(server, train_x):
    base, _ = server
    q = [query(train_x[5])]
    only_ex = httpx.post(base + "/v1/attributions", json={"queries": q, "granularity": "examples"}).json()
    assert only_ex["attributions"][0]["sources"] is None and len(only_ex["attributions"][0]["examples"]) == 10
    only_src = httpx.post(base + "/v1/attributions", json={"queries": q, "top_k": 100}).json()
    assert only_src["attributions"][0]["examples"] is None and len(only_src["attributions"][0]["sources"]) == 5
    margin = [s["score"] for s in only_src["attributions"][0]["sources"]]
    assert margin == sorted(margin, reverse=True)
    neg = httpx.post(base + "/v1/attributions", json={"queries": q, "order": "negative", "top_k": 5}).json()
    assert [s["score"] for s in neg["attributions"][0]["sources"]] == sorted(margin)
    loss = httpx.post(base + "/v1/attributions", json={"queries": q, "output": "loss", "top_k": 5}).json()
    assert loss["output"] == "loss"
    ids = lambda b: {s["id"] for s in b["attributions"][0]["sources"]}  # noqa: E731
    assert ids(loss) == ids(only_src)


def test_sources_and_etag(server, train_x):
    base, s = server
    r0 = httpx.get(base + "/v1/sources")
    assert r0.status_code == 200 and r0.json()["total_queries"] == 0
    etag = r0.headers["etag"]
    assert httpx.get(base + "/v1/sources", headers={"If-None-Match": etag}).status_code == 304
    httpx.post(base + "/v1/attributions", json={"queries": [query(train_x[i]) for i in range(4)]}).raise_for_status()
    r1 = httpx.get(base + "/v1/sources", headers={"If-None-Match": etag})
    assert r1.status_code == 200 and r1.headers["etag"] != etag
    v = r1.json()
    assert v["total_queries"] == 4 and v["units_per_query"] == s.credit_units
    assert sum(x["credit_units"] for x in v["sources"]) % s.credit_units == 0
    assert {x["id"] for x in v["sources"]} >= {f"publisher-0{i}" for i in range(5)}
    assert all(len(x["trend"]) == s.trend_buckets and x["trend"][-1] == x["credit_units"] for x in v["sources"])
    one = httpx.get(base + "/v1/sources/publisher-00")
    assert one.status_code == 200 and one.json()["id"] == "publisher-00"
    same = httpx.get(base + "/v1/sources/publisher-00", headers={"If-None-Match": one.headers["etag"]})
    assert same.status_code == 304
    missing = httpx.get(base + "/v1/sources/nobody")
    assert missing.status_code == 404
    assert missing.json()["error"]["fields"] == [{"path": "source_id", "in": "path", "reason": "unknown source"}]


def test_compensation_report_json_and_csv(server, train_x):
    base, _ = server
    httpx.post(base + "/v1/attributions", json={"queries": [query(train_x[i]) for i in range(6)]}).raise_for_status()
    params = {"start": "2000-01-01", "end": "2100-01-01T00:00:00Z", "amount": "1000.01", "currency": "usd"}
    rep = httpx.get(base + "/v1/reports/compensation", params=params).json()
    assert rep["currency"] == "USD" and rep["pool_minor"] == 100001 and rep["allocated_minor"] == 100001
    assert sum(line["payout_minor"] for line in rep["lines"]) == 100001
    assert rep["total_credit_units"] == sum(line["credit_units"] for line in rep["lines"]) > 0
    r = httpx.get(base + "/v1/reports/compensation", params={**params, "format": "csv"})
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["source_id"] for row in rows] == [line["source_id"] for line in rep["lines"]]
    assert sum(int(row["payout_minor"]) for row in rows) == 100001
    via_accept = httpx.get(base + "/v1/reports/compensation", params=params, headers={"Accept": "text/csv"})
    assert via_accept.text == r.text
    empty = httpx.get(base + "/v1/reports/compensation",
                      params={**params, "start": "2001-01-01", "end": "2001-02-01"}).json()
    assert empty["lines"] == [] and empty["allocated_minor"] == 0


def test_result_cache_hits_and_version_keyed(server, train_x):
    base, _ = server
    body = {"queries": [query(train_x[9]), query(train_x[10])], "granularity": "both"}
    first = httpx.post(base + "/v1/attributions", json=body).json()
    second = httpx.post(base + "/v1/attributions", json=body).json()
    assert [a["cached"] for a in first["attributions"]] == [False, False]
    assert [a["cached"] for a in second["attributions"]] == [True, True]
    strip = lambda b: [{k: v for k, v in a.items() if k != "cached"} for a in b["attributions"]]  # noqa: E731
    assert strip(first) == strip(second)
    stats = httpx.get(base + "/v1/stats").json()
    assert stats["cache"]["hits"] == 2 and stats["cache"]["misses"] == 2
    # both requests were counted
    assert httpx.get(base + "/v1/sources").json()["total_queries"] == 4


def test_opt_out_is_not_counted(server, train_x):
    base, _ = server
    r = httpx.post(base + "/v1/attributions", json={"queries": [query(train_x[0])], "record": False})
    assert r.status_code == 200 and r.json()["recorded"] is False
    assert httpx.get(base + "/v1/sources").json()["total_queries"] == 0
    httpx.post(base + "/v1/attributions", json={"queries": [query(train_x[0])]}).raise_for_status()
    assert httpx.get(base + "/v1/sources").json()["total_queries"] == 1
