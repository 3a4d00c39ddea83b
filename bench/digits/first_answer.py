"""``python -m bench.digits.first_answer``: a new user's first minutes, measured.

Clones the repository's committed ``HEAD`` into a temporary directory (no
``.venv``, no store), runs ``scripts/run`` there exactly as the README says
(setup, ``fa-worker build --if-missing``, the service), and polls
``POST /v1/attributions`` on loopback until the first 200. Every line the
run prints is timestamped, so the phases show where the time went. The
record goes into ``results/precompute.json`` under ``first_answer``.
Package downloads come from the local pip cache when it has them; a machine
without one downloads them (stated in the record).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.digits.precompute import merge
from bench.harness.common import ROOT, machine

QUERY = {"queries": [{"input": [0.0] * 20 + [0.5] * 24 + [0.0] * 20}], "top_k": 3}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pump(stream, t0: float, lines: list[tuple[float, str]]) -> None:
    for raw in iter(stream.readline, b""):
        lines.append((time.perf_counter() - t0, raw.decode(errors="replace").rstrip()))


def run(timeout_s: float = 900) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="fa-first-"))
    repo = tmp / "repo"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(repo)], check=True)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True).stdout
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FA_", "VIRTUAL_ENV")) and k != "REDIS_URL"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(["scripts/run", "--port", str(port)], cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    lines: list[tuple[float, str]] = []
    threading.Thread(target=_pump, args=(proc.stdout, t0, lines), daemon=True).start()
    first = None
    try:
        while time.perf_counter() - t0 < timeout_s and proc.poll() is None:
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/v1/attributions", json=QUERY, timeout=5)
                if r.status_code == 200:
                    first = time.perf_counter() - t0
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    built = next((t for t, s in lines if "published v" in s or "nothing to build" in s), None)
    sim = next((t for t, s in lines if "environment ready" in s), None)
    m = machine()
    return {"first_answer_s": first, "setup_s": sim, "build_s": None if built is None or sim is None else built - sim,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": f"{m.get('cpu')}, {m['cpus']} cores, {m['mem_gib']} GiB", "git": rev.strip(),
            "pip_cache": Path("~/.cache/pip").expanduser().exists(), "log_tail": [s for _, s in lines[-8:]]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.digits.first_answer", description=__doc__.split("\n")[0])
    ap.add_argument("--timeout", type=float, default=900)
    res = run(ap.parse_args(argv).timeout)
    merge({"first_answer": res}, stamp=False)
    print({k: v for k, v in res.items() if k != "log_tail"})


if __name__ == "__main__":
    main()
