"""The "Readout speed" section of BENCHMARKS.md and ``results/readout.png`` from ``results/readout.json``
(what ``python -m bench.serving.readout`` measured, its findings included), with the GPU figures of
``results/gpu_check.json`` when a GPU run has written them:

    python -m bench.serving.readout_report [--json bench/results/readout.json] [--print] [--no-md]
"""

from __future__ import annotations

import json

from bench.harness.common import RESULTS
from bench.harness.report import current, head, log2_x, pyplot, render_main, save

HEADING = "Readout speed"
DTYPES = ("float32", "bfloat16", "float16")



def plot(rows: list[dict], path) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    threads = sorted({r["threads"] for r in rows})
    colors = ["C0", "C1", "C2", "C3", "C4"]
    for ti, th in enumerate(threads):
        style = "-" if ti == 0 else ":"
        for ci, R in enumerate(sorted({r["responses"] for r in rows})):
            rs = sorted((r for r in rows if r["responses"] == R and r["threads"] == th), key=lambda r: r["batch"])
            if not rs:
                continue
            b = [r["batch"] for r in rs]
            axes[0].plot(b, [r["pairs_per_s"] for r in rs], style, marker="o", color=colors[ci],
                         label=f"readout R={R}, {th} thr")
            if ti == 0:
                axes[0].plot(b, [r["gemm_pairs_per_s"] for r in rs], "--", color=colors[ci], alpha=0.5,
                             label=f"GEMM limit R={R}")
            axes[1].plot(b, [r["fraction_of_gemm"] for r in rs], style, marker="o", color=colors[ci],
                         label=f"R={R}, {th} thr")
    log2_x(axes, "queries per batch B")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("query × response pairs / s")
    axes[0].set_title("forward-only readout vs (B,p)@(p,R) GEMM")
    axes[1].set_ylabel("fraction of the GEMM rate")
    axes[1].set_title("readout / GEMM limit (same B, R, p)")
    axes[1].axhline(1.0, color="k", lw=0.8)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    save(fig, path)


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        f"Command: `{current(res['command'])}` (date {m['date']}, git `{m['git']}`). Machine: {m['cpus']}-core x86 "
        f"({m['cpu']}), {m['mem_gib']} GiB, no GPU, torch {m['torch']}; shared with other jobs: load average "
        f"{res['load_start']:.1f} at the start, {res['load_end']:.1f} at the end (2 cores). Every ratio below "
        "is measured side by side in one run (variants interleaved round by round, medians); absolute rates "
        "moved by 2-3x with the machine's load while this ran, so read the ratios. Store: the digits store "
        f"(MLP 64-128-10, p = {res['p']:,}, {res['n_examples']:,} example responses + {res['n_sources']} source "
        "responses; store sizes beyond 1,437 repeat its responses, the cost depends only on the shapes). "
        f"Peak float32 GEMM of this machine during the run: {res['peak_gflops']:.0f} GFLOP/s "
        "(2048² square matmul, 1 thread). JSON: `bench/results/readout.json`; plot: `bench/results/readout.png`.",
        "",
        "**The limit.** For each (B, R) the readout (`influence.mlp.readout.linear_stack_scores`, forward pass "
        "included) is timed next to one float32 GEMM `(B, p) @ (p, R)`: the same 2·B·R·p flops, reading the "
        "same store once (what an explicit `∇f(q)ᵀU` product costs). *Fraction* = readout pairs/s ÷ GEMM "
        "pairs/s. *vs v0* = speed-up over the readout before this work (kept as `bench.serving.readout.readout_v0`).",
        "",
    ]
    for th in sorted({r["threads"] for r in res["sweep"]}):
        lines += [f"torch threads = {th}:", "",
                  *head(["R \\ B", *map(str, res["batches"])])]
        for R in res["sizes"]:
            cells = []
            for b in res["batches"]:
                r = next((r for r in res["sweep"] if r["threads"] == th and r["responses"] == R
                          and r["batch"] == b), None)
                cells.append("–" if r is None else f"{r['pairs_per_s'] / 1e6:.3g} M/s · **{r['fraction_of_gemm']:.2f}**"
                             f" · {r['speedup_vs_v0']:.1f}x v0")
            lines.append(f"| {R:,} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Cells: pairs per second · **fraction of the GEMM limit** · speed-up over v0.")
    lines.append("")
    if res.get("ablation"):
        keys = list(res["ablation"][0]["speedup_vs_v0"])
        lines += ["**What each change gives** (speed-up over v0, side by side, 1 thread, R = 1,437):", "",
                  *head(["B", *keys])]
        for r in res["ablation"]:
            lines.append(f"| {r['batch']} | " + " | ".join(f"{r['speedup_vs_v0'][k]:.2f}x" for k in keys) + " |")
        lines.append("")
    if res.get("precision"):
        lines += ["**Precision** (R = 1,437, resident store in that dtype; the readout upcasts each chunk to "
                  "float32; *bf16-compute* is an experimental bfloat16-GEMM readout in `bench/serving/readout.py`, not "
                  "served). Relative error = ‖τ − τ_fp32‖/‖τ_fp32‖ over 64 queries.", "",
                  "| dtype | store MiB | rel. error | " + " | ".join(f"B={b} (fraction)" for b in
                                                                    sorted({r['batch'] for r in res['precision']}))
                  + " |", "| --- | --- | --- | " + " | ".join("---" for _ in {r['batch'] for r in res['precision']})
                  + " |"]
        for k in (*DTYPES, "bfloat16-compute"):
            rs = sorted((r for r in res["precision"] if r["dtype"] == k), key=lambda r: r["batch"])
            if not rs:
                continue
            lines.append(f"| {k} | {rs[0]['store_mib']:.0f} | {rs[0]['rel_error']:.1e} | "
                         + " | ".join(f"{r['pairs_per_s'] / 1e6:.3g} M/s ({r['fraction_of_gemm']:.2f})" for r in rs)
                         + " |")
        lines.append("")
    for tr in res.get("trak", []):
        s = tr["per_query_ms"]
        lines += [f"**Versus TRAK** (threads = {tr['threads']}; {tr['queries']} test queries × {tr['examples']:,} "
                  f"examples, same model; TRAK = `traker` 0.3.2, projection 2,048, via `bench.digits.trak`; "
                  f"its featurisation took {tr['trak_featurize_s']:.0f} s and is not counted):", "",
                  "| scorer | ms per query | ratio to ours |", "| --- | --- | --- |",
                  f"| ours, service blocks of 16 | {s['ours_block16']:.3f} | 1 |",
                  f"| ours, one batch of {tr['queries']} | {s['ours_batch360']:.3f} | "
                  f"{s['ours_batch360'] / s['ours_block16']:.2f} |",
                  f"| torch.func JVP through vmap (generic path) | {s['jvp_vmap']:.3f} | "
                  f"{tr['ratio_jvp_over_ours']:.1f} |",
                  f"| TRAK as shipped (projector regenerated per call) | {s['trak_shipped']:.3f} | "
                  f"{tr['ratio_trak_shipped_over_ours']:.1f} |",
                  f"| TRAK, projection matrix resident | {s['trak_resident']:.3f} | "
                  f"{tr['ratio_trak_resident_over_ours']:.1f} |",
                  f"| per source (20): ours, blocks of 16 | {s['ours_sources_block16']:.3f} | 1 |",
                  f"| per source (20): TRAK resident, features summed per source | {s['trak_sources_resident']:.3f}"
                  f" | {tr['ratio_trak_sources_over_ours_sources']:.1f} |", ""]
    if res.get("service_block"):
        for sb in res["service_block"]:
            lines.append(f"Service unit of work (threads = {sb['threads']}): `VectorAttributor.readout` on a "
                         f"padded block of 16 rows costs {sb['overhead_sources']:.2f}x the bare sources readout "
                         f"(R = 20) and {sb['overhead_both']:.2f}x the bare examples + sources readouts (one shared "
                         "forward pass, targets, probabilities).")
        lines.append("")
    if res.get("profile"):
        lines += ["**Where the readout's time goes** (torch profiler, B = 16, R = 1,437, 1 thread; share of CPU "
                  "time): " + ", ".join(f"`{o['op']}` {o['share']:.0%}" for o in res["profile"][:6]) + "; "
                  "before (v0): " + ", ".join(f"`{o['op']}` {o['share']:.0%}" for o in res["profile_v0"][:6]) + ".",
                  ""]
    lines += res.get("findings", [])
    lines += ["", gpu_paragraph()]
    return "\n".join(lines)


def gpu_paragraph() -> str:
    """The GPU figures when ``bench/gpu/check.py`` has written them, else how to get them."""
    path = RESULTS / "gpu_check.json"
    head = ("**On a CUDA GPU.** `python -m bench.gpu.check` (one unattended script, 1-3 minutes; "
            "`python -m pytest -m gpu` for the CUDA tests) checks that the store is resident on the GPU, that the "
            "GPU readout equals the CPU one (float32 and bfloat16 stores) and that padded blocks stay "
            "batch-invariant bit for bit there, then measures pairs/s against B (1-4,096) and R (1-100x the "
            "digits store) next to the GPU's own `(B, p) @ (p, R)` GEMM; it writes `bench/results/gpu_check.json` "
            "and appends a line to `bench/results/gpu_check.log`.")
    if not path.exists():
        return head + " Not run yet: no GPU was available to this run."
    g = json.loads(path.read_text())
    if not g.get("ok"):
        return head + f" Last run ({g['machine']['date']}): FAILED — {g.get('error') or 'see the checks'}."
    best = max(g.get("throughput", []), key=lambda r: r["pairs_per_s"], default=None)
    txt = head + f" Last run ({g['machine']['date']}, {g.get('gpu', {}).get('name')}): all checks passed"
    if best:
        txt += (f"; best {best['pairs_per_s']:.3g} pairs/s at B = {best['batch']}, R = {best['responses']:,} "
                f"({best['fraction_of_gemm']:.2f} of the GPU GEMM)")
    return txt + "."


def main(argv: list[str] | None = None) -> int:
    return render_main("python -m bench.serving.readout_report", __doc__, HEADING, markdown, "readout.json", argv,
                       figure=lambda res, png: plot(res["sweep"], png))


if __name__ == "__main__":
    raise SystemExit(main())
