"""The "Hostile suite" section of BENCHMARKS.md from ``results/hostile.json`` (what ``python -m
bench.hostile`` found):

    python -m bench.serving.hostile_report [--json bench/results/hostile.json] [--print]
"""

from __future__ import annotations

from bench.harness.report import render_main

HEADING = "Hostile suite"


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"Command: `{res['command']}` (date {res['date']}, git `{m['git']}`). Machine: {m['cpus']}-core shared "
             f"x86 CPU, {m['mem_gib']} GiB, no GPU; load average {m['loadavg'][0]:.1f} at the start. Two services "
             "(`python -m service` subprocesses on loopback: the tests' tiny vector store and tiny text store), all "
             "key kinds configured, one private Redis-compatible server (AOF, fsync always) paused with SIGSTOP and "
             f"killed and restarted in the outage tests; {res['total_requests']:,} requests in "
             f"{res['seconds']:.0f} s. JSON: `bench/results/hostile.json` (per test: requests, status counts, 5xx, "
             "lost, double, wrong answers, slowest request as the client saw it).", "",
             "| test | store | requests | statuses | 5xx | lost | double | wrong | max ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["records"]:
        sc = ", ".join(f"{k}: {v}" for k, v in r["status_counts"].items())
        ms = f"{r['max_ms']:.0f}" + (" (readouts)" if r["readouts"] else "")
        lines.append(f"| {r['test']} | {r['store_kind']} | {r['requests']} | {sc} | {r['five_xx']} | {r['lost']} | "
                     f"{r['double']} | {r['wrong_answers']} | {ms} |")
    notes = [f"- {r['test']} ({r['store_kind']}): {n}" for r in res["records"] for n in r["notes"]]
    g = res["goal"]
    met = "met" if g["met"] else "NOT met"
    lines += ["", f"Goal: 5xx, lost, double and wrong answers zero in every record: **{met}**; slowest request "
              f"without a readout: {g['max_ms_without_readouts']:.0f} ms (the 1 MB bodies and "
              "the 1 MB header travel over loopback; `max ms` of `slow_clients_and_big_bodies` is the slowest "
              "`/healthz` probe while bodies stalled or megabyte bodies were refused)."]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return render_main("python -m bench.serving.hostile_report", __doc__, HEADING, markdown, "hostile.json", argv)


if __name__ == "__main__":
    raise SystemExit(main())
