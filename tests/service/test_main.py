"""``python -m service`` end to end: no Redis configured, so it starts the
embedded server (AOF on) in its data dir, builds the default store on first
run (the tiny preset here, to keep the test short), and serves. Plus the
settings sources: environment, ``.env`` and flags."""

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


def test_python_m_service_first_run_embedded_redis(tmp_path, train_x):
    port, store, data = free_port(), tmp_path / "store", tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FA_") and k != "REDIS_URL"}
    env.update(FA_DEFAULT_PRESET="tiny", FA_QUERY_KEYS="k1", PYTHONPATH=str(ROOT))
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
