"""``python -m bench.sources.lm_quality``: publisher-level (genre) quality of
ours, TRAK and the gradient dot product on the language model, scored on
the very retraining truth of the store's audit.

The store (default ``stores/brown-genre``: the ``brown`` preset at the genre
level, one response row per genre) must carry a text-store audit with its
retrained outputs (``worker.audit_text``: ``outputs``): random genre subsets,
every genre left out once, the full data, on held-out windows drawn with the
audit's ``queries`` and ``query_seed``. Each method gives per-source scores
``τ (m, S)`` for those windows from the store's own model (member 0):

- **ours**: ``TextAttributor.score`` (forward tangents of the stored genre rows);
- **TRAK**: traker's projector (k = ``--k``) and score computer on the
  per-document gradients of the 450 training documents, query gradients
  projected the same way, the per-document scores summed per genre; λ = r ×
  the mean eigenvalue of ΦᵀΦ for each r in ``--trak-rel``, the best reported
  (chosen on this truth: in TRAK's favour) beside every one;
- **grad-dot**: query gradient · document gradient, summed per genre.

Metrics (``influence.audit``): source LDS over the subsets, leave-one-
source-out Pearson / Spearman and top-1 agreement. Writes
``bench/results/lm_source_quality.json`` (records: ``method``, ``models``,
``source_lds``, ``loso_pearson``, ``loso_spearman``, ``top1_agree``) and, with
``--write-md``, the BENCHMARKS.md section "Source quality: language model".
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.harness.common import ROOT, loadavg, machine, write_json
from bench.harness.trak import lam_grid, projector, trak_features, trak_member_scores
from bench.lm.baselines import doc_block_tensor, doc_gradients
from influence.audit import loso, source_lds
from influence.datasets.brown import brown_corpus
from influence.gpt.model import GPT
from influence.store import open_store
from influence.text.attributor import TextAttributor
from influence.text.lm_math import query_grads

OUT = "lm_source_quality.json"


def truth(audit: dict) -> dict:
    """The audit's retrained outputs as arrays, and the true effects."""
    o = audit.get("outputs")
    if not o:
        raise SystemExit("the store's audit keeps no retrained outputs: rerun `fa-worker audit` on it")
    full, subset, lo = (np.asarray(o[k], dtype=np.float64) for k in ("full", "subset", "loso"))
    return {"keep": np.asarray(o["keep"], dtype=bool), "loso_index": np.asarray(o["loso_index"], dtype=np.int64),
            "subset": subset.mean(1), "effect": (full[None] - lo).mean(1)}


def scores(tau: np.ndarray, t: dict) -> dict:
    return {"source_lds": source_lds(tau, t["keep"], t["subset"])[0], **loso(tau[:, t["loso_index"]], t["effect"])}


def methods(att: TextAttributor, x: torch.Tensor, k: int, rels: list[float], log) -> dict[str, np.ndarray]:
    """Per-source scores ``(m, S)`` of every method on windows ``x (m, 65)``."""
    out = {"ours": att.window_sources(x)}
    c = brown_corpus()
    model = GPT(att.spec, seed=None)
    params = att.params[0]
    model.load_state_dict(params)
    A = att.membership
    t0 = time.perf_counter()
    G = doc_gradients(model, doc_block_tensor(c.blocks, c.block_document, len(c.train_tokens)))  # (n, p)
    Q = torch.cat([query_grads(model, params, x[i:i + 16]) for i in range(0, len(x), 16)])  # (m, p)
    log(f"document and query gradients: {time.perf_counter() - t0:.0f} s")
    out["grad-dot"] = (Q @ G.T) @ A
    proj = projector(G.shape[1], k, member=0)
    phi = trak_features(G / 64.0, proj, 0)  # traker's output for a document: (1/64) x its summed log-prob
    phi_q = trak_features(Q, proj, 0)
    for r, lam in zip(rels, lam_grid([phi], rels), strict=True):
        out[f"TRAK r={r:g}"] = trak_member_scores(phi, phi_q, lam) @ A
    return {name: v.double().numpy() for name, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sources.lm_quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, default=ROOT / "stores" / "brown-genre")
    ap.add_argument("--k", type=int, default=2048, help="TRAK's projection dimension")
    ap.add_argument("--trak-rel", default="0.01,0.1,1,10", help="TRAK's λ / mean eigenvalue of ΦᵀΦ, comma separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write-md", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    st = open_store(a.store)
    audit = st.audit
    if audit is None or audit.get("store_kind") != "gpt":
        raise SystemExit(f"{a.store}: needs a text-store audit (fa-worker audit --store {a.store} ...)")
    t = truth(audit)
    s = audit["settings"]
    x, _, _ = brown_corpus().queries(s["queries"], seed=s["query_seed"])
    att = TextAttributor(st, "cpu")
    taus = methods(att, x, a.k, [float(r) for r in a.trak_rel.split(",")], log)
    records = [{"method": name, "models": 1, **scores(tau, t)} for name, tau in taus.items()]
    ours = records[0]
    check = max(abs(ours[k] - audit["metrics"][k]) for k in ("source_lds", "loso_pearson", "loso_spearman",
                                                             "top1_agree"))
    trak = [r for r in records if r["method"].startswith("TRAK")]
    best = max(trak, key=lambda r: -math.inf if math.isnan(r["loso_pearson"]) else r["loso_pearson"])
    records.append({**best, "method": f"TRAK best ({best['method'][5:]})"})
    res = {"command": "python -m bench.sources.lm_quality " + shlex.join(argv if argv is not None else sys.argv[1:]),
           "machine": machine(), "load": loadavg(), "store": str(a.store.resolve().relative_to(ROOT))
           if a.store.resolve().is_relative_to(ROOT) else str(a.store), "store_version": st.manifest.version,
           "audit_created_at": audit["created_at"], "trak_k": a.k,
           "truth": {"subsets": int(t["keep"].shape[0]), "loso": int(len(t["loso_index"])),
                     "seeds": len(s["member_seeds"]), "queries": int(s["queries"]),
                     "noise": audit["truth"].get("noise"),
                     **{k: audit["truth"][k] for k in ("full_vs_store_output_max_abs", "effect_abs_mean")}},
           "ours_vs_audit_metrics_max_abs": check, "records": records}
    path = write_json(OUT, res)
    for r in records:
        log(f"{r['method']:>20}: source LDS {r['source_lds']:.3f}  LOSO r {r['loso_pearson']:.3f} "
            f"rho {r['loso_spearman']:.3f}  top-1 {r['top1_agree']:.3f}")
    if a.write_md:
        from bench.sources import lm_report

        lm_report.main(["--json", str(path)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
