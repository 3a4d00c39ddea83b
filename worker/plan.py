"""``fa-worker plan`` / ``fa-worker build --dry-run``: what an ``hf`` build
will cost, stated before it starts (issue 24 row 4).

From the config it reads the corpus and cuts it into blocks exactly as the
build does (``influence.datasets.finetune``: the same counts,
the same errors), loads the base and wraps it as the build does
(``influence.hf.model.wrap``: P all parameters, p trained) and, without
training, times one unit of each stage on this machine and device:

- fine-tune: AdamW steps on a batch of ``train.batch_size`` blocks
  (``lm_loss`` + backward + step; the mean of ``PROBE_STEPS`` after a few
  untimed ones), × ``epochs × ⌈N / batch⌉`` steps, plus the base's load;
- document gradients (``lm_math.doc_grads``) on a few blocks, × N blocks;
- the curvature basis: one Gauss-Newton product (``lm_math.LMGaussNewton``)
  of a few columns on a few blocks, per column-block, × ``(power + 1) × rank``
  columns (``p`` columns once when ``rank ≥ p``: the exact basis) × C
  curvature blocks (``nystrom``);
- responses: the spectral filter (``g V``, ``· V ᵀ``) and the quantisation
  round trip on a few rows, × n documents;

each × ``method.ensemble`` members. The other probes run once untimed
(first-call allocations), then ``PROBE_REPEATS`` times, the fastest kept. An
estimate from a short measurement: a busy host or a different batch shape
moves it (the plan records the host's load and torch's threads).

Memory (bytes): the probes' measured peak (process RSS on the CPU,
``torch.cuda.max_memory_allocated`` on CUDA: the model, its optimizer state,
one probe's activations, the libraries) + ``3 × n × p × 4`` (the document
gradients G, the responses U, and the dequantised or flattened copy the
held-out check and the publish make) + ``6 × p × k × 4`` (the basis and its
float64 working copies) + on the CPU, ``(k − PROBE_COLUMNS) × 8 × (L − 1) ×
V × 4``: glibc's malloc keeps about one logits tangent of the Gauss-Newton
pass (8 blocks × L − 1 inputs × V vocabulary floats) per column of a
product, so the process's RSS grows with the rank (brown-ft, one product of
128 columns on 8 blocks: +1.31 GB RSS, +0.29 GB with
``MALLOC_MMAP_THRESHOLD_=1048576``). Store on disk: ``responses.safetensors``
(n rows of ``⌈p / group⌉ × group × bits / 8`` code bytes and ``⌈p / group⌉``
bfloat16 scales each, or ``n × p × dtype`` unquantised, + ``S × p × dtype`` per-source
rows when ``store.source_rows`` keeps them), ``params.safetensors`` (p × 4
per member), the base when copied, the tokenizer and the documents' metadata
(exact). Served: ``P × 4 + (n + S) × p × 4`` (rows are expanded to float32).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import resource
import time
from pathlib import Path

import torch

from influence import heldout, registry
from influence.datasets.finetune import CHECK_WINDOWS, FinetuneCorpus
from influence.hf.loader import check_dir, load_model, load_tokenizer, weight_files
from influence.hf.model import DTYPES, context_of, with_layout, wrap
from influence.quant import dequantize, quantize
from influence.text.causal import PAD, lm_loss
from influence.text.lm_math import LMGaussNewton, doc_grads

from .config import ConfigError, WorkerConfig
from .device import device_of
from .hf_pipeline import COPY_BASE_MB, _tokenizer_assets, _trained_summary, cut_corpus
from .lm_pipeline import PROBES, wants_source_rows

PROBE_REPEATS = 2  # the gradient, curvature and response probes: timed this many times, the fastest kept
PROBE_STEPS = (3, 5)  # fine-tune steps untimed (the first steps run slow), then timed: their mean
PROBE_BLOCKS = 8  # blocks of the gradient and Gauss-Newton probes
PROBE_COLUMNS = 16  # directions of the Gauss-Newton probe (two of LMGaussNewton's dir_chunk)
PROBE_ROWS = 64  # rows of the responses probe
GN_CHUNK = inspect.signature(LMGaussNewton).parameters["chunk"].default  # blocks per Gauss-Newton pass
STORE_ITEM = {"float32": 4, "bfloat16": 2, "float16": 2}  # bytes per stored float (store.dtype)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(dev: torch.device, fn, reps: int = PROBE_REPEATS) -> float:
    """The fastest of ``reps`` runs of ``fn`` (s): the least disturbed by other work on a shared host."""
    best = math.inf
    for _ in range(reps):
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        best = min(best, time.perf_counter() - t0)
    return best


def _corpus(cfg: WorkerConfig, tok, context: int) -> tuple[dict, FinetuneCorpus, list[str]]:
    """``(corpus summary, the corpus, warnings)``, cut as the build cuts it (``influence.datasets.finetune``)."""
    d, warn = cfg.data, []
    c = cut_corpus(cfg, tok, context)
    blocks = c.blocks
    head = {"name": c.name, "documents": len(c.doc_ids), "sources": len(c.source_ids), "blocks": int(blocks.shape[0]),
            "block_tokens": int(c.block_tokens or blocks.shape[1]), "target_tokens": int((blocks[:, 1:] != PAD).sum())}
    if c.coverage is None:  # brown-ft: every document trains, every block is full
        return ({**head, "documents_trained": len(set(c.block_doc.tolist())),
                 "padded_blocks": int((blocks[:, -1] == PAD).sum()), "tokens_cut": 0, "left_out": [],
                 "empty_sources": []}, c, warn)
    cov = c.coverage.as_dict()
    if cov["empty_sources"] and not d.allow_empty_sources:
        warn.append(f"the build would stop: {len(cov['empty_sources'])} source(s) without training signal "
                    f"({', '.join(cov['empty_sources'][:5])}); fix them or pass --allow-empty-sources")
    keys = ("documents_trained", "padded_blocks", "tokens_cut", "left_out", "empty_sources")
    return {**head, **{k: cov[k] for k in keys}}, c, warn


def _probe(cfg: WorkerConfig, model, blocks: torch.Tensor, n: int, k: int, dev: torch.device) -> dict:
    """Seconds per unit of each stage, measured on ``blocks (N, L)`` on ``dev``."""
    tr, gen = cfg.train, torch.Generator().manual_seed(cfg.train.seed)
    blocks = blocks.to(dev)
    pick = lambda m: blocks[torch.randperm(blocks.shape[0], generator=gen)[:m].to(dev)]  # noqa: E731
    trained = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(trained, lr=tr.lr, betas=tuple(tr.betas), eps=tr.eps, weight_decay=tr.weight_decay)
    batch = pick(tr.batch_size)

    def step():
        loss = lm_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(PROBE_STEPS[0]):
        step()
    step_s = _timed(dev, lambda: [step() for _ in range(PROBE_STEPS[1])], reps=1) / PROBE_STEPS[1]
    params = model.trained()
    p = sum(v.numel() for v in params.values())
    g_blocks = pick(PROBE_BLOCKS)
    doc_grads(model, params, g_blocks[:1], torch.zeros(1, dtype=torch.long, device=dev), 1)  # warm-up
    grad_s = _timed(dev, lambda: doc_grads(model, params, g_blocks, torch.zeros(len(g_blocks), dtype=torch.long,
                                                                                   device=dev), 1)) / len(g_blocks)
    U = torch.randn(PROBE_COLUMNS, p, generator=gen).to(dev, next(iter(params.values())).dtype)
    LMGaussNewton(model, params, g_blocks[:1])(U[:1])  # warm-up
    gn_s = _timed(dev, lambda: LMGaussNewton(model, params, g_blocks)(U)) / (PROBE_COLUMNS * len(g_blocks))
    rows = min(n, PROBE_ROWS)
    G = torch.randn(rows, p, generator=gen).to(dev)
    V = (torch.randn(p, k, generator=gen) / math.sqrt(p)).to(dev)
    q = cfg.quant()

    def respond():
        u = ((G @ V) * 0.5) @ V.T + G
        if q is not None:
            dequantize(quantize(u.cpu(), q["bits"], q["group"]))

    resp_s = _timed(dev, respond) / rows
    return {"step_s": step_s, "grad_block_s": grad_s, "gn_column_block_s": gn_s, "response_row_s": resp_s}


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _store_bytes(cfg: WorkerConfig, n: int, S: int, p: int, members: int, base: Path, assets: int) -> dict:
    st, m = cfg.store, cfg.method
    item = STORE_ITEM[st.dtype]
    rows = min(m.compress_rank, n) if m.compress_rank else n  # stored example rows (a rank-r basis when compressed)
    if st.quant_bits:
        groups = -(-p // st.quant_group)
        examples = rows * (groups * st.quant_group * st.quant_bits // 8 + groups * 2)
    else:
        examples = rows * p * item
    coef = n * rows * 4 if m.compress_rank else 0
    src_rows = wants_source_rows(st.source_rows, S, rows)
    sources = S * p * item if src_rows else 0
    base_b = 0
    if cfg.model.base == "store":
        files = [base / "config.json", *weight_files(base)] + (
            [base / "generation_config.json"] if (base / "generation_config.json").is_file() else [])
        base_b = sum(f.stat().st_size for f in files)
    out = {"responses": members * (examples + coef + sources), "source_rows_kept": src_rows,
           "params": members * p * 4, "base": base_b, "assets": assets}
    out["total"] = out["responses"] + out["params"] + base_b + assets
    return out


def plan_hf(cfg: WorkerConfig) -> dict:
    """The plan of ``cfg``'s build: counts, measured unit times, stage estimates, memory and store bytes."""
    from transformers import AutoConfig

    if not registry.of(cfg.model).needs_path:
        raise ConfigError(f"plan: estimates Hugging Face builds (--model DIR, or --preset brown-ft); this config's "
                          f"model.kind is {cfg.model.kind!r}")
    spec, m, tr = cfg.model, cfg.method, cfg.train
    t_all = time.perf_counter()
    base = check_dir(spec.path)
    tok = load_tokenizer(base)
    hf_cfg = AutoConfig.from_pretrained(str(base), local_files_only=True)
    corpus, c, warn = _corpus(cfg, tok, context_of(hf_cfg))
    dev = device_of(cfg)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    raw = load_model(base, DTYPES[spec.dtype])
    P = sum(v.numel() for v in raw.parameters())
    model = wrap(raw.to(dev), spec, seed=tr.seed)
    load_s = time.perf_counter() - t0
    final = with_layout(spec, model)
    p, n, S, N = final.layout().numel, corpus["documents"], corpus["sources"], corpus["blocks"]
    k = min(m.rank, p)
    unit = _probe(cfg, model, c.blocks, n, k, dev)
    steps = tr.epochs * -(-N // tr.batch_size)
    C = min(m.curvature_subset or N, N)
    cols = p if m.rank >= p else (m.power + 1) * m.rank
    extra_grads = (PROBES if m.compress_rank else 0) + (CHECK_WINDOWS if c.heldout is not None else 0)
    members = m.ensemble
    per = {"fine_tune": load_s + steps * unit["step_s"], "gradients": (N + extra_grads) * unit["grad_block_s"],
           "basis": cols * C * unit["gn_column_block_s"], "responses": n * unit["response_row_s"]}
    times = {key: members * v for key, v in per.items()}
    times["total"] = sum(times.values())
    assets = len(json.dumps(c.documents(), ensure_ascii=False).encode()) + sum(
        len(b) for b in {**_tokenizer_assets(tok), **heldout.asset(c.heldout_sample)}.values())
    store = _store_bytes(cfg, n, S, p, members, base, assets)
    if spec.base == "store" and store["base"] > COPY_BASE_MB * 2**20:
        warn.append(f"the build would stop: the base is {store['base'] / 2**20:.0f} MB, more than {COPY_BASE_MB} MB "
                    "to copy into the store; set model.base=path")
    probe_peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else _rss_bytes()
    item = DTYPES[spec.dtype].itemsize
    vocab = int(getattr(hf_cfg, "vocab_size", None) or len(tok))
    retained = 0 if dev.type == "cuda" else max(0, min(m.rank, p) - PROBE_COLUMNS) * GN_CHUNK * (
        corpus["block_tokens"] - 1) * vocab * 4
    mem = {"weights": (P + (p if spec.trained == "lora" else 0)) * item, "optimizer": 3 * p * 4,
           "matrices": 3 * n * p * 4, "basis": 6 * p * k * 4, "allocator": retained, "probe_peak": probe_peak}
    mem["peak"] = probe_peak + mem["matrices"] + mem["basis"] + retained
    mem["served"] = P * 4 + (n + (S if store["source_rows_kept"] else 0)) * p * 4
    return {
        "kind": "hf", "preset": cfg.preset, "device": str(dev), "members": members,
        "host": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                 "load_1min": round(os.getloadavg()[0], 2)},
        "corpus": corpus,
        "model": {"path": str(base), "architecture": (hf_cfg.architectures or ["?"])[0], "P": P, "p": p,
                  "dtype": spec.dtype, "trained": _trained_summary(final).removeprefix("trained: ")},
        "counts": {"fine_tune_steps": steps, "gradient_blocks": N + extra_grads, "curvature_blocks": C,
                   "basis_columns": cols, "response_rows": n,
                   "store_rows": {"documents": n, "sources": S if store["source_rows_kept"] else 0}},
        "measured": {"load_s": load_s, **unit, "probe_blocks": PROBE_BLOCKS, "probe_columns": PROBE_COLUMNS,
                     "probe_repeats": PROBE_REPEATS, "probe_steps": list(PROBE_STEPS),
                     "plan_s": time.perf_counter() - t_all},
        "time_s": times,
        "formulas": {
            "fine_tune": "members x (load + epochs x ceil(blocks / batch) x step)",
            "gradients": "members x (blocks + probe/held-out blocks) x gradient per block",
            "basis": "members x (power + 1) x rank columns (p once when rank >= p) x curvature blocks x "
                     "Gauss-Newton product per column-block",
            "responses": "members x documents x filter + quantisation per row",
            "peak_memory": "probe peak (model, optimizer, activations, libraries) + 3 x n x p x 4 + 6 x p x k x 4 "
                           "[+ CPU: (rank - probe columns) x 8 blocks x block inputs x vocab x 4, what glibc keeps]",
            "store": "n x ceil(p/group) x (group x bits/8 + 2) [+ S x p x 4 source rows] + p x 4 params + base + "
                     "tokenizer and documents",
            "served": "P x 4 + (n [+ S]) x p x 4"},
        "memory_bytes": mem, "store_bytes": store, "warnings": warn,
        "note": "an estimate from a short measurement on this machine: a busy host, first-call warm-up or "
                "another device moves it",
    }


def _mb(b: float) -> str:
    return f"{b / 1e3:,.1f} kB" if b < 1e6 else f"{b / 1e6:,.1f} MB" if b < 1e9 else f"{b / 1e9:,.2f} GB"


def _dur(s: float) -> str:
    return f"{s:.1f} s" if s < 90 else f"{s / 60:.1f} min" if s < 5400 else f"{s / 3600:.1f} h"


def render(plan: dict) -> str:
    """The plan as a readable table (what ``fa-worker plan`` prints)."""
    c, md, k, u, t = plan["corpus"], plan["model"], plan["counts"], plan["measured"], plan["time_s"]
    mem, st = plan["memory_bytes"], plan["store_bytes"]
    left = ", ".join(d["id"] for d in c["left_out"][:5])
    extra = (f", {c['tokens_cut']:,} tokens cut by data.max_blocks" if c["tokens_cut"] else "") + (
        f", {len(c['left_out'])} left out ({left})" if c["left_out"] else "")
    src = f" + {k['store_rows']['sources']} source rows" if st["source_rows_kept"] else ""
    stages = [("fine-tune", f"{k['fine_tune_steps']:,} steps (epochs x blocks / batch) + load", u["step_s"],
               t["fine_tune"]),
              ("gradients", f"{k['gradient_blocks']:,} block gradients", u["grad_block_s"], t["gradients"]),
              ("basis", f"{k['basis_columns']:,} columns x {k['curvature_blocks']} curvature blocks",
               u["gn_column_block_s"], t["basis"]),
              ("responses", f"{k['response_rows']:,} rows filtered and quantised", u["response_row_s"],
               t["responses"])]
    h = plan["host"]
    rows = [
        f"plan for an hf build on {plan['device']} ({plan['members']} member(s)); {plan['note']} (measured with "
        f"{h['torch_threads']} torch threads, host load {h['load_1min']:.1f} on {h['cpus']} CPUs)",
        f"corpus {c['name']}: {c['documents_trained']} of {c['documents']} documents trained, {c['sources']} "
        f"sources, {c['blocks']:,} blocks of up to {c['block_tokens']} tokens ({c['padded_blocks']} padded), "
        f"{c['target_tokens']:,} target tokens{extra}",
        f"model {md['architecture']}: P = {md['P']:,} parameters, p = {md['p']:,} trained ({md['trained']})",
        "",
        f"{'stage':<11} {'count':<48} {'per unit':>11} {'estimate':>10}",
        *(f"{name:<11} {what:<48} {per * 1e3:>8.2f} ms {_dur(est):>10}" for name, what, per, est in stages),
        f"{'total':<11} {'':<48} {'':>11} {_dur(t['total']):>10}",
        "",
        f"peak memory   {_mb(mem['peak'])}: the probes' measured peak {_mb(mem['probe_peak'])} (weights "
        f"{_mb(mem['weights'])}, optimizer {_mb(mem['optimizer'])}, activations, libraries) + n x p matrices "
        f"{_mb(mem['matrices'])} + basis {_mb(mem['basis'])} + allocator {_mb(mem['allocator'])}",
        f"store on disk {_mb(st['total'])}: responses {_mb(st['responses'])} ({k['store_rows']['documents']} "
        f"document rows{src}), params {_mb(st['params'])}, base {_mb(st['base'])}, tokenizer and documents "
        f"{_mb(st['assets'])}",
        f"served        {_mb(mem['served'])} resident (the base + rows expanded to float32)",
    ]
    return "\n".join(rows + [f"warning: {w}" for w in plan["warnings"]])
