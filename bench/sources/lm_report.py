"""The "Source quality: language model" section of BENCHMARKS.md from ``results/lm_source_quality.json``
(what ``python -m bench.sources.lm_quality`` measured):

    python -m bench.sources.lm_report [--json bench/results/lm_source_quality.json] [--print]
"""

from __future__ import annotations

from bench.harness.report import current, render_main

HEADING = "Source quality: language model"
OUT = "lm_source_quality.json"


def report(res: dict) -> str:
    rows = res["records"]
    lines = [f"Command: `{current(res['command'])}`. Machine: {res['machine']['cpu']}, {res['machine']['cpus']} cores, "
             f"torch {res['machine']['torch']}, git {res['machine']['git']}; {res['machine']['date']}. "
             f"JSON: `bench/results/{OUT}`.", "",
             f"Store `{res['store']}` ({res['store_version']}: the `brown` preset at the genre level, 15 genres, one "
             f"model); truth: its audit of {res['audit_created_at']} ({res['truth']['subsets']} random genre "
             f"subsets, each of the {res['truth']['loso']} genres left out once, the full data; "
             f"{res['truth']['seeds']} seed(s); {res['truth']['queries']} held-out windows of 64 targets, f = their "
             "mean log-probability). Every method reads the store's own model. TRAK: k = "
             f"{res['trak_k']}, λ = r × mean eigenvalue of ΦᵀΦ; the row marked best is the r with the highest "
             "LOSO Pearson on this very truth (chosen in TRAK's favour). Ours here reproduces the audit's own "
             f"metrics to {res['ours_vs_audit_metrics_max_abs']:.1e}.", "",
             "| method | models | source LDS | LOSO r | LOSO ρ | top-1 |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['models']} | {r['source_lds']:.3f} | {r['loso_pearson']:.3f} | "
                     f"{r['loso_spearman']:.3f} | {r['top1_agree']:.3f} |")
    tr = res["truth"]
    gap = (f"on this store the full-data retrain differs from the store's model by up to "
           f"{tr['full_vs_store_output_max_abs']:.3f} in f, against a mean leave-one-genre-out effect of "
           f"{tr['effect_abs_mean']:.3f}")
    nz = tr.get("noise") or {}
    if tr["seeds"] < 2 or not nz:
        lines += ["", f"One seed of retraining: the truth's own noise is not measured ({gap}), so every LOSO "
                  "figure is capped well below 1."]
    else:
        lines += ["", f"Noise of the truth itself ({tr['seeds']} seeds of retraining; the same metrics with seed "
                  "0's outcome as the prediction and the mean of the other seeds as the truth: how well one "
                  "retrain foretells another, a rough ceiling): "
                  f"subset Spearman {nz['subset_spearman_seed0_vs_rest']:.3f}, LOSO Pearson "
                  f"{nz['loso_pearson_seed0_vs_rest']:.3f}, Spearman {nz['loso_spearman_seed0_vs_rest']:.3f}, "
                  f"top-1 {nz['top1_seed0_vs_rest']:.3f} ({gap}). The methods above are scored against the mean of "
                  "all seeds."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return render_main("python -m bench.sources.lm_report", __doc__, HEADING, report, OUT, argv)


if __name__ == "__main__":
    raise SystemExit(main())
