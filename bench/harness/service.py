"""The service under test, as its own process: ``python -m service`` on a free loopback port with a fresh
Redis key prefix (deleted afterwards), and what ``/proc`` says about it (CPU seconds, resident memory,
its process tree). Used by the serving benchmarks, the hostile suite and the store benchmarks."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from bench.harness.common import ROOT

REDIS_URL = os.environ.get("FA_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def service(store: Path, redis_url: str = REDIS_URL, log: Path | None = None, cwd: Path = ROOT,
            env_extra: dict | None = None, **settings):
    """``python -m service`` in its own process on a free loopback port with ``FA_<NAME>`` = each setting
    (``env_extra``: other variables); yields ``(base_url, pid, prefix)`` once ``/readyz`` answers 200.
    The Redis keys under its prefix are deleted on exit."""
    import httpx

    port = free_port()
    prefix = f"bench:{uuid.uuid4().hex[:10]}:"
    data = tempfile.mkdtemp(prefix="fa-bench-")
    env = {**os.environ, "FA_REDIS_PREFIX": prefix, "FA_BUILD_DEFAULT_STORE": "false",
           **{f"FA_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v) for k, v in settings.items()}}
    env.pop("REDIS_URL", None)
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port), "--store", str(store),
           "--data-dir", data, "--redis-url", redis_url, "--log-level", "warning"]
    if log:
        Path(log).parent.mkdir(parents=True, exist_ok=True)  # (a fresh checkout has no bench/.cache yet)
    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"service on {store} exited with {proc.returncode} (see {log})")
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError("service did not become ready in 120 s")
            time.sleep(0.1)
        yield base, proc.pid, prefix
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()
        drop_prefix(redis_url, prefix)
        shutil.rmtree(data, ignore_errors=True)


def drop_prefix(redis_url: str, prefix: str) -> None:
    import redis

    try:
        r = redis.Redis.from_url(redis_url)
        keys = list(r.scan_iter(match=prefix + "*", count=1000))
        for i in range(0, len(keys), 1000):
            r.delete(*keys[i:i + 1000])
        r.close()
    except redis.RedisError:
        pass


def cpu_seconds(*pids: int) -> float:
    """User + system CPU seconds so far of the processes ``pids`` (all their threads; one that has exited
    counts 0), or of this process when none is named."""
    if not pids:
        t = os.times()
        return t.user + t.system
    total = 0.0
    for p in pids:
        try:
            f = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
            total += (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return total


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` (``VmRSS``), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status: no VmRSS")


def tree(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out
