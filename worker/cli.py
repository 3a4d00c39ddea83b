"""``python -m worker`` / ``fa-worker``: build a store, score queries offline,
audit a store against retraining, inspect a store. Errors print one line
naming the file and problem, exit 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from influence import registry
from influence.attributor import top_k
from influence.datasets.vectors import load_query_file
from influence.errors import InfluenceError
from influence.mlp.attributor import VectorAttributor
from influence.store import current_version, list_versions, open_store

from .config import PRESETS, ConfigError, load_config
from .score_out import write_scores


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fa-worker", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="train, simulate responses, publish a store version")
    _config_args(b)
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.add_argument("--if-missing", action="store_true",
                   help="do nothing when the store root already has a published version (first runs)")
    b.add_argument("--audit", action="store_true", help="then run `audit` with its defaults (a text store: "
                   "(1 + subsets + loso) x seeds language models retrained)")
    b.add_argument("--dry-run", action="store_true", help="print the plan (`fa-worker plan`) and exit: nothing "
                   "is trained or written")
    pl = sub.add_parser("plan", help="what an hf build will cost (time per stage, peak memory, store size), "
                        "from the model and corpus sizes and a short measurement on this machine; builds nothing")
    _config_args(pl)
    pl.add_argument("--json", action="store_true", help="a machine-readable dict instead of the table")
    s = sub.add_parser("score", help="score a query file against a store (forward-only)")
    s.add_argument("--store", type=Path, required=True)
    s.add_argument("--version", help="store version (default: current)")
    s.add_argument("--queries", type=Path, required=True,
                   help=".npz (X, optional y), .csv or .parquet; text stores: .jsonl of {\"text\"} or "
                        "{\"prompt\", \"completion\"} (optional \"pretokenized\": true)")
    s.add_argument("--out", type=Path, required=True, help="output directory")
    s.add_argument("--output", default="margin", choices=["margin", "loss", "logprob"])
    s.add_argument("--top-k", type=int, default=5)
    s.add_argument("--format", default="npy", choices=["npy", "csv", "parquet"],
                   help="besides sources.npy, examples.npy and columns.json (the ids of their columns): "
                        "csv or parquet tables, one row per query, one column per source / document id")
    s.add_argument("--device", default=None, help="cpu or cuda (default: best available)")
    s.add_argument("--per-token", action="store_true", help="text stores: also every scored token's scores, "
                   "per_token.safetensors (rows: tokens; columns: sources, documents) and per_token.json (column "
                   "ids, each query's rows, pieces and character spans)")
    i = sub.add_parser("info", help="show a store's versions and current manifest")
    i.add_argument("--store", type=Path, required=True)
    _audit_parser(sub)
    return p


def _config_args(b) -> None:
    """The arguments that make a build's config (``build`` and ``plan``)."""
    b.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="default: digits, or hf when --model is given")
    b.add_argument("--model", type=Path, help="a Hugging Face causal LM's local directory (model.path; kind hf)")
    b.add_argument("--device", help="cpu, cuda[:N] or auto: where training and simulation run, every model kind "
                   "(train.device; default auto: CUDA when present)")
    b.add_argument("--config", type=Path, help="TOML or YAML file overlaid on the preset")
    b.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    b.add_argument("--store", type=Path, help="store root (store.root)")
    b.add_argument("--data", type=Path, help="training data (data.path): vector stores .npz/.csv/.parquet; text "
                   "stores (--model, or a preset of kind gpt) .jsonl, one {\"text\", \"source\", optional \"id\"} "
                   "a line, or a datasets table with those columns (.parquet, .arrow, a save_to_disk directory)")
    b.add_argument("--seed", type=int, help="train.seed")
    b.add_argument("--ensemble", type=int, help="method.ensemble")
    b.add_argument("--allow-empty-sources", action="store_true",
                   help="publish even when a source has no training signal (data.allow_empty_sources)")


def _audit_parser(sub) -> None:
    from .audit import AuditSettings

    d = AuditSettings()
    a = sub.add_parser("audit", help="retrain on source subsets with the store's recipe; publish the current "
                                     "version plus audit.json (MLP stores holding their training data or "
                                     "built on digits; gpt and hf stores, from the corpus file they were "
                                     "built from)")
    a.add_argument("--store", type=Path, required=True)
    a.add_argument("--subsets", type=int, default=d.subsets, help=f"random source subsets (default {d.subsets})")
    a.add_argument("--seeds", type=int, default=d.seeds, help=f"seeds per retrained model (default {d.seeds})")
    a.add_argument("--queries", type=int, default=d.queries, help=f"held-out queries (default {d.queries})")
    a.add_argument("--loso-sources", dest="loso", type=int, default=d.loso,
                   help=f"leave-one-out on up to this many largest sources (default {d.loso})")
    a.add_argument("--keep-prob", type=float, default=d.keep_prob, help="probability a subset keeps a source")
    a.add_argument("--min-keep", type=int, default=d.min_keep, help="sources a subset keeps at least")
    a.add_argument("--selection-seed", type=int, default=d.selection_seed)
    a.add_argument("--query-seed", type=int, default=d.query_seed)
    a.add_argument("--matched", action="store_true",
                   help="also the order-matched truth (the full run's minibatches, removed slots skipped)")
    a.add_argument("--threads", type=int, default=d.threads, help="torch threads while retraining")
    a.add_argument("--query-file", type=Path, help="held-out queries: MLP stores labelled .npz/.csv/.parquet "
                   "(default: the digits test split for digits stores); hf stores .jsonl of {\"text\"} lines "
                   "(needed when built from a JSONL file; default for brown-ft: its held-out windows); gpt "
                   "stores use their corpus's held-out windows")
    a.add_argument("--keep", type=int, default=3, help="versions to keep after publishing (>= 2)")
    a.add_argument("--quiet", action="store_true")


def _config(a):
    over = list(a.overrides)
    flags = ((a.store, "store.root"), (a.data, "data.path"), (a.seed, "train.seed"), (a.ensemble, "method.ensemble"),
             (a.model, "model.path"), (a.device, "train.device"))
    for flag, key in flags:
        if flag is not None:
            over.append(f"{key}={json.dumps(str(flag)) if isinstance(flag, Path) else flag}")
    if a.allow_empty_sources:
        over.append("data.allow_empty_sources=true")
    return load_config(a.preset or ("hf" if a.model is not None else "digits"), a.config, over)


def _plan(a) -> None:
    from .plan import plan_hf, render

    plan = plan_hf(_config(a))
    print(json.dumps(plan, indent=1) if getattr(a, "json", False) else render(plan))


def _build(a) -> None:
    if a.dry_run:
        return _plan(a)
    cfg = _config(a)
    if a.if_missing and (cfg.store.root / "CURRENT").is_file():
        print(f"store {cfg.store.root} already has {current_version(cfg.store.root)}; nothing to build (--if-missing)")
        return
    from .pipeline import build

    path = build(cfg, progress=not a.quiet)
    if path is not None:  # rank 0 of a distributed run, or a plain run
        print(f"published {path.name} at {path}")
        if a.audit:
            from .audit import AuditSettings, run_audit

            _report(*run_audit(cfg.store.root, AuditSettings(), keep=max(2, cfg.store.keep),
                               log=_log(a.quiet)))


def _log(quiet: bool):
    return (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))


def _report(path: Path, audit: dict) -> None:
    m = audit["metrics"]

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    print(f"audited {audit['audited_version']}: source LDS {f(m['source_lds'])}, LOSO pearson "
          f"{f(m['loso_pearson'])} spearman {f(m['loso_spearman'])}, top-1 {f(m['top1_agree'])}, what-if "
          f"pearson {f(m['whatif_loso']['pearson'])} MAE {f(m['whatif_loso']['mae'])} "
          f"({audit['settings']['models_trained']} models, {audit['durations_s']['total']:.0f}s)")
    print(f"published {path.name} at {path} (with audit.json)")


def _audit(a) -> None:
    from .audit import AuditSettings, run_audit

    s = AuditSettings(subsets=a.subsets, seeds=a.seeds, queries=a.queries, loso=a.loso, keep_prob=a.keep_prob,
                      min_keep=a.min_keep, selection_seed=a.selection_seed, query_seed=a.query_seed,
                      matched=a.matched, threads=a.threads)
    _report(*run_audit(a.store, s, a.query_file, a.keep, _log(a.quiet)))


def _score(a) -> None:
    store = open_store(a.store, a.version)
    if registry.of(store.manifest.model).text:
        from .score_text import score_text

        print(score_text(store, a.queries, a.out, a.top_k, a.device, a.format, a.per_token))
        return
    if a.per_token:
        raise ConfigError(f"--per-token is for text stores: {a.store} holds a "
                          f"{store.manifest.model.kind} model, whose queries have no tokens")
    att = VectorAttributor(store, a.device)
    man = store.manifest
    X, y = load_query_file(a.queries, man.model.in_dim, man.classes)
    sc = att.score(torch.from_numpy(X), None if y is None else torch.from_numpy(y), a.output)
    written = write_scores(a.out, sc.examples.cpu().numpy(), sc.sources.cpu().numpy(),
                           list(range(len(man.example_source))), man.source_ids, a.format)
    sv, si = top_k(sc.sources, a.top_k)
    ev, ei = top_k(sc.examples, a.top_k)
    lines = [f"store {a.store} version {store.version}; output {a.output}; {len(X)} queries"]
    for q in range(len(X)):
        srcs = ", ".join(f"{man.source_ids[j]} {v:+.4g}" for v, j in zip(sv[q].tolist(), si[q].tolist()))
        exs = ", ".join(f"#{j} {v:+.4g}" for v, j in zip(ev[q].tolist(), ei[q].tolist()))
        lines += [f"query {q}: predicted {man.classes[sc.pred[q]]}, target {man.classes[sc.target[q]]}",
                  f"  sources:  {srcs}", f"  examples: {exs}"]
    (a.out / "summary.txt").write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}/: {', '.join(written)}, summary.txt")


def _info(a) -> None:
    cur = current_version(a.store)
    store = open_store(a.store)
    man, audit = store.manifest, store.audit
    print(json.dumps({"current": cur, "versions": list_versions(a.store), "model": man.model.model_dump(),
                      "members": man.members, "n_examples": len(man.example_source),
                      "n_sources": len(man.source_ids), "dtype": man.dtype, "method": man.method,
                      "coverage": man.data.get("coverage"),
                      "audit": None if audit is None else {k: audit.get(k) for k in
                                                           ("audited_version", "created_at", "metrics")}},
                     indent=1))


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        {"build": _build, "plan": _plan, "score": _score, "info": _info, "audit": _audit}[a.cmd](a)
    except (InfluenceError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
