"""The table of ``results/worker_step.json`` (``python -m bench.digits.worker_step``) in the "Worker:
building the default store" section of BENCHMARKS.md, between two ``MARK`` lines:

    python -m bench.digits.worker_step_report [--json bench/results/worker_step.json] [--print]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.harness.common import RESULTS
from bench.harness.report import write_marked

MARK = "<!-- bench.digits.worker_step -->"


def markdown(res: dict) -> str:
    m, base = res["machine"], res["median_s"][res["blocks"][0]]
    lines = [MARK, f"`python -m bench.digits.worker_step` ({m['date']}, git `{m['git']}`, {m['cpu']}, "
             f"{m['torch_threads']} torch threads, load average {m['loadavg'][0]:.1f}): seconds per posthoc "
             f"step, {res['rounds']} alternating rounds of {res['steps_per_round']} steps, medians.", "",
             "| `method.ggn_block` (floats) | s / step | speed vs first | rel. diff of the responses after 1 + steps |",
             "| --- | --- | --- | --- |"]
    for b in res["blocks"]:
        s = res["median_s"][b]
        lines.append(f"| {b:,} | {s:.2f} | {base / s:.2f}x | {res['rel_diff_vs_first'][b]:.1e} |")
    return "\n".join(lines) + "\n" + MARK


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.digits.worker_step_report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, default=RESULTS / "worker_step.json")
    ap.add_argument("--print", action="store_true", help="print the table instead of writing BENCHMARKS.md")
    a = ap.parse_args(argv)
    res = json.loads(a.json.read_text())
    for k in ("median_s", "rel_diff_vs_first", "seconds_per_step"):  # (JSON keys are strings: the block sizes)
        res[k] = {int(b): v for b, v in res[k].items()}
    print(markdown(res)) if a.print else write_marked(MARK, markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
