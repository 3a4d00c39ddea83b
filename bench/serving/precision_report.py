"""The "Text readout precision: bfloat16 tangents" section of BENCHMARKS.md from
``results/text_precision.json`` (``python -m bench.serving.precision``), with the served side by side
of ``results/load_text_bf16_ab.json`` when present (``python -m bench.serving.load_text --parts ab
--ab-variants text_tangent_dtype=bfloat16 --out load_text_bf16_ab.json``):

    python -m bench.serving.precision_report [--json bench/results/text_precision.json] [--print]
"""

from __future__ import annotations

import json

from bench.harness.common import RESULTS
from bench.harness.report import current, render_main

HEADING = "Text readout precision: bfloat16 tangents"


def markdown(r: dict) -> str:
    g = "; ".join(f"{'×'.join(map(str, x['shape']))}: {x['float32']:.0f} → {x['bfloat16']:.0f} GFLOP/s"
                  for x in r["gemm"])
    return "\n".join([
        f"Command: `{current(r['command'])}` — {r['date']}, {r['machine'].get('cpu', 'CPU')}, {r['threads']} torch "
        f"thread(s), load average {r['load_avg']:.1f}. Store `{r['store']['root']}` version "
        f"{r['store']['version']} ({r['store']['sources']} sources, {r['store']['tangents_per_query']} tangents "
        f"per query). {r['queries']} held-out passages (`bench.serving.load_text`'s), sources-only, in blocks of "
        f"{r['block']} full-length rows as the service reads them; float32 tangents are the reference. "
        "JSON: `bench/results/text_precision.json`.",
        "",
        "| measure | bfloat16 tangents vs float32 |",
        "| --- | ---: |",
        f"| max over queries of max \\|Δτ\\| / max \\|τ\\| | {r['rel_err_max']:.2e} |",
        f"| median (p99) of that | {r['rel_err_median']:.2e} ({r['rel_err_p99']:.2e}) |",
        f"| Spearman across sources, mean (min) | {r['spearman_mean']:.4f} ({r['spearman_min']:.4f}) |",
        f"| Pearson across sources, mean | {r['pearson_mean']:.5f} |",
        f"| same top source | {100 * r['top1_agree']:.1f}% |",
        f"| top-5 overlap | {100 * r['top5_overlap']:.1f}% |",
        f"| f (the answer's log-probability) bit-identical | {'yes' if r['f_identical'] else 'no'} |",
        f"| seconds per block, float32 / bfloat16 (interleaved medians) | {r['block_s']['float32']:.4f} / "
        f"{r['block_s']['bfloat16']:.4f} |",
        f"| speed-up of the readout | **{r['speedup']:.2f}x** |",
        "",
        f"GEMM rates of the readout's shapes, float32 → bfloat16 (`torch.matmul`, same threads): {g}.",
    ])


def served(ab: dict) -> list[str]:
    """Markdown lines for ``bench.serving.load_text --parts ab --ab-variants
    text_tangent_dtype=bfloat16`` (the served side by side)."""
    from bench.serving.ab_report import table

    return table(ab, lambda v: "float32" if v == "as is" else "bfloat16")


def render(r: dict) -> str:
    ab = RESULTS / "load_text_bf16_ab.json"
    return markdown(r) + ("\n\n" + "\n".join(served(json.loads(ab.read_text()))) if ab.exists() else "")


def main(argv: list[str] | None = None) -> int:
    return render_main("python -m bench.serving.precision_report", __doc__, HEADING, render, "text_precision.json",
                       argv)


if __name__ == "__main__":
    raise SystemExit(main())
