"""The service's shape: every route module's router is included and its key
checks are visible to ``RequestGate``; before the store is loaded every
store-backed route answers the one 503 ``not_ready`` (``deps.ready``); the
``AnswerStore`` keeps its key formats, skips caching a version no longer
served, and falls back to its local copy while Redis is down."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import pkgutil

import httpx
import pytest
import redis.asyncio as aioredis

import service.routes
from service.answers import AnswerStore
from service.app import create_app
from service.errors import ApiError
from service.ledger import Journal, Ledger
from service.middleware import _leaf_routes, _needs
from service.routes import ROUTERS
from service.schemas import AttributionRequest
from service.settings import Settings

from .util import REDIS_URL, free_port, query, serve, start_redis


def _route_modules():
    for m in pkgutil.iter_modules(service.routes.__path__):
        mod = importlib.import_module(f"service.routes.{m.name}")
        if hasattr(mod, "router"):
            yield m.name, mod


def test_every_route_module_is_included_and_gated(tmp_path):
    app = create_app(Settings(_env_file=None, store=tmp_path / "none", data_dir=tmp_path / "var"))
    leaves = {(getattr(r, "path", None), m): _needs(r) for r in _leaf_routes(app.router.routes)
              for m in (getattr(r, "methods", None) or ())}
    names = [name for name, _ in _route_modules()]
    assert {"health", "attributions", "sources", "reports", "store"} <= set(names)
    for name, mod in _route_modules():
        assert mod.router in ROUTERS, name
        for route in mod.router.routes:
            for method in route.methods:
                assert (route.path, method) in leaves, (name, route.path)
    for (path, method), (roles, _) in leaves.items():
        if path.startswith("/v1/"):  # every API route names its key's roles where the gate finds them
            assert roles, (method, path)
    assert leaves[("/v1/attributions", "POST")] == (("query",), True)


STORE_ROUTES = [("POST", "/v1/attributions"), ("GET", "/v1/sources"), ("GET", "/v1/sources/s0"),
                ("GET", "/v1/reports/compensation"), ("GET", "/v1/store"), ("GET", "/v1/playground/examples"),
                ("GET", "/v1/playground/training/0"), ("GET", "/v1/playground/names"),
                ("GET", "/v1/playground/passages")]


def test_not_ready_is_one_503_everywhere(settings_for, tmp_path, train_x):
    s = settings_for(store=tmp_path / "later", retry_after_s=3)
    report = {"start": "2026-01-01", "end": "2026-01-02", "amount": "100", "currency": "EUR"}
    with serve(s, ready=False) as base, httpx.Client(base_url=base, timeout=30) as c:
        for method, path in STORE_ROUTES:
            r = c.request(method, path, json={"queries": [query(train_x[0])]} if method == "POST" else None,
                          params=report if "reports" in path else None)
            assert r.status_code == 503, (path, r.text)
            assert r.headers["retry-after"] == "3", path
            assert r.json()["error"] == {"status": 503, "code": "not_ready",
                                         "message": "the store is still loading", "fields": []}, path
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["error"]["message"] == "store not loaded: loading"
        stats = c.get("/v1/stats")
        assert stats.status_code == 200 and stats.json()["store_version"] is None
        assert c.get("/healthz").status_code == 200 and c.get("/metrics").status_code == 200


def _answers(url: str, prefix: str, tmp_path, serving=lambda: "v1", **over):
    s = Settings(_env_file=None, store=tmp_path / "none", redis_url=url, redis_prefix=prefix, cache_ttl_s=60,
                 **over)
    client = aioredis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    ledger = Ledger(client, prefix, Journal(tmp_path / "journal", 10), 60)
    return AnswerStore(client, ledger, s, serving), client, s


def test_answer_store_keys_and_cache_of_the_served_version_only(prefix, tmp_path, redis_client):
    req = AttributionRequest.model_validate({"queries": [{"input": [0.0]}], "top_k": 3})

    async def go():
        serving = ["v1"]
        a, client, s = _answers(REDIS_URL, prefix, tmp_path, lambda: serving[0])
        try:
            key = a.cache_key("v1", req, "margin", ("t", b"\x00"))
            h = hashlib.sha256(f"margin|sources|3|positive|t|{s.credit_rule}|{s.credit_units}|".encode() + b"\x00")
            assert key == f"{prefix}cache:v1:{h.hexdigest()}"
            assert a.idem_key("p", a.idem_hash("k")) == f"{prefix}idem:p:{hashlib.sha256(b'k').hexdigest()}"
            await a.put_many("v1", {key: {"a": {}, "c": {"s0": 1}}})
            assert await a.get_many([key, key + "x"]) == [{"a": {}, "c": {"s0": 1}}, None]
            serving[0] = "v2"  # v1 swapped out: its answers are no longer cached, and can be dropped
            other = a.cache_key("v1", req, "loss", ("t", b"\x00"))
            await a.put_many("v1", {other: {"a": {}, "c": {}}})
            assert await a.get_many([other]) == [None]
            await a.drop_version("v1")
            assert await a.get_many([key]) == [None]
        finally:
            await client.aclose()

    asyncio.run(go())


def test_answer_store_falls_back_to_its_local_copy_while_redis_is_down(tmp_path):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    proc = start_redis(port)

    async def go():
        a, client, _ = _answers(url, "fa:", tmp_path)
        fresh, fresh_client, _ = _answers(url, "fa:", tmp_path)
        try:
            key = a.idem_key("p", a.idem_hash("before"))
            claim = await a.claim(key, "fp")
            assert claim.replay is None and claim.pending  # claimed in Redis
            assert await a.finish(claim, {"n": 1}) == {"n": 1}  # Redis and the local copy
            proc.kill()
            proc.wait()
            assert (await a.claim(key, "fp")).replay == {"n": 1}
            other = await fresh.claim(key, "fp")  # not in Redis's reach now: claimed in process only
            assert other.replay is None and other.pending is None
            await fresh.release(other)
            during = a.idem_key("p", a.idem_hash("during"))
            claim = await a.claim(during, "fp2")
            assert claim.pending is None and await a.finish(claim, {"n": 2}) == {"n": 2}
            assert (await a.claim(during, "fp2")).replay == {"n": 2}
            assert during in a.unsynced  # written to Redis once it is back
            with pytest.raises(ApiError) as e:
                await a.claim(during, "another body")
            assert e.value.status == 422 and e.value.fields[0][0] == "Idempotency-Key"
            cached = a.cache_key("v1", AttributionRequest.model_validate({"queries": [{"input": [0.0]}]}), "margin",
                                 ("t", b""))
            await a.put_many("v1", {cached: {"a": {}, "c": {}}})  # an outage is a miss, never an error
            assert await a.get_many([cached]) == [None]
        finally:
            await client.aclose()
            await fresh_client.aclose()

    try:
        asyncio.run(go())
    finally:
        proc.kill()
        proc.wait()
