"""The Precompute section of BENCHMARKS.md and ``results/precompute.png``,
rendered from ``results/precompute.json`` (``python -m bench.digits.precompute_report``)."""

from __future__ import annotations

import json

from bench.harness.common import RESULTS
from bench.harness.report import fmt, pick, pyplot, save, write_section

SRC = RESULTS / "precompute.json"
PNG = RESULTS / "precompute.png"
COMMAND = "EXTRAS=bench scripts/setup && .venv/bin/python -m bench.digits.precompute"


def quality_table(res: dict) -> list[str]:
    recs = res["records"]
    rows = ["| models | ours LDS | TRAK LDS | ours precompute (s) | TRAK precompute (s) | ours / TRAK |",
            "| --- | --- | --- | --- | --- | --- |"]
    for M in (1, 5, 10):
        o, t = pick(recs, method="ours", models=M), pick(recs, method="trak", models=M)
        if o is None or t is None:
            continue
        rows.append(f"| {M} | {fmt(o['lds'])} | {fmt(t['lds'])} | {fmt(o['precompute_s'])} | "
                    f"{fmt(t['precompute_s'])} | {fmt(o['precompute_s'] / t['precompute_s'])}x |")
    st = pick(recs, method="ours-steps", models=1)
    if st is not None:
        o = pick(recs, method="ours", models=1)
        rows.append(f"| 1, step-by-step solver (extrapolated from {st['extrapolated_from_steps']} steps) | – | – | "
                    f"{fmt(st['precompute_s'])} | {fmt(st['trak_precompute_s'])} | "
                    f"{fmt(st['precompute_s'] / st['trak_precompute_s'])}x (spectral is "
                    f"{fmt(st['precompute_s'] / o['precompute_s'])}x faster) |")
    return rows


def scaling_table(rows: list[dict]) -> list[str]:
    out = ["| examples n | parameters | spectral precompute (s) | step-by-step, extrapolated (s) |",
           "| --- | --- | --- | --- |"]
    out += [f"| {r['n']:,} | {r['params']:,} | {fmt(r['precompute_s'])} | {fmt(r.get('steps_precompute_s'))} |"
            for r in rows]
    return out


def plot(rows: list[dict]) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    n = [r["n"] for r in rows]
    ax.loglog(n, [r["precompute_s"] for r in rows], "o-", label="spectral (default)")
    st = [(r["n"], r["steps_precompute_s"]) for r in rows if r.get("steps_precompute_s")]
    if st:
        ax.loglog(*zip(*st), "s--", label="step-by-step (K=300, extrapolated)")
    lin = [rows[0]["precompute_s"] * x / n[0] for x in n]
    ax.loglog(n, lin, ":", color="grey", label="linear in n")
    ax.set_xlabel("training examples n (15k-parameter MLP)")
    ax.set_ylabel("precompute per model (s)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    save(fig, PNG, 120)


def _iterates(res: dict) -> str:
    C = next((r.get("iterates", 1) for r in res.get("records", []) if r["method"] == "ours"), 1)
    return (f", around each of the {C} averaged iterates of the `digits` preset (`method.iterates`; the "
            f"step-by-step row likewise ×{C})" if C > 1 else "")


def render() -> str:
    res = json.loads(SRC.read_text())
    m = res["machine"]
    lines = [f"`{COMMAND}` ({m['date']}, {m.get('cpu')}, {m['cpus']} cores, torch {m['torch']}, load average "
             f"{m['loadavg'][0]:.1f} at the end; git {m.get('git')}). Training is not counted for either method "
             "(both read the same checkpoints); ours = directions + spectral basis + filter, as "
             f"`Simulator.posthoc` runs in the worker{_iterates(res)}; TRAK = `traker` featurize + finalize "
             "(projection 2048, λ = 100), timed in the same run.", ""]
    if "records" in res:
        lines += quality_table(res) + [""]
        c, d = res["check"], res["diagnostics"]
        lines += [f"Spectral vs the step-by-step reference (member 0, {c['directions']} example directions, "
                  f"K = 300, float32): relative error max {c['rel_err_max']:.2e}, mean {c['rel_err_mean']:.2e}; "
                  f"basis rank {d['rank']}, smallest kept eigenvalue {d['smallest_eigenvalue']:.2e}, tail "
                  f"estimate {d['tail_estimate']:.2e}.", ""]
    if "ensemble" in res:
        e = res["ensemble"]
        lines += [f"Ensemble of {e['ensemble']} members, `fa-worker build --ensemble {e['ensemble']}` end to end "
                  f"(training included): **{fmt(e['build_s'])} s**, LDS of the published store {fmt(e['lds'])}.", ""]
    if "scaling" in res:
        lines += ["Scaling with the number of examples (synthetic 10-class Gaussian mixture, MLP 64-200-10, "
                  "10 epochs; directions = every example + 20 sources):", ""]
        lines += scaling_table(res["scaling"]) + ["", "![precompute scaling](bench/results/precompute.png)", ""]
        plot(res["scaling"])
    if "first_answer" in res:
        f = res["first_answer"]
        lines += [f"Fresh clone → `scripts/run` → first 200 from `POST /v1/attributions`: "
                  f"**{fmt(f['first_answer_s'])} s** ({f['date']}, {f['machine']}; setup {fmt(f.get('setup_s'))} s, "
                  f"store build {fmt(f.get('build_s'))} s).", ""]
    body = "\n".join(lines)
    write_section("Precompute", body)
    return body


if __name__ == "__main__":
    print(render())
