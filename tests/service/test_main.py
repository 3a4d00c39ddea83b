"""``python -m service`` end to end: no Redis configured, so it starts the
embedded server (AOF on) in its data dir and serves a store the worker built
first (``fa-worker build --if-missing``, the tiny preset here, as
``scripts/run`` does with digits); without a store it refuses to start.
Plus the settings sources: environment, ``.env`` and flags."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.__main__ import parse_args, settings_from
from service.settings import Settings

from .util import free_port

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FA_") and k != "REDIS_URL"}
    env.update(FA_QUERY_KEYS="k1", PYTHONPATH=str(ROOT))
    return env


def test_service_without_a_store_exits_with_the_build_command(tmp_path):
    r = subprocess.run([sys.executable, "-m", "service", "--port", str(free_port()), "--store", str(tmp_path / "none"),
                        "--data-dir", str(tmp_path / "data")], cwd=tmp_path, env=_env(), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "no published store at" in r.stderr and "fa-worker build" in r.stderr and "--if-missing" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "none").exists()  # nothing trained, nothing written


def test_python_m_service_first_run_embedded_redis(tmp_path, train_x):
    port, store, data = free_port(), tmp_path / "store", tmp_path / "data"
    env = _env()
    build = [sys.executable, "-m", "worker", "build", "--preset", "tiny", "--store", str(store), "--quiet",
             "--if-missing"]
    first = subprocess.run(build, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0 and "published v000001" in first.stdout, first.stderr
    again = subprocess.run(build, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to build" in again.stdout, again.stderr
    proc = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port), "--store", str(store),
                             "--data-dir", str(data), "--log-level", "warning"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, ready = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(base + "/readyz", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert ready is not None and ready.status_code == 200, proc.stdout.read().decode() if proc.poll() else ""
        assert (store / "CURRENT").read_text().strip() == "v000001"
        body = {"queries": [{"input": train_x[0].tolist()}]}
        assert httpx.post(base + "/v1/attributions", json=body).status_code == 401
        r = httpx.post(base + "/v1/attributions", json=body, headers={"X-API-Key": "k1"})
        assert r.status_code == 200 and r.json()["recorded"] is True
        conf = (data / "redis" / "valkey.conf").read_text()
        assert "appendonly yes" in conf
        assert (data / "redis" / "appendonlydir").is_dir()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    log = (data / "redis" / "valkey.log").read_text()
    assert "ready to exit" in log.lower() or "bye" in log.lower()


def test_settings_sources(tmp_path, monkeypatch):
    for k in list(os.environ):
        if k.startswith("FA_") or k == "REDIS_URL":
            monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("FA_PORT=9001\nFA_MAX_BATCH=32\nFA_ADMIN_KEYS=a1,a2\n")
    monkeypatch.setenv("FA_MAX_BATCH", "8")
    monkeypatch.setenv("REDIS_URL", "redis://example:6379/2")
    monkeypatch.setenv("FA_PUBLISHER_KEYS", '{"pk": "publisher-03"}')
    s = Settings()
    assert (s.port, s.max_batch, s.admin_keys, s.redis_url) == (9001, 8, ["a1", "a2"], "redis://example:6379/2")
    assert s.publisher_keys == {"pk": "publisher-03"} and s.auth_enabled
    flags = settings_from(parse_args(["--port", "7000", "--store", "elsewhere", "--redis-url", "redis://h/1"]))
    assert (flags.port, flags.store, flags.redis_url, flags.max_batch) == (7000, Path("elsewhere"), "redis://h/1", 8)
    monkeypatch.setenv("FA_PUBLISHER_KEYS", "k1:s1,k2:s2")
    assert Settings().publisher_keys == {"k1": "s1", "k2": "s2"}


def test_every_setting_is_documented():
    doc = (ROOT / "service" / "SETTINGS.md").read_text()
    missing = [n for n in Settings.model_fields if f"`{n}`" not in doc or f"`FA_{n.upper()}`" not in doc]
    assert not missing, f"add to service/SETTINGS.md: {missing}"
