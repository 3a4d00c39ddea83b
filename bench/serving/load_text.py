"""``python -m bench.serving.load_text``: the load benchmark of a **text store**, and
TRAK's per-query scoring of the same model and sources beside it.

The service, the keep-alive client, the matrix, the profile and the
side-by-side runners are ``bench.serving.load``'s (see there); this module gives
them text requests and adds what only a text store needs:

- **Requests** (``text_bodies``): held-out Brown passages: the held-out
  documents of ``influence.text.corpus.brown_corpus()``, cut into
  consecutive windows of ``--window`` words (64), taken round-robin over
  the documents, whitespace-joined into raw text, each shortened until the
  store's tokenizer makes at most ``--window`` tokens of it (the store's
  limit is context + 1 = 65; the readout runs every row at that full length
  either way). ``{"text": ...}`` queries, granularity ``sources``
  (per publisher), ``top_k`` 10, recorded; 1 or 8 queries per request.
  Service settings: the defaults, ``FA_TORCH_THREADS`` = ``--threads`` (1)
  and ``request_timeout_s`` 120 (``SETTINGS``), plus any ``--set``.
- **Matrix** (``--parts matrix``): batching on and off (one service process
  each, cache off), concurrency 1, 8, 32. Rows carry ``store_kind: "text"``
  beside ``bench.serving.load``'s keys. ``--parts ab`` runs the tree as is and
  ``--ab-variants`` (default ``batching=false``) alternating round by round.
- **TRAK** (``--parts trak``): in this process, at the service's torch
  thread count, on the store's own model (member 0) and its sources: the
  per-document gradients of the store's 450 training documents (their 4
  blocks each), traker's projector (``k`` = 2048, matrix resident) and score
  computer (λ = the mean eigenvalue of ΦᵀΦ, as ``bench.lm.timing``) give the
  finalised ``(450, k)`` features once (timed apart, not per query). Per
  query: a backward pass of ``sequence_logprob``, the projection, the
  product with the features and the sums per source — one query at a time
  (``trak``, as ``bench.lm.timing``), and ``--trak-batch`` queries at a
  time with one projection GEMM (``trak_batched``, TRAK's best case on a
  CPU). Interleaved with them, query by query, the store's own readout in
  process: ``TextAttributor.score`` on one row (``ours_row``) and on one
  full readout block as the service runs it (``text_readout_block``
  queries, ``ours_block``), plus the split of that block's time into
  forward tangents (with the primal pass) and products.
- **Flops** (``readout_flops``, ``trak_flops``): counted from the model's
  shapes and the store's ``tangents_per_query``; ``--parts gemm`` measures
  ``torch.matmul`` float32 rates (a square GEMM and the readout's own
  shapes) at the same thread count, so the report gives the fraction of
  the GEMM rate reached.
- **Profile** (``--parts profile``): py-spy on the service at concurrency
  32, 1 query per request, batching on (``bench.serving.load.run_profile``), with
  the readout's samples split into tangents / other.

Writes ``bench/results/load_text.json`` (its own file: the text rows need
the TRAK, flops and GEMM figures beside them, and ``load.json`` stays the
digits store's); ``--merge`` adds to an earlier one; ``--write-md`` renders
the "Serving speed: text store" section of BENCHMARKS.md and
``load_text.png`` with ``bench.serving.load_text_report`` (which also runs alone).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from bench.harness.common import CACHE, RESULTS, ROOT, loadavg, machine, write_json
from bench.harness.service import REDIS_URL
from bench.serving import load
from bench.serving.client import BodiesFn, request_bodies

STORE = ROOT / "stores" / "brown"
OUT = "load_text.json"
CONCURRENCY = (1, 8, 32)
QPR = (1, 8)
SETTINGS = {"request_timeout_s": "120"}
"""Service settings of every run unless ``--set`` overrides them: with
batching off every request is a readout of its own (a whole block, about a
second on one thread), so at concurrency 32 a request queues behind 31
others for longer than the default 30 s limit; 120 s lets those points
answer (and be measured) instead of timing out."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure_store(root: Path) -> Path:
    """The brown store at ``root``, built first (minutes) when it is missing."""
    if not (root / "CURRENT").exists():
        import subprocess

        log(f"building the brown store into {root} (3-4 minutes on 2 cores)...")
        subprocess.run([sys.executable, "-m", "worker", "build", "--preset", "brown", "--store", str(root), "--quiet"],
                       check=True, cwd=ROOT)
    return root


# -- requests -----------------------------------------------------------------------------------------------------
def passages(tokenizer, count: int = 720, window: int = 64) -> list[str]:
    """``count`` raw-text windows of the held-out Brown documents, at most
    ``window`` tokens each under ``tokenizer`` (see the module doc)."""
    from influence.datasets.brown import brown_corpus, load_brown

    words = {s.id: list(s.tokens) for s in load_brown()}
    docs = [words[i] for i in brown_corpus().heldout_ids]
    out: list[str] = []
    k = 0
    while len(out) < count:
        fresh = False
        for d in docs:
            part = d[k * window:(k + 1) * window]
            if len(part) < 2:
                continue
            fresh = True
            while len(tokenizer.tokenize(" ".join(part))) > window:
                part = part[:-1]
            out.append(" ".join(part))
            if len(out) == count:
                break
        if not fresh:
            break
        k += 1
    return out


def text_bodies(texts: list[str], top_k: int = 10) -> BodiesFn:
    qs = [{"text": t} for t in texts]
    return lambda qpr, granularity: request_bodies(qs, qpr, granularity=granularity, top_k=top_k)


# -- flops ----------------------------------------------------------------------------------------------------------
def _trunk_flops(spec) -> int:
    """One primal pass of the trunk over one row of ``context`` positions:
    per layer the six products of 12 d² weights (qkv 3d², proj d², fc 4d²,
    fc2 4d²) and the attention's QKᵀ and AV (full T × T, causal by mask)."""
    T, d = spec.context, spec.d
    return spec.layers * (2 * T * 12 * d * d + 2 * 2 * T * T * d)


def readout_flops(spec, tangents: list[int], n_docs: int, n_sources: int, docs: bool = True) -> dict:
    """Multiply-adds × 2 of ``TextAttributor.score`` for one query row of
    full length (``context`` positions), from the shapes, per member ``e``
    with ``tangents[e]`` rows (``lm_math.jvp_scores``: hand-derived trunk
    tangents, the tied head contracted analytically):

    - tangents: per tangent the trunk's jvp (every product twice, ẋW and
      xẆ; QKᵀ and AV twice), the contraction with ``g W`` and ``⟨Ẇ, M⟩``;
    - shared per row: the primal trunk (once for all tangents; f and the
      token log-probabilities come from it) and the head's three
      ``T × d × V`` products (logits, ``g W``, ``Σ_t g_t a_tᵀ``);
    - products: ``τ_B Cᵀ`` and the sums per source (``docs`` False: a
      sources-only read of per-source rows, ``tangents`` = their count: none).

    Elementwise work (LayerNorm, GELU, softmax) is not counted."""
    T, d, V = spec.context, spec.d, spec.vocab
    trunk = _trunk_flops(spec)
    logits = 2 * T * d * V
    per_tangent = 2 * trunk + 2 * T * d + 2 * V * d
    tang = shared = prod = 0
    for r in tangents:
        tang += r * per_tangent
        shared += trunk + 3 * logits
        prod += 2 * r * n_docs if docs else 0
    prod += 2 * n_docs * n_sources if docs else 0
    return {"per_tangent": per_tangent, "per_tangent_with_head": per_tangent + 2 * logits, "tangents": tang,
            "shared": shared, "products": prod, "total": tang + shared + prod,
            "tangents_per_query": int(sum(tangents)), "positions": T}


def trak_flops(spec, n_params: int, k: int, n_docs: int, n_sources: int) -> dict:
    """TRAK per query: a backward pass (≈ 3 forwards: the forward, then two
    products per weight product on the way back), the projection ``g P``
    ``(p, k)``, the product with the ``(n, k)`` features and the source sums."""
    fwd = _trunk_flops(spec) + 2 * spec.context * spec.d * spec.vocab
    back, proj, prod = 3 * fwd, 2 * n_params * k, 2 * k * n_docs + 2 * n_docs * n_sources
    return {"backward": back, "projection": proj, "products": prod, "total": back + proj + prod}


# -- GEMM rate ------------------------------------------------------------------------------------------------------
def gemm_rates(spec, threads: int, block: int = 16, chunk: int = 16, min_s: float = 0.25, rounds: int = 5
               ) -> list[dict]:
    """``torch.matmul`` float32 GFLOP/s at ``threads`` threads: a square
    1024³ GEMM and the readout's own products (``chunk`` tangents × a block
    of ``block + 1`` rows × ``context`` positions by the d → 3d, d → 4d and
    4d → d weights). Median over ``rounds`` samples of at least ``min_s``."""
    torch.set_num_threads(threads)
    d, m = spec.d, chunk * (block + 1) * spec.context
    shapes = [("square 1024x1024x1024", 1024, 1024, 1024), (f"readout qkv {m}x{d}x{3 * d}", m, d, 3 * d),
              (f"readout fc {m}x{d}x{4 * d}", m, d, 4 * d), (f"readout fc2 {m}x{4 * d}x{d}", m, 4 * d, d)]
    out = []
    gen = torch.Generator().manual_seed(0)
    for name, a, b, c in shapes:
        A, B = torch.randn(a, b, generator=gen), torch.randn(b, c, generator=gen)
        C = torch.empty(a, c)
        torch.matmul(A, B, out=C)
        t0 = time.perf_counter()
        torch.matmul(A, B, out=C)
        reps = max(1, int(min_s / max(time.perf_counter() - t0, 1e-7)))
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(reps):
                torch.matmul(A, B, out=C)
            samples.append((time.perf_counter() - t0) / reps)
        s = statistics.median(samples)
        out.append({"shape": name, "m": a, "k": b, "n": c, "seconds": s, "gflops": 2 * a * b * c / s / 1e9,
                    "threads": threads})
        log(f"gemm {name}: {out[-1]['gflops']:.1f} GFLOP/s")
    return out


# -- TRAK and the readout in process, query by query -----------------------------------------------------------
def _model(att):
    from influence.gpt.model import GPT

    model = GPT(att.spec, seed=None).to(att.dtype)
    model.load_state_dict(att.params[0])
    return model.eval()


def trak_setup(att, k: int, threads: int, docs: int | None = None) -> dict:
    """The finalised TRAK features of the store's training documents (member
    0): ``(n, k)``, with the projector, timed apart (TRAK's precompute)."""
    from bench.harness.trak import finalized, lam_grid, projector, trak_features
    from bench.lm.baselines import doc_block_tensor, doc_gradients
    from influence.datasets.brown import brown_corpus

    torch.set_num_threads(threads)
    c = brown_corpus()
    ids = [str(d["id"]) for d in att.documents]
    if ids != list(c.train_ids):
        raise SystemExit("the store's documents are not the Brown corpus's training documents (in order): "
                         "TRAK needs the documents the store was trained on")
    model = _model(att)
    db = doc_block_tensor(c.blocks, c.block_document, len(c.train_tokens))
    n = len(db) if docs is None else min(docs, len(db))
    t = {}
    t0 = time.perf_counter()
    G = doc_gradients(model, db[:n])
    t["doc_gradients_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    proj = projector(G.shape[1], k, member=0)
    t["projector_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    phi = trak_features(G / 64.0, proj, 0)  # traker's output for a document is (1/64) x its summed log-prob
    feats = finalized(phi, lam_grid([phi], [1.0])[0])
    t["features_s"] = time.perf_counter() - t0
    del G, phi
    return {"model": model, "proj": proj, "feats": feats, "membership": att.membership[:n], "docs": n, "k": k,
            "precompute": t}


def in_process(att, texts: list[str], setup: dict, n_queries: int, batch: int, block: int, threads: int,
               examples: bool = True) -> dict:
    """Seconds per query (medians) of TRAK one at a time and ``batch`` at a
    time, and of the store's readout on one row and on one full readout
    block of ``block`` full-length rows (``influence.blocks.text_readout_rows``,
    as the service runs it), interleaved query by query (see the module
    doc). ``examples`` False: the sources-only read (per-source rows when
    the store has them)."""
    from influence.blocks import text_readout_rows
    from influence.text.causal import sequence_logprob
    from influence.text.lm_math import jvp_scores

    torch.set_num_threads(threads)
    model, proj, feats, A = setup["model"], setup["proj"], setup["feats"], setup["membership"]
    plist = list(model.parameters())
    p = sum(q.numel() for q in plist)
    enc = [att.encode(text=t) for t in texts]
    rows_only = not examples and att.source_rows is not None

    def grad_of(q) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        x = torch.tensor([q.ids])
        sequence_logprob(model, x)[0].backward()
        return torch.cat([w.grad.reshape(-1) for w in plist])

    times: dict[str, list[float]] = {k: [] for k in ("trak", "trak_backward", "trak_projection", "trak_product",
                                                     "trak_batched", "ours_row", "ours_block", "block_tangents",
                                                     "block_products")}
    with torch.no_grad():
        att.score([enc[0]], examples=examples)  # warm
    for i in range(n_queries):
        q = enc[i % len(enc)]
        t0 = time.perf_counter()
        with torch.no_grad():
            att.score([q], examples=examples)
        t1 = time.perf_counter()
        g = grad_of(q).unsqueeze(0)
        t2 = time.perf_counter()
        phi = proj.project(g, model_id=0) / math.sqrt(p)
        t3 = time.perf_counter()
        (phi @ feats.T) @ A
        t4 = time.perf_counter()
        for k, v in (("ours_row", t1 - t0), ("trak_backward", t2 - t1), ("trak_projection", t3 - t2),
                     ("trak_product", t4 - t3), ("trak", t4 - t1)):
            times[k].append(v)
        if (i + 1) % batch == 0:
            qs = [enc[(i + 1 - batch + j) % len(enc)] for j in range(batch)]
            t0 = time.perf_counter()
            Gq = torch.stack([grad_of(x) for x in qs])
            ((proj.project(Gq, model_id=0) / math.sqrt(p)) @ feats.T) @ A
            times["trak_batched"].append((time.perf_counter() - t0) / batch)
        if (i + 1) % block == 0:
            qs = [enc[(i + 1 - block + j) % len(enc)] for j in range(block)]
            with torch.no_grad():
                t0 = time.perf_counter()
                text_readout_rows(att, qs, block, examples)
                times["ours_block"].append((time.perf_counter() - t0) / block)
                # the same block's time, piece by piece (member 0: the brown store has one)
                x, mask = att.batch(qs, att.spec.context + 1)
                params = att.params[0]
                B = att.source_rows[0] if rows_only else att.basis[0]
                t0 = time.perf_counter()
                tau, _ = jvp_scores(att.model, params, B, x, mask, logprobs=True)
                t1 = time.perf_counter()
                if not rows_only:
                    (tau if att.coef[0] is None else tau @ att.coef[0].T) @ att.membership
                t2 = time.perf_counter()
            for k, v in (("block_tangents", t1 - t0), ("block_products", t2 - t1)):
                times[k].append(v / block)
        if (i + 1) % 8 == 0:
            log(f"in process: {i + 1}/{n_queries} queries")
    out = {f"{k}_s": statistics.median(v) if v else None for k, v in times.items()}
    out.update({"queries": n_queries, "trak_batch": batch, "readout_block": block, "threads": threads,
                "samples": {k: len(v) for k, v in times.items()}})
    for k in ("trak", "trak_batched", "ours_row", "ours_block"):
        out[f"{k}_qps"] = 1.0 / out[f"{k}_s"] if out[f"{k}_s"] else None
    return out


# -- profile: the readout's share, split -------------------------------------------------------------------------
READOUT_SPLIT = [("forward tangents (jvp_scores)", ("jvp_scores (",)),
                 ("readout, other (blocks, products, tensors to lists)", ("influence/",))]


def readout_split(raw: Path) -> dict:
    """Share of all samples per part of the readout (``READOUT_SPLIT``, the
    first that matches any frame of a stack)."""
    total, parts = 0, Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        total += int(n)
        for name, keys in READOUT_SPLIT:
            if any(k in stack for k in keys):
                parts[name] += int(n)
                break
    return {k: v / total for k, v in parts.most_common()} if total else {}


# -- main -----------------------------------------------------------------------------------------------------------
def store_info(att, root: Path) -> dict:
    man = att.manifest
    return {"root": str(root.relative_to(ROOT) if root.is_relative_to(ROOT) else root), "version": att.version,
            "params": int(att.spec.n_params()), "context": att.spec.context, "vocab": att.spec.vocab,
            "members": len(att.params), "tangents_per_query": int(att.tangents_per_query),
            "source_rows": att.source_rows is not None, "tangents_sources_only": int(att.tangents(examples=False)),
            "documents": att.n_examples, "sources": att.n_sources,
            "source_level": (man.extra or {}).get("source_level")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.serving.load_text", description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, default=STORE, help="text store root (built first when missing)")
    ap.add_argument("--redis-url", default=REDIS_URL)
    ap.add_argument("--parts", default="matrix,trak,gemm,profile",
                    help="comma separated: matrix, ab, trak (TRAK and the readout in process), gemm, profile")
    ap.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    ap.add_argument("--qpr", default=",".join(map(str, QPR)), help="queries per request")
    ap.add_argument("--batching", default="on,off")
    ap.add_argument("--granularity", default="sources")
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--window", type=int, default=64, help="tokens per passage at most")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds measured per point")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up load before each point")
    ap.add_argument("--max-requests", type=int, default=20000, help="requests per point at most")
    ap.add_argument("--threads", type=int, default=1, help="FA_TORCH_THREADS of the service, and of TRAK and GEMM")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="another FA_ setting")
    ap.add_argument("--trak-queries", type=int, default=96, help="queries of the in-process loop")
    ap.add_argument("--trak-batch", type=int, default=16, help="queries per projection of trak_batched")
    ap.add_argument("--trak-k", type=int, default=2048, help="TRAK's projection dimension")
    ap.add_argument("--trak-docs", type=int, default=None,
                    help="training documents for TRAK's features (default all; fewer only for smoke runs)")
    ap.add_argument("--profile-seconds", type=float, default=8.0)
    ap.add_argument("--ab-rounds", type=int, default=2)
    ap.add_argument("--ab-variants", default="batching=false")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--merge", action="store_true", help="add to an earlier --out (rows, ab, profile appended; "
                                                        "trak, gemm replaced only when measured again)")
    ap.add_argument("--write-md", action="store_true",
                    help="render the 'Serving speed: text store' section of BENCHMARKS.md and the PNG")
    a = ap.parse_args(argv)

    from influence.store import open_store
    from influence.text.attributor import TextAttributor

    torch.set_num_threads(a.threads)
    root = ensure_store(a.store.resolve())
    att = TextAttributor(open_store(root), "cpu")
    if att.manifest.model.kind != "gpt":
        raise SystemExit(f"{root} is not a text store")
    texts = passages(att.tokenizer, window=a.window)
    make = text_bodies(texts, a.top_k)
    extra = {**SETTINGS, **dict(kv.split("=", 1) for kv in a.set)}
    block = int(extra.get("readout_block", 16))
    parts = set(a.parts.split(","))
    conc, qprs = [int(c) for c in a.concurrency.split(",")], [int(q) for q in a.qpr.split(",")]
    res = {"command": "python -m bench.serving.load_text " + shlex.join(argv if argv is not None else sys.argv[1:]),
           "machine": machine(), "load_start": loadavg(), "store": store_info(att, root), "redis_url": a.redis_url,
           "duration_s": a.duration, "warmup_s": a.warmup, "max_requests": a.max_requests,
           "requests": {"passages": len(texts), "window_tokens": a.window, "granularity": a.granularity,
                        "top_k": a.top_k, "mean_tokens": statistics.mean(len(att.tokenizer.tokenize(t))
                                                                         for t in texts)},
           "settings": {"torch_threads": a.threads, "readout_block": block,
                        "text_readout_block": int(extra.get("text_readout_block", 4)), **extra}, "rows": [], "ab": [],
           "profile": []}
    s = res["store"]
    docs = a.granularity != "sources" or att.source_rows is None
    rows = [b.shape[0] for b in (att.basis if docs else att.source_rows)]
    res["flops"] = {"readout": readout_flops(att.spec, rows, s["documents"], s["sources"], docs=docs),
                    "trak": trak_flops(att.spec, s["params"], a.trak_k, s["documents"], s["sources"])}
    log(f"store {s['version']}: {s['params']:,} parameters, {s['tangents_per_query']} tangents per query, "
        f"{s['documents']} documents, {s['sources']} sources; {len(texts)} passages; readout "
        f"{res['flops']['readout']['total'] / 1e9:.2f} GFLOP per query row")
    slog = CACHE / "load-text-service.log"
    if "matrix" in parts:
        on = [v.strip() == "on" for v in a.batching.split(",")]
        res["rows"] = load.run_matrix(root, [{"batching": b, "cache": False} for b in on], conc, qprs, a.duration,
                                      a.max_requests, log, a.redis_url, extra, a.granularity, a.threads,
                                      make_bodies=make, store_kind="text", warmup_s=a.warmup, service_log=slog)
    if "ab" in parts:
        res["ab"] = load.run_ab(root, a.ab_rounds, a.duration, log, a.redis_url, a.threads, qprs, conc,
                                a.ab_variants, make_bodies=make, store_kind="text", granularity=a.granularity,
                                warmup_s=a.warmup, service_log=slog)
    if "profile" in parts:
        raw = CACHE / f"load-profile-text-{a.granularity}.txt"
        prof = load.run_profile(root, a.profile_seconds, log, a.redis_url, a.threads, granularity=a.granularity,
                                make_bodies=make, store_kind="text", raw=raw, service_log=slog, extra=extra)
        if raw.exists() and "error" not in prof:
            prof["readout_split"] = readout_split(raw)
        res["profile"] = [prof]
    if "gemm" in parts:
        res["gemm"] = gemm_rates(att.spec, a.threads, block)
    if "trak" in parts:
        log(f"TRAK: document gradients, projector (k = {a.trak_k}) and features...")
        setup = trak_setup(att, a.trak_k, a.threads, a.trak_docs)
        res["trak_precompute"] = {**setup["precompute"], "docs": setup["docs"], "k": a.trak_k}
        res["in_process"] = in_process(att, texts, setup, a.trak_queries, a.trak_batch,
                                       res["settings"]["text_readout_block"], a.threads, docs)
        del setup
        ip = res["in_process"]
        log(f"in process: TRAK {ip['trak_qps']:.2f} q/s one at a time, {ip['trak_batched_qps']:.2f} q/s "
            f"{a.trak_batch} at a time; readout {ip['ours_row_qps']:.2f} q/s on one row, "
            + (f"{ip['ours_block_qps']:.2f} q/s in blocks of {ip['readout_block']}" if ip["ours_block_qps"]
               else "no full block"))
    res["load_end"] = loadavg()
    prev = RESULTS / a.out
    if a.merge and prev.exists():
        old = json.loads(prev.read_text())
        for k in ("rows", "ab", "profile"):
            res[k] = old.get(k, []) + res[k]
        for k in ("gemm", "trak_precompute", "in_process"):
            if k not in res and k in old:
                res[k] = old[k]
        keys = ("command", "machine", "load_start", "load_end", "settings", "duration_s", "parts")
        res["runs"] = old.get("runs") or [{k: old.get(k) for k in keys}]
    res["parts"] = sorted(parts)
    res.setdefault("runs", []).append({**{k: res.get(k) for k in ("command", "machine", "load_start", "load_end",
                                                                  "settings", "duration_s", "parts")},
                                       "store_version": res["store"]["version"]})
    path = write_json(a.out, res)
    log(f"wrote {path}")
    if a.write_md:
        from bench.serving import load_text_report

        load_text_report.main(["--json", str(path)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
