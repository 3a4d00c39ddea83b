"""Rendering of ``bench.sources.quality``'s JSON: the ``## Source quality``
section of BENCHMARKS.md (``markdown``) and the scatter PNG (``figure``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.harness.report import current, fixed, pick, pyplot, save


def _rec(payload: dict, method: str, models: int) -> dict | None:
    return pick(payload["records"], method=method, models=models)


LABELS = {"ours": "ours (source responses)", "ours_examples_summed": "ours (example responses, summed)",
          "ours_final_iterate": "ours, final model only (no iterate averaging)",
          "trak": "TRAK λ=100, proj 2048 (summed)", "graddot": "gradient dot product (summed)"}


def _g(x) -> str:
    return "–" if x is None else f"{x:.3g}"


def _iterates(prov: dict) -> str:
    m = prov["method_settings"]
    C = m.get("iterates", 1)
    if C == 1:
        return ""
    last = prov.get("epochs", 40)
    first = last - m["iterate_every"] * (C - 1)
    return (f"; the responses are averaged over the last {C} epoch-end iterates (epochs {first}, "
            f"{first + m['iterate_every']}, …, {last}: `method.iterates={C}`, `iterate_every={m['iterate_every']}`), "
            "each simulated around its own iterate; *final model only* is the same simulation around the final "
            "model alone (`iterates=1`), the ablation")


def _verdicts(payload: dict) -> list[str]:
    counts = sorted({r["models"] for r in payload["records"]})
    goals, out = payload.get("goals", {}), []
    for M in counts:
        o, t = _rec(payload, "ours", M), _rec(payload, "trak", M)
        if o is None or t is None:
            continue
        for key, name in (("source_lds", "source-level LDS"), ("loso_pearson", "LOSO Pearson"),
                          ("loso_spearman", "LOSO Spearman")):
            ok = o[key] > t[key]
            out.append(f"- {name}, {M} model(s): ours {fixed(o[key])} vs TRAK {fixed(t[key])}: "
                       f"**{'reached' if ok else 'not reached'}** (above TRAK)")
        goal = goals.get(f"lds_{M}")
        if goal is not None:
            ok = o["source_lds"] >= goal
            out.append(f"- source-level LDS ≥ {goal:.2f} with {M} model(s): ours {fixed(o['source_lds'])}: "
                       f"**{'reached' if ok else 'not reached'}**")
    return out


def markdown(payload: dict) -> str:
    prov, gt = payload["provenance"], payload["groundtruth"]
    mach, proto = prov["machine"], gt["protocol"]
    S = prov["n_sources"]
    lines = [
        f"Command: `{current(prov['command'])}`. Machine: {mach.get('cpu')}, {mach.get('cpus')} cores, "
        f"{mach.get('mem_gib')} GiB, torch {mach.get('torch')} ({mach.get('torch_threads')} threads), "
        f"git {mach.get('git')}; {mach.get('date')}. Wall time {prov['wall_s']:.0f} s.",
        "",
        f"Does `τ(q, s)` predict what removing publisher `s` does to query `q`? Digits, {prov['n_train']} "
        f"training examples in {S} built-in publishers (sizes {min(payload['credit_shares']['examples'])}–"
        f"{max(payload['credit_shares']['examples'])}), {prov['n_queries']} test queries scored by the margin "
        "of their true label, MLP 64-128-10 (`digits` preset). Ground truth (`bench/sources/groundtruth.py`, "
        f"cached): {proto['n_subsets']} random publisher subsets (each publisher kept with probability "
        f"{proto['keep_prob']}, at least {proto['min_keep']}; on average {gt['subset_sizes']['sources_mean']:.1f} "
        f"publishers, {gt['subset_sizes']['examples_mean']:.0f} examples) × {proto['seeds']} seeds, every "
        f"publisher removed alone × {proto['seeds']} seeds, and the full models with the same seeds: "
        f"{gt['models_trained']} models, built in {gt['build_s']:.0f} s by a padded batched trainer (checked "
        "against `worker.train`, max abs parameter difference ≤ 1e-5). All methods read the same full-data "
        f"checkpoints (member seeds {prov['member_seeds']}); 1 model = member 0, {prov['members']} models = "
        "τ averaged over members. Ours: the digits preset's simulation "
        f"(solver `{prov['solver']}`, λ={prov['method_settings']['damping']}, K={prov['method_settings']['steps']},"
        f" η={prov['method_settings']['eta']}), forward readout at the final model{_iterates(prov)}.",
        "",
        "Metrics: **source LDS** = per query, Spearman across subsets between Σ_{s∈subset} τ(q,s) and the "
        "subset model's margin (seed mean), mean over queries; **LOSO r / ρ** = per query, Pearson / Spearman "
        "across publishers between τ(q,s) and the true effect (full margin − margin without s, seed-matched "
        "mean), mean over queries; **top-1** = share of queries whose highest-τ publisher is the one whose "
        f"removal lowers the margin most (chance 1/{S} = {1 / S:.3f}).",
        "",
        "The columns marked *matched* score the same methods against the **order-matched** counterfactual: "
        "the full model's own run (same initialisation, same minibatch schedule) with the removed publishers' "
        "slots skipped, so the retraining differs from the full model only by the data (the primary truth, "
        "`worker.train` on the kept examples, also reshuffles every minibatch and shortens the run).",
        "",
        "| method | models | source LDS | LOSO r | LOSO ρ | top-1 | source LDS matched | LOSO r matched | "
        "LOSO ρ matched | top-1 matched |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in payload["records"]:
        lines.append(f"| {LABELS.get(r['method'], r['method'])} | {r['models']} | {fixed(r['source_lds'])} | "
                     f"{fixed(r['loso_pearson'])} | {fixed(r['loso_spearman'])} | {fixed(r['top1_agree'])} | "
                     f"{fixed(r.get('source_lds_matched'))} | {fixed(r.get('loso_pearson_matched'))} | "
                     f"{fixed(r.get('loso_spearman_matched'))} | {fixed(r.get('top1_agree_matched'))} |")
    noise = gt.get("noise") or {}
    if noise:
        lines += ["", "Noise of the truth itself (seed 0 alone vs the mean of the other seeds, same metrics): "
                  f"LOSO r {fixed(noise['loso_pearson_seed0_vs_rest'])}, LOSO ρ "
                  f"{fixed(noise['loso_spearman_seed0_vs_rest'])}, top-1 {fixed(noise['top1_seed0_vs_rest'])}, subset "
                  f"margins ρ {fixed(noise['subset_spearman_seed0_vs_rest'])}: with 3 seeds, a perfect predictor "
                  "would still not reach 1."]
    nm = gt.get("noise_matched") or {}
    if nm:
        lines[-1] += (f" Order-matched truth: LOSO r {fixed(nm['loso_pearson_seed0_vs_rest'])}, LOSO ρ "
                      f"{fixed(nm['loso_spearman_seed0_vs_rest'])}, top-1 {fixed(nm['top1_seed0_vs_rest'])}, subset "
                      f"margins ρ {fixed(nm['subset_spearman_seed0_vs_rest'])}.")
    lines += ["", "Verdicts (goals of issue 12):", "", *_verdicts(payload)]
    lines += [
        "",
        "**What-if** (`influence.whatif`: removing publishers `R` changes the output by −Σ_{s∈R} τ(q,s)/n, "
        f"n = {prov['n_train']}): predicted vs real change of the margin. Single publisher removed: Pearson over "
        f"all {prov['n_queries']}×{S} (query, publisher) pairs, MAE (mean |real change| "
        f"{_g(gt['true_effect_abs_mean'])}), MAE after the best single scale factor (oracle calibration; TRAK "
        "and the gradient dot product have no 1/n scale, so only their fitted MAE is comparable) and that factor "
        "(1 = calibrated), Pearson across publishers of the mean change over queries. Random subsets (about half "
        "the publishers removed, vs the full models): the same, pooled over (subset, query) (mean |real change| "
        f"{_g(gt['subset_change_abs_mean'])}).",
        "",
        "| method | models | LOO r | LOO MAE | LOO MAE fitted | scale fit | mean-change r | subsets r | subsets MAE "
        "| subsets MAE fitted | subsets scale fit | LOO r matched | LOO MAE matched | LOO scale fit matched |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in payload["records"]:
        lo, su, lm = r["whatif_loso"], r["whatif_subsets"], r.get("whatif_loso_matched") or {}
        lines.append(f"| {LABELS.get(r['method'], r['method'])} | {r['models']} | {fixed(lo['pearson'])} | "
                     f"{_g(lo['mae'])} | {_g(lo['mae_fitted'])} | {_g(lo['scale_fit'])} | "
                     f"{fixed(lo['mean_change_pearson'])} | {fixed(su['pearson'])} | {_g(su['mae'])} | "
                     f"{_g(su['mae_fitted'])} | {_g(su['scale_fit'])} | {fixed(lm.get('pearson'))} | "
                     f"{_g(lm.get('mae'))} | {_g(lm.get('scale_fit'))} |")
    if gt.get("true_effect_abs_mean_matched") is not None:
        lines += ["", f"(Order-matched: mean |real change| of one removal {_g(gt['true_effect_abs_mean_matched'])}.)"]
    lines += [
        "",
        "**Credit shares** (what the service would pay): `proportional` splits each query's unit of credit over "
        "the publishers with positive τ in proportion; `top` gives it all to the highest-τ publisher. Each "
        "publisher's share over the test set is compared with its share of the total positive true removal "
        "effect (Σ_q max(effect, 0)), and with the same rule applied to the true effects (rule on truth): "
        "Pearson across publishers and total-variation distance (0 = identical, 1 = disjoint).",
        "",
        "| method | models | prop. r | prop. TV | prop. r (rule on truth) | prop. TV (rule on truth) | top r | "
        "top TV | top r (rule on truth) | top TV (rule on truth) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in payload["records"]:
        p, t = r["credit_proportional"], r["credit_top"]
        lines.append(f"| {LABELS.get(r['method'], r['method'])} | {r['models']} | "
                     f"{fixed(p['vs_true_share']['pearson'])} | {fixed(p['vs_true_share']['tv'])} | "
                     f"{fixed(p['vs_rule_on_truth']['pearson'])} | {fixed(p['vs_rule_on_truth']['tv'])} | "
                     f"{fixed(t['vs_true_share']['pearson'])} | {fixed(t['vs_true_share']['tv'])} | "
                     f"{fixed(t['vs_rule_on_truth']['pearson'])} | {fixed(t['vs_rule_on_truth']['tv'])} |")
    sh = payload["credit_shares"]
    M = max(r["models"] for r in payload["records"])
    cols = [("ours", 1, "proportional"), ("ours", M, "proportional"), ("ours", M, "top"),
            ("trak", M, "proportional"), ("trak", M, "top"), ("graddot", M, "proportional")]
    cols = [c for c in cols if _rec(payload, c[0], c[1]) is not None]
    head = " | ".join(f"{m} {k} {rule[:4]}." for m, k, rule in cols)
    tm = sh.get("true_share_matched")
    lines += ["", "Per-publisher shares (%): true = share of the positive true removal effect (and the same "
              "with the order-matched truth); then method, models, rule.", "",
              f"| publisher | examples | true | true matched | true (top on truth) | {head} |",
              "|---|---:|---:|---:|---:|" + "---:|" * len(cols)]
    for s, name in enumerate(sh["publishers"]):
        vals = " | ".join(f"{100 * _rec(payload, m, k)[f'credit_{rule}']['shares'][s]:.1f}" for m, k, rule in cols)
        lines.append(f"| {name} | {sh['examples'][s]} | {100 * sh['true_share'][s]:.1f} | "
                     f"{'–' if tm is None else f'{100 * tm[s]:.1f}'} | "
                     f"{100 * sh['rule_on_truth']['top'][s]:.1f} | {vals} |")
    ck = prov.get("checks", {})
    lines += ["", "Checks: " + "; ".join(f"{k} = {v}" for k, v in ck.items()) + ".",
              "", "![source quality](bench/results/source_quality.png)"]
    return "\n".join(lines)


def figure(payload: dict, path: Path) -> None:
    """Top row: predicted Σ τ over a subset vs the true subset margin for
    three queries (ours and TRAK, most models); bottom row: predicted vs real
    change of the margin when one publisher is removed, all (query,
    publisher) pairs, per method."""
    plt = pyplot()
    from scipy.stats import spearmanr

    fig_d, M = payload["figure"], payload["provenance"]["members"]
    qs = fig_d["queries"]
    fig, axes = plt.subplots(2, 3, figsize=(11, 7))
    for c, q in enumerate(qs):
        ax = axes[0][c]
        true = np.asarray(fig_d["true_subset"][c])
        for meth, col in (("ours", "C0"), ("trak", "C1")):
            pred = np.asarray(fig_d["pred_subset"][meth][c])
            rho = spearmanr(pred, true).statistic
            z = (pred - pred.mean()) / (pred.std() or 1.0)
            ax.scatter(z, true, s=10, alpha=0.7, color=col, label=f"{meth} ({M}): ρ={rho:.2f}")
        ax.set_title(f"query {q}: publisher subsets", fontsize=9)
        ax.set_xlabel("predicted Σ τ over kept publishers (standardised)", fontsize=7)
        ax.set_ylabel("true margin (subset models, seed mean)", fontsize=7)
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=6)
    actual = np.asarray(fig_d["loso_actual"]).ravel()
    for c, meth in enumerate(("ours", "trak", "graddot")):
        ax = axes[1][c]
        pred = np.asarray(fig_d["loso_pred"][meth]).ravel()
        r = np.corrcoef(pred, actual)[0, 1]
        ax.scatter(pred, actual, s=3, alpha=0.3, color=f"C{c}")
        if meth == "ours":
            lim = [min(pred.min(), actual.min()), max(pred.max(), actual.max())]
            ax.plot(lim, lim, "k--", lw=0.8, label="y = x")
            ax.legend(fontsize=7)
        ax.set_title(f"{meth} ({M}): remove one publisher, r={r:.2f}", fontsize=9)
        ax.set_xlabel("predicted Δ margin = −τ(q,s)/n" + ("" if meth == "ours" else " (uncalibrated)"), fontsize=7)
        ax.set_ylabel("real Δ margin (seed-matched mean)", fontsize=7)
        ax.tick_params(labelsize=6)
    save(fig, path)
