"""The "Serving speed: text store" section of BENCHMARKS.md and
``results/load_text.png``, rendered from ``results/load_text.json`` (what
``python -m bench.serving.load_text`` measured; nothing is measured here):

    python -m bench.serving.load_text_report [--json bench/results/load_text.json] [--no-md]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench.harness.common import RESULTS
from bench.harness.report import current, head, log2_x, pick, pyplot, save, write_section

HEADING = "Serving speed: text store"
SRC = RESULTS / "load_text.json"
GOAL_QPS, GOAL_P99_MS, GOAL_C = 50.0, 250.0, 32



def _svc_block(res: dict) -> int:
    """Rows per service readout call for a text store: ``text_readout_block``
    (4 when the run did not record it: the service's default then)."""
    return int(res.get("settings", {}).get("text_readout_block", 4))

def _num(x: float | None, nd: int = 1) -> str:
    if x is None:
        return "–"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.{nd}f}"


def _cell(r: dict | None) -> str:
    if r is None:
        return "–"
    if not r.get("ok"):
        return f"no answer ({r['requests']} sent, errors {r.get('failures')})"
    return (f"{_num(r['throughput_qps'])} q/s · p50 {_num(r['p50_ms'], 0)} · p95 {_num(r['p95_ms'], 0)} · "
            f"p99 {_num(r['p99_ms'], 0)} ms · {r['ok']} req"
            + (f" · err {r['error_rate']:.1%}" if r.get("error_rate") else ""))


def gemm_peak(res: dict) -> dict | None:
    g = res.get("gemm") or []
    return max(g, key=lambda x: x["gflops"]) if g else None


def headline(res: dict) -> dict | None:
    """The goal's point: concurrency 32, one query per request, batching on."""
    return pick([r for r in res.get("rows", []) if r.get("store_kind") == "text"], concurrency=GOAL_C,
                 queries_per_request=1, batching=True)


def matrix_tables(rows: list[dict]) -> list[str]:
    out = []
    for qpr in sorted({r["queries_per_request"] for r in rows}):
        mine = [r for r in rows if r["queries_per_request"] == qpr]
        cs = sorted({r["concurrency"] for r in mine})
        out += [f"{qpr} quer{'y' if qpr == 1 else 'ies'} per request (granularity `{mine[0]['granularity']}`, "
                "cache off):", "",
                *head(["batching", *(f"c = {c}" for c in cs)])]
        for b in (True, False):
            sel = [r for r in mine if r["batching"] == b]
            if sel:
                out.append(f"| {'on' if b else 'off'} | "
                           + " | ".join(_cell(pick(sel, concurrency=c)) for c in cs) + " |")
        out.append("")
        detail = []
        for b in (True, False):
            for c in cs:
                r = pick(mine, batching=b, concurrency=c)
                if r and r.get("ok"):
                    detail.append(f"batching {'on' if b else 'off'}, c = {c}: "
                                  f"{_num(r.get('queries_per_batch'))} q/batch, readout p50 "
                                  f"{_num(r.get('readout_p50_ms'), 0)} ms, service "
                                  f"{_num(r.get('service_cpu_ms_per_query'), 0)} CPU ms/q, load "
                                  f"{r.get('loadavg', 0):.1f}")
        if detail:
            out += ["Per point: " + "; ".join(detail) + ".", ""]
    return out


def _tangents(res: dict) -> str:
    st = res["store"]
    if st.get("source_rows") and res.get("requests", {}).get("granularity") == "sources":
        return (f"{st['tangents_sources_only']} (one per stored per-source row; {st['tangents_per_query']} with "
                "documents)")
    return str(st["tangents_per_query"])


def _tangent_kind(res: dict) -> str:
    st = res["store"]
    if st.get("source_rows") and res.get("requests", {}).get("granularity") == "sources":
        return f"one per stored per-source row ({st['sources']} sources; the documents are not read)"

    return "the store's `TextAttributor.tangents_per_query` (its document rows or basis rows)"


def cost_table(res: dict) -> list[str]:
    """q/s, ms and GFLOP per query, and the fraction of the GEMM rate, per way of scoring."""
    fl, ip, peak = res.get("flops", {}), res.get("in_process"), gemm_peak(res)
    ro = fl.get("readout", {}).get("total")
    tr = fl.get("trak", {}).get("total")
    block = (ip or {}).get("readout_block") or _svc_block(res)
    lines = ["| scoring | queries/s | ms per query | GFLOP per query (counted) | GFLOP/s reached | of GEMM peak |",
             "| --- | --- | --- | --- | --- | --- |"]

    def row(name, qps, gflop):
        if not qps:
            return
        rate = qps * gflop if gflop else None
        frac = f"{rate / peak['gflops']:.0%}" if rate and peak else "–"
        lines.append(f"| {name} | {_num(qps, 2)} | {_num(1000 / qps)} | {_num(gflop, 2)} | {_num(rate)} | {frac} |")

    h = headline(res)
    if h and h.get("ok"):
        row(f"served, c = {GOAL_C}, 1 q/req, batching on (useful rows only)", h["throughput_qps"], ro and ro / 1e9)
    best = max((r for r in res.get("rows", []) if r.get("ok")), key=lambda r: r["throughput_qps"], default=None)
    if best and best is not h:
        row(f"served, best point (c = {best['concurrency']}, {best['queries_per_request']} q/req, batching "
            f"{'on' if best['batching'] else 'off'})", best["throughput_qps"], ro and ro / 1e9)
    if ip:
        row("readout in process, one row (`TextAttributor.score`)", ip.get("ours_row_qps"), ro and ro / 1e9)
        if ip.get("ours_block_qps"):
            row(f"readout in process, one block of {block} queries (as the service)", ip["ours_block_qps"],
                ro and ro / 1e9)
        row("TRAK, one query at a time (backward + projection + product)", ip.get("trak_qps"), tr and tr / 1e9)
        row(f"TRAK, {ip['trak_batch']} queries per projection GEMM", ip.get("trak_batched_qps"), tr and tr / 1e9)
    lines += ["", "Served and one-row figures count each query's own row only (the filler rows of a padded block "
              "are not counted: the fraction is that of useful arithmetic). Served q/s share the machine with the "
              "load generator; the in-process figures ran after the load, in the benchmark's process."]
    return lines


def flops_lines(res: dict) -> list[str]:
    fl, st = res.get("flops", {}), res["store"]
    r, t = fl.get("readout"), fl.get("trak")
    out = []
    if r:
        out.append("- Flops per query of the readout (counted from the shapes, "
                   f"`bench.serving.load_text.readout_flops`; one row of {r['positions']} positions, "
                   f"{r['tangents_per_query']} tangents = "
                   f"{_tangent_kind(res)}): {r['tangents_per_query']} × "
                   f"{r['per_tangent'] / 1e6:.1f} MFLOP of forward tangents (through the trunk: the tied head is "
                   f"contracted once per row, not carried per tangent, which would make it "
                   f"{r.get('per_tangent_with_head', 0) / 1e6:.1f} MFLOP) = {r['tangents'] / 1e9:.2f} GFLOP, "
                   f"{r['shared'] / 1e6:.0f} MFLOP shared by the row's tangents (primal passes, the tied head, "
                   f"from which f and the token log-probabilities come), {r['products'] / 1e6:.2f} "
                   f"MFLOP of products with the coefficients and the {st['sources']} sources: "
                   f"**{r['total'] / 1e9:.2f} GFLOP per query**. The service's readout call is always a block of "
                   f"{_svc_block(res)} full-length rows (`text_readout_block`), so a lone query executes "
                   f"{_svc_block(res)}x that, a full block 1x.")
    if t:
        out.append(f"- TRAK per query: backward pass ≈ {t['backward'] / 1e6:.0f} MFLOP (3 forwards), projection "
                   f"{t['projection'] / 1e6:.0f} MFLOP ({st['params']:,} × k = "
                   f"{res.get('trak_precompute', {}).get('k', 2048)}), product and source sums "
                   f"{t['products'] / 1e6:.1f} MFLOP: {t['total'] / 1e9:.2f} GFLOP. One query at a time the "
                   "projection is a matrix-vector product over a resident (p, k) float32 matrix "
                   f"({st['params'] * res.get('trak_precompute', {}).get('k', 2048) * 4 / 2**30:.1f} GiB): "
                   "bound by memory bandwidth, not by the GEMM rate.")
    g = res.get("gemm") or []
    if g:
        out.append(f"- GEMM rate (`torch.matmul` float32, {g[0]['threads']} thread(s), the service's count): "
                   + ", ".join(f"{x['shape']} {x['gflops']:.1f} GFLOP/s" for x in g) + ".")
    return out


def time_lines(res: dict) -> list[str]:
    out = []
    ip = res.get("in_process")
    if ip and ip.get("block_tangents_s"):
        parts = {"forward tangents (`jvp_scores`)": ip["block_tangents_s"],
                 "products (coefficients, sources)": ip["block_products_s"]}
        tot = sum(parts.values())
        out.append(f"- One readout block in process ({ip['readout_block']} queries, "
                   f"{ip['samples']['ours_block']} blocks, medians per query): "
                   + ", ".join(f"{k} {v * 1000:.1f} ms ({v / tot:.0%})" for k, v in parts.items()) + ".")
    if ip and ip.get("trak_s"):
        parts = {"backward": ip["trak_backward_s"], "projection": ip["trak_projection_s"],
                 "product": ip["trak_product_s"]}
        tot = sum(parts.values())
        out.append(f"- TRAK per query in process ({ip['queries']} queries): "
                   + ", ".join(f"{k} {v * 1000:.1f} ms ({v / tot:.0%})" for k, v in parts.items()) + "; "
                   f"precompute (not per query): document gradients "
                   f"{res['trak_precompute']['doc_gradients_s']:.1f} s, projector "
                   f"{res['trak_precompute']['projector_s']:.1f} s, features "
                   f"{res['trak_precompute']['features_s']:.1f} s ({res['trak_precompute']['docs']} documents).")
    for p in res.get("profile", []):
        if p.get("buckets"):
            top = list(p["buckets"].items())[:8]
            out.append(f"- Where the service's time goes (py-spy, {p['samples']:,} samples over all threads, "
                       f"concurrency {p['concurrency']}, {p['queries_per_request']} q/req, `{p['granularity']}`, "
                       f"batching on, cache off, {_num(p.get('throughput_qps'))} q/s while sampled; raw stacks "
                       f"in `{p.get('raw')}`, not committed): " + ", ".join(f"{k} {v:.0%}" for k, v in top)
                       + (". Within it: " + ", ".join(f"{k} {v:.0%}" for k, v in p["readout_split"].items())
                          if p.get("readout_split") else "") + ". Top frames by own time: "
                       + ", ".join(f"`{f}` {v:.0%}" for f, v in p.get("top_self", [])[:5]) + ".")
        elif p.get("error"):
            out.append(f"- Profile: not taken ({p['error'][:200]}).")
    return out


def findings(res: dict) -> list[str]:
    rows, ip, out = res.get("rows", []), res.get("in_process") or {}, []
    h = headline(res)
    trak, trak_b = ip.get("trak_qps"), ip.get("trak_batched_qps")
    if h and h.get("ok"):
        ok = h["throughput_qps"] >= GOAL_QPS and (h["p99_ms"] or 1e9) < GOAL_P99_MS
        out.append(f"- Goal (≥ {GOAL_QPS:.0f} text queries/s at concurrency {GOAL_C} with p99 < "
                   f"{GOAL_P99_MS:.0f} ms, per-publisher answers, batching on): {_num(h['throughput_qps'])} q/s, "
                   f"p99 {_num(h['p99_ms'], 0)} ms — {'met' if ok else 'not met'} at load average "
                   f"{h['loadavg']:.1f}.")
        if trak:
            out.append(f"- Served text q/s ÷ TRAK q/s (the same model and sources, measured in this run): "
                       f"{h['throughput_qps'] / trak:.2f}x TRAK one query at a time"
                       + (f", {h['throughput_qps'] / trak_b:.2f}x TRAK {ip['trak_batch']} queries per projection"
                          if trak_b else "")
                       + f" — the goal (≥ 1x) {'met' if h['throughput_qps'] >= trak else 'not met'}"
                       + (f"; the readout in process, one full block: {ip['ours_block_qps'] / trak:.2f}x TRAK "
                          f"one at a time" if ip.get("ours_block_qps") else "") + ".")
    for qpr in sorted({r["queries_per_request"] for r in rows}):
        rat = []
        for c in sorted({r["concurrency"] for r in rows}):
            on = pick(rows, batching=True, concurrency=c, queries_per_request=qpr)
            off = pick(rows, batching=False, concurrency=c, queries_per_request=qpr)
            if on and off and on.get("ok") and off.get("ok") and off["throughput_qps"]:
                rat.append(f"{on['throughput_qps'] / off['throughput_qps']:.2f}x at c = {c}")
        if rat:
            out.append(f"- Batching on vs off in the matrix (one service each, in turn), {qpr} q/req: "
                       + ", ".join(rat) + ".")
    ab = res.get("ab") or []
    for v in dict.fromkeys(r["variant"] for r in ab if r["variant"] != "as is"):
        cells = []
        for c, q in sorted({(r["concurrency"], r["queries_per_request"]) for r in ab}):
            per = {}
            for r in ab:
                if r["concurrency"] == c and r["queries_per_request"] == q and r["variant"] in ("as is", v):
                    per.setdefault(r["round"], {})[r["variant"]] = r["throughput_qps"]
            pairs = [d for d in per.values() if len(d) == 2 and d[v]]
            if pairs:
                med = statistics.median(d["as is"] for d in pairs) / statistics.median(d[v] for d in pairs)
                cells.append(f"{med:.2f}x at c = {c}, {q} q/req (rounds: "
                             + ", ".join(f"{d['as is'] / d[v]:.2f}" for d in pairs) + ")")
        if cells:
            out.append(f"- Side by side, as is vs `{v}`, alternating round by round: " + "; ".join(cells) + ".")
    sizes = [r for r in rows if r["batching"] and r["queries_per_request"] == 1 and r.get("queries_per_batch")]
    if sizes:
        blk = _svc_block(res)
        out.append("- Readout batch sizes, batching on, 1 q/req: "
                   + ", ".join(f"{r['queries_per_batch']:.1f} queries per batch at c = {r['concurrency']}"
                               for r in sorted(sizes, key=lambda r: r["concurrency"]))
                   + f" (`max_batch` {res.get('settings', {}).get('max_batch', 64)}). A readout call costs the "
                   f"same for 1 to {blk} queries (one padded block), so every batch under {blk} queries leaves "
                   "part of its block to filler rows.")
    lone = pick(rows, batching=True, concurrency=1, queries_per_request=1)
    if ip.get("ours_row_s") and ip.get("ours_block_s"):
        out.append(f"- Padding: in process one row costs {ip['ours_row_s'] * 1000:.0f} ms, a full block "
                   f"{ip['ours_block_s'] * 1000:.0f} ms per query (block of {ip['readout_block']} rows); the "
                   f"service reads a lone query out as a whole block of {_svc_block(res)} rows "
                   "(`text_readout_block`: fixed shapes keep answers batch invariant), "
                   + (f"so at c = 1 it serves {_num(lone['throughput_qps'], 2)} q/s against "
                      f"{ip['ours_row_qps']:.2f} q/s for one unpadded row." if lone and lone.get("ok") else
                      "so below a full block per batch most of the arithmetic is on filler rows."))
    return out


def render(res: dict) -> str:
    m, st, rq = res["machine"], res["store"], res["requests"]
    s = res.get("settings", {})
    lines = [f"Machine: {m['cpus']}-core ({m['cpu']}), {m['mem_gib']} GiB, "
             f"{'GPU ' + m['cuda'] if m.get('cuda') else 'no GPU'}, shared with other jobs (load averages "
             f"below; the load generator runs on the same cores). Service: `python -m service` on loopback "
             f"with the text store `{st['root']}` (version `{st['version']}`: the `brown` preset, a "
             f"{st['params']:,}-parameter GPT, context {st['context']}, {st['members']} member(s), "
             f"{_tangents(res)} tangents per query, {st['documents']} training documents, "
             f"{st['sources']} sources = publishers), Redis at `{res['redis_url']}` under a fresh key prefix, "
             f"`FA_TORCH_THREADS={s.get('torch_threads', 1)}`, "
             "cache off, other settings at their defaults"
             + (" except " + ", ".join(f"`{k}={v}`" for k, v in s.items() if k not in ("torch_threads",
                                                                                       "readout_block"))
                if any(k not in ("torch_threads", "readout_block") for k in s) else "")
             + f". Requests: held-out Brown passages (the corpus's {rq['passages']} windows of at most "
             f"{rq['window_tokens']} tokens, mean {rq['mean_tokens']:.1f}, sent as raw text), granularity "
             f"`{rq['granularity']}`, top_k {rq['top_k']}, recorded; 1 or 8 per request. Each point: "
             f"{res.get('warmup_s', 0):g} s of warm-up load, then {res['duration_s']:g} s (closed loop; requests "
             "in flight at the end are waited for and counted). TRAK, the in-process readout and the GEMM rates: "
             "in the benchmark's process, same thread count, after the load. JSON: "
             "`bench/results/load_text.json`; plot: `bench/results/load_text.png`. Runs:", ""]
    for r in res.get("runs") or []:
        lines.append(f"- `{current(r['command'])}` — {r['machine']['date']}, git `{r['machine']['git']}`, load average "
                     f"{r['load_start']:.1f} → {r['load_end']:.1f}, parts {', '.join(r.get('parts') or [])}")
    lines.append("")
    rows = [r for r in res.get("rows", []) if r.get("store_kind") == "text"]
    lines += matrix_tables(rows)
    cost = cost_table(res)
    if len(cost) > 2:
        lines += ["Cost per query, side by side (GFLOP counted from the shapes; \"of GEMM peak\": the rate "
                  "reached over the best `torch.matmul` rate measured below):", "", *cost, ""]
    lines += ["**Findings.**", "", *findings(res), *flops_lines(res), *time_lines(res)]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    plt = pyplot()

    rows = [r for r in res.get("rows", []) if r.get("store_kind") == "text" and r.get("ok")]
    if not rows:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for b, col in ((True, "C0"), (False, "C1")):
        for qpr, mk in ((1, "o"), (8, "s")):
            rs = sorted((r for r in rows if r["batching"] == b and r["queries_per_request"] == qpr),
                        key=lambda r: r["concurrency"])
            if rs:
                lab = f"batching {'on' if b else 'off'}, {qpr} q/req"
                x = [r["concurrency"] for r in rs]
                axes[0].plot(x, [r["throughput_qps"] for r in rs], "-", marker=mk, color=col, label=lab)
                axes[1].plot(x, [r["p99_ms"] for r in rs], "-", marker=mk, color=col, label=lab)
    ip = res.get("in_process") or {}
    if ip.get("trak_qps"):
        axes[0].axhline(ip["trak_qps"], color="C3", ls=":", label="TRAK, one query at a time")
    if ip.get("trak_batched_qps"):
        axes[0].axhline(ip["trak_batched_qps"], color="C3", ls="-.", label=f"TRAK, {ip['trak_batch']} per GEMM")
    axes[0].axhline(GOAL_QPS, color="k", lw=0.8, ls="--", label=f"goal {GOAL_QPS:.0f} q/s")
    axes[1].axhline(GOAL_P99_MS, color="k", lw=0.8, ls="--", label=f"goal p99 {GOAL_P99_MS:.0f} ms")
    log2_x(axes, "concurrency (connections)")
    for ax in axes:
        ax.legend(fontsize=7)
    axes[0].set_ylabel("text queries / s")
    axes[0].set_yscale("log")
    axes[0].set_title(f"text store ({res['store']['sources']} publishers): throughput")
    axes[1].set_ylabel("p99 latency (ms)")
    axes[1].set_yscale("log")
    axes[1].set_title("p99 latency")
    save(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.serving.load_text_report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, default=SRC)
    ap.add_argument("--no-md", action="store_true", help="only the PNG")
    a = ap.parse_args(argv)
    res = json.loads(a.json.read_text())
    plot(res, a.json.with_suffix(".png"))
    if not a.no_md:
        write_section(HEADING, render(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
