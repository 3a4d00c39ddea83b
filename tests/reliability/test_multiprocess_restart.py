"""A serving process restarted beside a ready peer (``--workers 2``, real
processes behind one port, a real Redis; SIGKILL as a crash does it):

- it loads the group's version, never ``CURRENT`` on its own: when that
  version is gone from the store it stays not ready with an error in the
  log, and one admin reload moves the whole group, it included (issue 28
  row 3);
- fa-worker's pruning spares a version that a process serves, so a restart
  finds it (row 3);
- it takes no connection before its store is resident: no ``503
  not_ready`` while its peer is ready (row 6)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import httpx

from influence.store import AUDIT_ASSET, current_version, list_versions, open_store
from worker import publishing

from ..service.util import REDIS_URL, publish_scaled
from .test_multiprocess import START_S, _all_ready, _children, group


def _slot(data: Path, k: int) -> dict:
    """What the process of slot ``k`` last wrote to ``peers/p{k}.json`` (pid, version)."""
    try:
        return json.loads((data / "peers" / f"p{k}.json").read_text())
    except (OSError, ValueError):
        return {}


def _kill_slot(data: Path, sup: int, k: int = 1) -> int:
    victim = _slot(data, k)["pid"]
    assert victim in _children(sup)
    os.kill(victim, signal.SIGKILL)
    return victim


def _gone(pid: int) -> bool:
    """The process has died (a zombie until its supervisor reaps it, or no more)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def _versions_behind_the_port(base: str, n: int = 12) -> Counter:
    """``/readyz`` over ``n`` new connections: version (or the error code) -> answers."""
    out = Counter()
    for _ in range(n):
        r = httpx.get(base + "/readyz", timeout=10)
        out[r.json()["store_version"] if r.status_code == 200 else r.json()["error"]["code"]] += 1
    return out


def _worker_publish(root: Path, factor: float, keep: int) -> str:
    """A new version as fa-worker publishes one (its pruning to ``keep``): the current one's responses scaled."""
    st = open_store(root)
    scale = lambda blocks: [{k: v * factor for k, v in b.items()} for b in blocks] if blocks else None  # noqa: E731
    training = None if st.X is None else (st.X, st.y)
    return publishing.publish(root, st.manifest, st.params, scale(st.examples), scale(st.sources), training,
                              keep=keep, example_coef=st.example_coef,
                              assets={k: v for k, v in (st.assets or {}).items() if k != AUDIT_ASSET}).name


def test_restart_whose_group_version_is_gone_stays_out_until_one_decision(built_store, prefix, tmp_path):
    """Reload the group to v1 (CURRENT says v2), delete v1's directory,
    SIGKILL one process: the process started in its place must not serve v2
    beside its peer's v1 (before: it loaded CURRENT, the group split
    silently). It logs why and stays out; a reload moves both."""
    root, data = tmp_path / "store", tmp_path / "var"
    shutil.copytree(built_store, root)
    v1 = current_version(root)
    v2 = publish_scaled(root, 2.0)
    log = tmp_path / "group.log"
    with group(root, data, REDIS_URL, prefix, log, cache_ttl_s=0, request_timeout_s=120) as (base, sup):
        back = httpx.post(base + "/v1/admin/reload", params={"version": v1}, timeout=300).json()
        assert back["store_version"] == v1 and back["processes"] == {"serving": 2, "total": 2}, back
        shutil.rmtree(root / "versions" / v1)  # gone by hand (or by a publisher that prunes it)
        victim = _kill_slot(data, sup.pid)
        seen: Counter = Counter()
        said = re.compile(rf"group's store version {v1}.*not in the store")
        deadline = time.time() + START_S
        while time.time() < deadline:
            seen.update(_versions_behind_the_port(base, 4))
            now = _slot(data, 1)
            if now.get("pid") not in (None, victim) and (now.get("version") or said.search(log.read_text())):
                break  # the new process has loaded something, or said why it will not
            time.sleep(0.2)
        seen.update(_versions_behind_the_port(base, 24))
        replaced = _slot(data, 1)
        text = log.read_text()
        assert replaced.get("pid") not in (None, victim), text[-3000:]
        assert replaced.get("version") is None, (replaced, text[-3000:])  # not v2 beside the peer's v1
        assert v2 not in seen and seen[v1] > 0, seen
        assert said.search(text), text[-3000:]
        # one decision moves the whole group, the process that stayed out included
        moved = httpx.post(base + "/v1/admin/reload", params={"version": v2}, timeout=300).json()
        assert moved["store_version"] == v2 and moved["processes"] == {"serving": 2, "total": 2}, moved
        assert _all_ready(base, time.time() + START_S)
        assert set(_versions_behind_the_port(base)) == {v2}


def test_pruning_spares_a_version_a_process_serves(built_store, prefix, tmp_path):
    """The group serves v1 (a rollback), fa-worker publishes two versions
    with ``keep=2``: v1 stays on disk while served (v2, served by none, is
    pruned), so a process SIGKILLed then comes back on v1; once the group
    has moved on, the next publish prunes v1."""
    root, data = tmp_path / "store", tmp_path / "var"
    shutil.copytree(built_store, root)
    v1 = current_version(root)
    v2 = publish_scaled(root, 2.0)
    with group(root, data, REDIS_URL, prefix, tmp_path / "group.log", cache_ttl_s=0,
               request_timeout_s=120) as (base, sup):
        back = httpx.post(base + "/v1/admin/reload", params={"version": v1}, timeout=300).json()
        assert back["processes"] == {"serving": 2, "total": 2}, back
        v3 = _worker_publish(root, 4.0, keep=2)
        v4 = _worker_publish(root, 0.5, keep=2)
        assert list_versions(root) == [v1, v3, v4], (v2, list_versions(root))  # v2 pruned, v1 spared
        victim = _kill_slot(data, sup.pid)
        deadline = time.time() + START_S
        while time.time() < deadline and (_slot(data, 1).get("pid") in (None, victim)
                                          or _slot(data, 1).get("version") is None):
            time.sleep(0.2)
        assert _slot(data, 1).get("version") == v1, (tmp_path / "group.log").read_text()[-3000:]
        assert _all_ready(base, time.time() + START_S)
        assert set(_versions_behind_the_port(base)) == {v1}
        moved = httpx.post(base + "/v1/admin/reload", timeout=300).json()  # to CURRENT: v4
        assert moved["store_version"] == v4 and moved["processes"] == {"serving": 2, "total": 2}, moved
        v5 = _worker_publish(root, 2.0, keep=2)
        assert list_versions(root) == [v4, v5]  # v1 served by none: pruned now


def test_store_watch_in_a_group_puts_its_version_on_record(built_store, prefix, tmp_path):
    """With ``watch_store_s`` on, the group follows CURRENT: each new version
    becomes the group's on record (not only the start's), so once fa-worker
    has pruned the start's version a restarted process still loads the
    group's, the newest."""
    root, data = tmp_path / "store", tmp_path / "var"
    shutil.copytree(built_store, root)
    v1 = current_version(root)

    def everywhere(version: str, base: str) -> bool:
        deadline = time.time() + START_S
        while time.time() < deadline:
            if all(_slot(data, k).get("version") == version for k in (0, 1)):
                return True
            time.sleep(0.1)
        return False

    with group(root, data, REDIS_URL, prefix, tmp_path / "group.log", cache_ttl_s=0,
               watch_store_s=0.2, request_timeout_s=120) as (base, sup):
        v2 = _worker_publish(root, 2.0, keep=1)
        assert everywhere(v2, base)
        v3 = _worker_publish(root, 4.0, keep=1)  # v1 pruned (served by none), v2 spared until the group moves
        assert everywhere(v3, base)
        assert v1 not in list_versions(root)
        victim = _kill_slot(data, sup.pid)
        deadline = time.time() + START_S
        while time.time() < deadline and (_slot(data, 1).get("pid") in (None, victim)
                                          or _slot(data, 1).get("version") is None):
            time.sleep(0.2)
        assert _slot(data, 1).get("version") == v3, (tmp_path / "group.log").read_text()[-3000:]
        assert set(_versions_behind_the_port(base)) == {v3}


def test_restarted_process_takes_no_connection_while_loading(hf_store, prefix, tmp_path):
    """Under load (a new connection per request), SIGKILL one of two
    processes serving an hf store (a load of seconds: transformers, the model,
    its tangents): the one started in its place answers nothing until its
    store is resident, so no client gets 503 ``not_ready`` while the peer is
    ready (before: about half the new connections did while it loaded).
    Requests the killed process held are cut (a transport error), none
    after; every other answer is a 200; the new process takes connections
    once loaded."""
    root, data = tmp_path / "store", tmp_path / "var"
    shutil.copytree(hf_store, root)
    from .load import text_bodies

    bodies = [{**b, "record": False} for b in text_bodies(20, max_words=6)]
    with group(root, data, REDIS_URL, prefix, tmp_path / "group.log", cache_ttl_s=0,
               request_timeout_s=120) as (base, sup):
        events: list[tuple[float, float, object]] = []  # (sent, answered, status or the exception's name)
        state = {"killed": None, "back": None, "stop": False}

        async def client(k: int):
            async with httpx.AsyncClient(base_url=base, timeout=60,
                                         limits=httpx.Limits(max_keepalive_connections=0)) as c:
                i = k
                while not state["stop"]:
                    t0 = time.monotonic()
                    try:
                        r = await c.post("/v1/attributions", json=bodies[i % len(bodies)])
                        got = r.status_code if r.status_code != 503 else f"503 {r.json()['error']['code']}"
                    except httpx.TransportError as e:
                        got = f"cut: {type(e).__name__}"
                    events.append((t0, time.monotonic(), got))
                    i += 6

        async def timeline():
            await asyncio.sleep(1.5)
            victim = await asyncio.to_thread(_kill_slot, data, sup.pid)
            state["killed"] = time.monotonic()
            while not _gone(victim):  # (its socket, and the connections queued on it, go with it)
                await asyncio.sleep(0.01)
            state["dead"] = time.monotonic()
            while True:  # until the new process of slot 1 has loaded its store
                now = await asyncio.to_thread(_slot, data, 1)
                if now.get("pid") not in (None, victim) and now.get("version"):
                    break
                assert time.monotonic() - state["killed"] < START_S, "the killed process was not replaced"
                await asyncio.sleep(0.1)
            state["back"] = time.monotonic()
            await asyncio.sleep(3.0)  # both take connections again
            state["stop"] = True

        async def run():
            await asyncio.gather(timeline(), *(client(k) for k in range(6)))

        asyncio.run(run())
        both = _all_ready(base, time.time() + 30)
    killed, dead, back = state["killed"], state["dead"], state["back"]
    during = Counter(got for t0, _, got in events if killed < t0 < back)
    cut = [(round(t0 - killed, 2), got) for t0, _, got in events if str(got).startswith("cut")]
    print(f"reload window {back - killed:.1f} s: answers sent meanwhile {dict(during)}; cut: {cut}")
    assert back - killed > 1.0, "the restart was too quick to show anything"
    assert during[200] > 0
    assert not [e for e in events if e[2] == "503 not_ready"], Counter(got for *_, got in events)
    assert {got for *_, got in events if not str(got).startswith("cut")} == {200}, Counter(got for *_, got in events)
    assert all(t0 < dead + 0.5 for t0, _ in cut), (dead - killed, cut)  # only what the killed process held
    assert both
