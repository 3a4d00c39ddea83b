"""Hot swap: a new store version is published and the service switches to
it under concurrent load with zero failed requests, and no answer mixes two
versions. The new version's responses are exactly twice the old ones, so
every score tells which version produced it."""

from __future__ import annotations

import asyncio
import time

import httpx

from .util import publish_scaled, query, serve


def _scores(body: dict) -> list[list[float]]:
    return [[s["score"] for s in a["sources"]] for a in body["attributions"]]


def test_reload_under_concurrent_requests(settings_for, store_root, train_x, redis_client, prefix):
    s = settings_for(max_wait_ms=2, cache_ttl_s=60)
    body = {"queries": [query(train_x[i]) for i in range(3)], "top_k": 5, "order": "abs", "record": False}

    async def go(base):
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            ref = (await c.post("/v1/attributions", json=body)).json()
            answers: list[httpx.Response] = []
            stop = asyncio.Event()

            async def client_loop():
                while not stop.is_set():
                    answers.append(await c.post("/v1/attributions", json=body))

            loops = [asyncio.create_task(client_loop()) for _ in range(6)]
            await asyncio.sleep(0.3)
            new = await asyncio.to_thread(publish_scaled, store_root)
            r = await c.post("/v1/admin/reload")
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*loops)
            again = await c.post("/v1/admin/reload")
            return ref, new, r, answers, again

    with serve(s) as base:
        ref, new, reload, answers, again = asyncio.run(go(base))
        assert list(redis_client.scan_iter(match=f"{prefix}cache:v000002:*"))
        assert not list(redis_client.scan_iter(match=f"{prefix}cache:v000001:*"))  # dropped after the swap
    assert reload.status_code == 200
    assert reload.json()["previous_version"] == "v000001" and reload.json()["store_version"] == new == "v000002"
    assert again.json()["changed"] is False
    assert [r.status_code for r in answers].count(200) == len(answers) > 20
    versions = [r.json()["store_version"] for r in answers]
    assert {"v000001", "v000002"} <= set(versions)
    assert versions.index("v000002") > 0 and "v000001" not in versions[versions.index("v000002") + 30:]
    base_scores = _scores(ref)
    for r in answers:
        factor = 1.0 if r.json()["store_version"] == "v000001" else 2.0
        assert _scores(r.json()) == [[factor * v for v in row] for row in base_scores]


def test_watch_picks_up_a_published_version(settings_for, store_root, train_x):
    with serve(settings_for(watch_store_s=0.1)) as base:
        assert httpx.get(base + "/v1/store").json()["version"] == "v000001"
        new = publish_scaled(store_root)
        deadline = time.time() + 10
        while httpx.get(base + "/v1/store").json()["version"] != new and time.time() < deadline:
            time.sleep(0.05)
        r = httpx.post(base + "/v1/attributions", json={"queries": [query(train_x[0])]})
        assert r.json()["store_version"] == new


def test_not_ready_until_loaded(settings_for, tmp_path, train_x):
    """With no store published yet the service is live but not ready, and
    attribution answers 503; it becomes ready once a store appears."""
    import shutil

    empty = tmp_path / "later"
    with serve(settings_for(store=empty), ready=False) as base:
        assert httpx.get(base + "/healthz").status_code == 200
        r = httpx.get(base + "/readyz")
        assert r.status_code == 503 and "retry-after" in r.headers
        a = httpx.post(base + "/v1/attributions", json={"queries": [query(train_x[0])]})
        assert a.status_code == 503 and a.json()["error"]["code"] == "not_ready"
        shutil.copytree(settings_for().store, empty)
        deadline = time.time() + 10
        while httpx.get(base + "/readyz").status_code != 200 and time.time() < deadline:
            time.sleep(0.1)
        assert httpx.post(base + "/v1/attributions", json={"queries": [query(train_x[0])]}).status_code == 200
