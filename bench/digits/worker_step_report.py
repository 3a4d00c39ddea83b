"""The table of ``results/worker_step.json`` (``python -m bench.digits.worker_step``) in the "Worker:
building the default store" section of BENCHMARKS.md, between two ``MARK`` lines:

    python -m bench.digits.worker_step_report [--json bench/results/worker_step.json] [--print]
"""

from __future__ import annotations

from bench.harness.report import render_main, write_marked

MARK = "<!-- bench.digits.worker_step -->"


def markdown(res: dict) -> str:
    # the block sizes are keys: strings once the results went through JSON
    res = {**res, **{k: {int(b): v for b, v in res[k].items()} for k in ("median_s", "rel_diff_vs_first")}}
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
    return render_main("python -m bench.digits.worker_step_report", __doc__, "", markdown, "worker_step.json", argv,
                       write=lambda body: write_marked(MARK, body))


if __name__ == "__main__":
    raise SystemExit(main())
