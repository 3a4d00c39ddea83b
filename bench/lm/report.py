"""The "Language model (Brown)" section of BENCHMARKS.md and
``results/lm_quality.png``, rendered from ``results/lm_quality.json``
(``python -m bench.lm.report``)."""

from __future__ import annotations

import json

from bench.harness.common import RESULTS
from bench.harness.report import current, fmt, pick, pyplot, save, write_section

SRC = RESULTS / "lm_quality.json"
PNG = RESULTS / "lm_quality.png"
HEADING = "Language model (Brown): attribution quality and cost"
COMMAND = ("EXTRAS=bench scripts/setup && .venv/bin/python -m bench.lm.groundtruth --full 5 --doc-subsets 48 "
           "--genre-subsets 24 --seeds 2 && .venv/bin/python -m bench.lm.baselines --members 5 && "
           ".venv/bin/python -m bench.lm.quality && .venv/bin/python -m bench.lm.store")
METHODS = ("ours", "ours_store", "trak", "graddot", "overlap")
LEVELS = ("document", "genre", "genre_centred")


def lds_table(res: dict) -> list[str]:
    recs, E = res["records"], res["members"]
    rows = ["| method | models | document LDS | genre LDS | centred genre LDS | precompute (s) | "
            "per query, per source (s) | per query, per document (s) |", "| --- " * 8 + "|"]
    for models in (1, E):
        for m in METHODS:
            r = {lv: pick(recs, method=m, models=models, level=lv) for lv in LEVELS}
            if r["document"] is None:
                continue
            d = r["document"]
            rows.append(f"| {m} | {models} | " + " | ".join(fmt(r[lv]["lds"] if r[lv] else None) for lv in LEVELS)
                        + f" | {fmt(d['precompute_s'])} | {fmt(d['inference_s_source'])} | "
                        f"{fmt(d['inference_s_example'])} |")
    return rows


def compression_table(res: dict) -> list[str]:
    rows = ["| variant | MB per member | smaller than exact | document LDS, 1 model | loss | "
            f"document LDS, {res['members']} models | loss |", "| --- " * 7 + "|"]
    for c in sorted(res["compression"], key=lambda c: -c["bytes_per_member"]):
        rows.append(f"| {c['variant']} | {fmt(c['bytes_per_member'] / 1e6)} | {fmt(c['reduction'])}x | "
                    f"{fmt(c['lds_document_1'])} | {fmt(c['loss_document_1'])} | {fmt(c['lds_document_E'])} | "
                    f"{fmt(c['loss_document_E'])} |")
    return rows


def plot(res: dict) -> None:
    plt = pyplot()

    E = res["members"]
    pq = res["per_query_document_lds"]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.6))
    ax[0].scatter(pq[f"trak_x{E}"], pq[f"ours_x{E}"], s=14, alpha=0.7)
    lo = min(min(pq[f"trak_x{E}"]), min(pq[f"ours_x{E}"]))
    ax[0].plot([lo, 1], [lo, 1], "k--", lw=0.8)
    ax[0].set(xlabel=f"TRAK-{E} document LDS (per query)", ylabel=f"ours-{E} document LDS (per query)",
              title="per-query document LDS, 100 held-out windows")
    families: dict[str, list] = {}
    for c in res["compression"]:
        families.setdefault(c["variant"].split("_")[0], []).append(c)
    for fam, cs in families.items():  # one line per rank (or the rows), over the storage dtypes
        cs = sorted(cs, key=lambda c: c["bytes_per_member"])
        ax[1].plot([c["bytes_per_member"] / 1e6 for c in cs], [c["lds_document_E"] for c in cs], "o-", label=fam)
        for c in cs:
            ax[1].annotate(c["variant"].split("_", 1)[-1], (c["bytes_per_member"] / 1e6, c["lds_document_E"]),
                           fontsize=6)
    ax[1].axvline(res["exact_bytes_per_member"] / 10e6, color="grey", ls=":", label="10x smaller than exact")
    ax[1].set(xscale="log", xlabel="per-document store, MB per member", ylabel=f"document LDS, {E} models",
              title="compression: size against quality")
    ax[1].legend(fontsize=8)
    save(fig, PNG)


def render(res: dict) -> str:
    t, gt = res["timing"], res["ground_truth"]
    build = next((r for r in res["records"] if "store_build_s" in r), None)
    lines = [f"Command: `{COMMAND}`", "",
             f"Date {res['date']}, {res['threads']} thread(s), this 2-core machine. Ground truth: "
             f"{gt['doc_subsets']} document subsets x 2 seeds, {gt['genre_subsets']} genre subsets, "
             f"{fmt(gt['seconds'] / 60)} min of training; the full-data models (seeds 2..) have held-out "
             f"perplexity {', '.join(fmt(x) for x in gt['heldout_ppl'])}. TRAK's λ is the best of its sweep on "
             f"this ground truth ({res['trak_lambda']}), in TRAK's favour. `ours` reads exact float32 "
             f"responses, `ours_store` what the brown store holds ({res['store_variant']}); precompute is per model "
             f"(simulation, and for TRAK gradients + projection), times the models.", "", *lds_table(res), "",
             f"Per-query readout, one query at a time, side by side in one loop ({t['queries']} queries, medians): "
             f"ours per source {fmt(t['ours_source_s'])} s ({t['source_tangents']} forward tangents, the genres), ours "
             f"per document {fmt(t['ours_rows_s'])} s (one tangent per document, {t['rows']}; a rank-"
             f"{t['basis_rank']} basis: {fmt(t['ours_example_s'])} s), TRAK {fmt(t['trak_s'])} s "
             f"(backward {fmt(t['backward_s'])} s + projection to k={t['trak_k']} + product): ours / TRAK = "
             f"{fmt(t['ours_source_s'] / t['trak_s'])} per source, {fmt(t['ours_rows_s'] / t['trak_s'])} per "
             f"document (the store's publishers are sums of its documents: they cost the same). "
             f"Forward readout vs gradient dot product: max relative difference "
             f"{fmt(res['forward_check_max_rel'])}.", "", "Compression of the per-document responses "
             f"(exact float32: {fmt(res['exact_bytes_per_member'] / 1e6)} MB per member):", "",
             *compression_table(res), "", f"![LDS and compression]({PNG.name})"]
    if build:
        lines += ["", f"Brown store end to end (`{current(build['command'])}`): {fmt(build['store_build_s'])} s; "
                  f"{fmt(build['store']['total_bytes'] / 1e6)} MB on disk; service resident memory holding it "
                  f"{fmt(build['service_rss_mb'])} MB (digits store: {fmt(build['service_rss_mb_digits'])} MB)."]
    return "\n".join(lines)


def main() -> None:
    res = json.loads(SRC.read_text())
    plot(res)
    write_section(HEADING, render(res))
    print(f"wrote {PNG} and the '{HEADING}' section")


if __name__ == "__main__":
    main()
