"""The "Serving speed: several processes" section of BENCHMARKS.md from ``results/load_procs.json``
(what ``python -m bench.serving.procs`` measured):

    python -m bench.serving.procs_report [--json bench/results/load_procs.json] [--print]
"""

from __future__ import annotations

from bench.harness.report import current, render_main

HEADING = "Serving speed: several processes"


def markdown(payload: dict) -> str:
    m = payload["machine"]
    lines = [f"Machine: {m['cpus']} cores ({m['cpu']}), shared with other jobs (load average "
             f"{payload['loadavg_before']} → {payload['loadavg_after']}). `{current(payload['command'])}` — "
             f"{m['date']}, "
             f"git `{m['git']}`. Each round starts the service once per process count, alternating; "
             f"{payload['seconds']} s per point after a 0.5 s warm-up; the load generator in "
             f"{payload['clients']} processes; cache off, granularity `sources`, recorded; torch threads per "
             "process = cores / processes. Medians over rounds (per-round figures in "
             "`bench/results/load_procs.json`).", "",
             "| store | concurrency, q/req | 1 process | 2 processes | ratio | memory per serving process |",
             "| --- | --- | --- | --- | --- | --- |"]
    med = payload["medians"]
    for kind in sorted({r["store_kind"] for r in med}):
        for c in sorted({r["concurrency"] for r in med}):
            for q in sorted({r["queries_per_request"] for r in med}):
                one = next((r for r in med if (r["store_kind"], r["concurrency"], r["queries_per_request"],
                                                r["processes"]) == (kind, c, q, 1)), None)
                two = next((r for r in med if (r["store_kind"], r["concurrency"], r["queries_per_request"])
                            == (kind, c, q) and r["processes"] > 1), None)
                if not (one and two):
                    continue
                cell = lambda r: (f"{r['qps']:,.0f} q/s · p99 {r['p99_ms']:.0f} ms · "  # noqa: E731
                                  f"{r['cpu_ms_per_query']:.2f} CPU ms/q")
                lines.append(f"| {kind} | c = {c}, {q} | {cell(one)} | {cell(two)} | "
                             f"{two['qps'] / one['qps']:.2f}x (rounds: "
                             f"{', '.join(f'{x:,.0f}' for x in two['per_round_qps'])} vs "
                             f"{', '.join(f'{x:,.0f}' for x in one['per_round_qps'])}) | "
                             f"{one['rss_mib_per_process']} vs {two['rss_mib_per_process']} MiB RSS |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return render_main("python -m bench.serving.procs_report", __doc__, HEADING, markdown, "load_procs.json", argv)


if __name__ == "__main__":
    raise SystemExit(main())
