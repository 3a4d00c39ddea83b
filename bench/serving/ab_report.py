"""``python -m bench.serving.ab_report``: render a side-by-side run of ``bench.serving.load``
/ ``bench.serving.load_text`` (``--parts ab``: the tree as is and each settings
variant, alternating round by round) as a BENCHMARKS.md section: per
variant and concurrency the medians over rounds of q/s, p50, p99 and the
service's CPU per query, and the closed-loop p99 goal checked per variant.

    python -m bench.serving.ab_report --json bench/results/load_text_workers_ab.json \\
        --section "Serving speed: text store, two readout workers"
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench.harness.report import current, write_section

P99_GOAL_MS = 250.0  # issue 10: p99 under 250 ms at concurrency 32


def medians(ab: dict) -> dict[tuple[str, int], dict]:
    """``(variant, concurrency) -> {q/s, p50, p99, CPU ms/query, rounds}``, medians over rounds."""
    by: dict[tuple[str, int], list[dict]] = {}
    for r in ab["ab"]:
        by.setdefault((r["variant"], r["concurrency"]), []).append(r)
    keys = ("throughput_qps", "p50_ms", "p99_ms", "service_cpu_ms_per_query")
    return {k: {**{f: statistics.median(r[f] for r in rs) for f in keys}, "rounds": len(rs),
                "p99_rounds": [r["p99_ms"] for r in rs]} for k, rs in by.items()}


def table(ab: dict, label=lambda v: v) -> list[str]:
    """The markdown lines: how it ran, the table, the goal per variant at the top concurrency."""
    med = medians(ab)
    variants = list(dict.fromkeys(v for v, _ in med))
    top = max(c for _, c in med)
    rounds = max(m["rounds"] for m in med.values())
    lines = [f"Side by side: `{current(ab['command'])}` — {ab['machine']['date']}, git "
             f"`{ab['machine'].get('git')}`, the "
             f"service at {ab['settings']['torch_threads']} torch thread(s) on loopback with the load generator on "
             f"the same cores; the variants alternate, {rounds} round(s) of {ab['duration_s']:.0f} s per point, 1 "
             f"query per request, `{ab['requests']['granularity']}`, cache off; medians over rounds. Load average "
             f"{ab['load_start']:.1f} → {ab['load_end']:.1f}.", "",
             "| settings | concurrency | q/s | p50 ms | p99 ms | p99 per round, ms | service CPU ms/query |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for (v, c), m in sorted(med.items(), key=lambda kv: (kv[0][1], variants.index(kv[0][0]))):
        per = ", ".join(f"{x:.0f}" for x in m["p99_rounds"])
        lines.append(f"| {label(v)} | {c} | {m['throughput_qps']:.1f} | {m['p50_ms']:.0f} | {m['p99_ms']:.0f} | "
                     f"{per} | {m['service_cpu_ms_per_query']:.1f} |")
    met = [f"{label(v)} ({sum(x < P99_GOAL_MS for x in med[(v, top)]['p99_rounds'])} of "
           f"{med[(v, top)]['rounds']} rounds)" for v in variants if med[(v, top)]["p99_ms"] < P99_GOAL_MS]
    lines += ["", f"At concurrency {top} in a closed loop, p99 under {P99_GOAL_MS:.0f} ms needs at least "
              f"{top} / {P99_GOAL_MS / 1000:g} = {top / (P99_GOAL_MS / 1000):.0f} q/s; the goal (p99 < "
              f"{P99_GOAL_MS:.0f} ms, median over rounds) is " + (f"met by: {'; '.join(met)}." if met else
                                                       "met by none of these.")]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.serving.ab_report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, required=True, help="a bench.serving.load_text --parts ab result")
    ap.add_argument("--section", required=True, help="the BENCHMARKS.md section to write")
    ap.add_argument("--intro", default="", help="a paragraph before the table")
    a = ap.parse_args(argv)
    ab = json.loads(a.json.read_text())
    body = "\n".join(([a.intro, ""] if a.intro else []) + table(ab, lambda v: "defaults" if v == "as is" else
                                                                  f"`{v}`"))
    print(body)
    write_section(a.section, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
