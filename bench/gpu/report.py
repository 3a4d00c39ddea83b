"""The "GPU suite" section of BENCHMARKS.md from ``bench/results/gpu_suite.json``
(``bench.gpu_suite --write-md``, or ``python -m bench.gpu.report`` alone)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.harness.common import RESULTS
from bench.harness.report import fmt, write_section

HEADING = "GPU suite"


def _table(head: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
        ["| " + " | ".join("–" if v is None else (fmt(v) if isinstance(v, float) else str(v)) for v in r) + " |"
         for r in rows]


def markdown(res: dict) -> str:
    m = res.get("machine", {})
    dry = "; a dry run: tiny sizes" if res.get("dry_run") else ""
    out = [f"`{res.get('command', 'python -m bench.gpu_suite')}` on {res['device']} ({m.get('cpus')} CPUs, torch "
           f"{m.get('torch')}, {m.get('date')}, git {m.get('git')}){dry}.",
           "", *_table(["part", "ok", "seconds", "error"],
                       [[p["name"], "yes" if p["ok"] else "**no**", p["seconds"], p.get("error", "")[:120]]
                        for p in res["parts"]])]
    if res.get("scale_probe"):
        info = res.get("info", {}).get("scale_probe", {})
        out += ["", f"Scale probe (`bench.gpu.scale`; peak {fmt(info.get('peak_tflops'))} TFLOP/s, "
                    f"{info.get('peak_source')}; {info.get('formulas', {}).get('tflops')}, "
                    f"F = {info.get('formulas', {}).get('forward_flops')}):", "",
                *_table(["model", "trained", "R", "batch", "ms/query", "TFLOP/s", "of peak", "backward ms/query",
                         "TRAK k=4096 GFLOP/query", "TRAK ms/query (projected)"],
                        [[r["model"], r["trained"], r["R"], r["batch"], r["ms_per_query"], r["tflops"],
                          f"{r['peak_fraction']:.0%}", r["backward_ms_per_query"], r["trak_flops_per_query"] / 1e9,
                          r["trak_ms_per_query_projected"]] for r in res["scale_probe"]])]
    if res.get("served"):
        note = res.get("info", {}).get("served", {}).get("note")
        out += ["", "Served (`bench.serving.load` / `bench.serving.load_text`, 1 query per request, batching on, "
                    "cache off" + (f"; {note}" if note else "") + "):", "",
                *_table(["store", "processes", "concurrency", "q/s", "p99 ms", "errors"],
                        [[r["store_kind"], r["processes"], r["concurrency"], r["qps"], r["p99_ms"], r["error_rate"]]
                         for r in res["served"]])]
    if res.get("builds"):
        out += ["", "Worker builds (`fa-worker build --preset P --device D`):", "",
                *_table(["preset", "device", "seconds", "error"],
                        [[r["preset"], r["device"], r["seconds"], r.get("error", "")[:80]] for r in res["builds"]])]
    if res.get("text_readout"):
        out += ["", "Text readout on the device against the CPU (largest difference / largest score):", "",
                *_table(["store", "tangents", "queries", "sources", "documents", "f"],
                        [[r["store"], r["tangent_dtype"], r["queries"], f"{r['max_rel_diff_sources']:.1e}",
                          f"{r['max_rel_diff_examples']:.1e}", f"{r['max_rel_diff_logprob']:.1e}"]
                         for r in res["text_readout"]])]
    return "\n".join(out)


def write_md(res: dict) -> None:
    write_section(HEADING, HOWTO + "\n\n" + markdown(res))


HOWTO = """`python -m bench.gpu_suite` is the one command for a lent GPU host (at most 8 minutes on one H200;
parts, limits and keys in its docstring); it writes `bench/results/gpu_suite.json` after every part.
`python -m bench.gpu_suite --device cpu` dry-runs the same code on tiny stores (tests/bench/test_gpu_suite.py)."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu.report", description=__doc__)
    ap.add_argument("--json", type=Path, default=RESULTS / "gpu_suite.json")
    ap.add_argument("--print", action="store_true", help="print instead of writing BENCHMARKS.md")
    a = ap.parse_args(argv)
    res = json.loads(a.json.read_text())
    if a.print:
        print(markdown(res))
    else:
        write_md(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
