"""``python -m bench.serving.startup --store DIR [--code DIR ...]``: how long a serving
process takes to answer ``/readyz`` 200 on a store (``ready_s``) and until its
batch-invariance probe has answered (``probed_s``; the probe runs in the
background since issue 24 row 5), one checkout of the code after the other on
the same store and machine, so the ratio is side by side. A Redis on
127.0.0.1:6379 (db 14, a private prefix); OMP_NUM_THREADS=1 as the service's
default. Results in ``bench/results/startup.json``.

    python -m bench.serving.startup --store stores/brown-ft --code /tmp/old-checkout .
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.harness.common import RESULTS, machine

OUT = RESULTS / "startup.json"


def measure(store: Path, code: Path, limit_s: float = 900.0) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "FA_STORE": str(store), "FA_REDIS_URL": "redis://127.0.0.1:6379/14",
           "FA_DATA_DIR": f"/tmp/fa-startup-{port}", "FA_REDIS_PREFIX": f"startup{port}:", "PYTHONPATH": str(code),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port)], cwd=code, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ready = probed = None
    try:
        while time.time() - t0 < limit_s and probed is None:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
                if r.status_code == 200:
                    ready = ready or time.time() - t0
                    if r.json().get("batch_invariant") is not None:
                        probed = time.time() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(30)
    return {"store": str(store), "code": str(code), "ready_s": ready and round(ready, 1),
            "probed_s": probed and round(probed, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--code", type=Path, nargs="+", default=[Path(".")], help="checkouts to compare, in order")
    a = ap.parse_args(argv)
    rows = [measure(a.store.resolve(), c.resolve()) for c in a.code]
    for r in rows:
        print(json.dumps(r), flush=True)
    cmd = "python -m bench.serving.startup " + " ".join(argv or sys.argv[1:])
    OUT.write_text(json.dumps({"runs": rows, "machine": machine(), "date": time.strftime("%Y-%m-%d"), "command": cmd},
                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
