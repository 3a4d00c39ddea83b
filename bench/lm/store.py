"""The brown store end to end on this machine: ``fa-worker build --preset
brown`` into a fresh directory, timed (train + simulate + compress +
publish), then its size (the per-document part against exact float32
responses) and the resident memory of a real ``python -m service`` process
holding it (``VmRSS`` from ``/proc`` once ``/readyz`` answers, beside the
same figure for the service holding the digits store).

Adds one record with ``store_build_s`` to ``bench/results/lm_quality.json``
(kept when ``bench.lm.quality`` rewrites the file).

    python -m bench.lm.store [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness.common import ROOT, digits_store, machine
from bench.harness.service import rss_mib, service
from bench.lm.quality import EXACT_BYTES, OUT


def build(root: Path) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "worker", "build", "--preset", "brown", "--store", str(root)],
                   cwd=ROOT, check=True)
    return time.perf_counter() - t


def store_sizes(root: Path) -> dict:
    """Bytes of the current version: every file, and the manifest's method."""
    from influence.store import current_version

    version = root / "versions" / current_version(root)
    files = {p.name: p.stat().st_size for p in version.rglob("*") if p.is_file()}
    manifest = json.loads((version / "manifest.json").read_text())
    return {"version": version.name, "total_bytes": sum(files.values()), "files": files,
            "compress_rank": manifest.get("method", {}).get("compress_rank"), "dtype": manifest.get("dtype")}


def resident(store: Path) -> float:
    with service(store) as (_, pid, _prefix):
        time.sleep(1.0)
        return rss_mib(pid)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=Path, default=None, help="build here and keep it (default: a temporary dir)")
    a = ap.parse_args(argv)
    root = a.keep or Path(tempfile.mkdtemp(prefix="fa-brown-")) / "brown"
    try:
        secs = build(root)
        sizes = store_sizes(root)
        rec = {"store_build_s": secs, "store": sizes, "service_rss_mb": resident(root),
               "service_rss_mb_digits": resident(digits_store()), "exact_bytes_per_member": EXACT_BYTES,
               "machine": machine(), "date": time.strftime("%Y-%m-%d"),
               "command": "python -m bench.lm.store"}
    finally:
        if a.keep is None:
            shutil.rmtree(root.parent, ignore_errors=True)
    res = json.loads(OUT.read_text()) if OUT.exists() else {"records": []}
    res["records"] = [r for r in res.get("records", []) if "store_build_s" not in r] + [rec]
    OUT.write_text(json.dumps(res, indent=1, default=float))
    print(json.dumps({k: v for k, v in rec.items() if k != "machine"}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
