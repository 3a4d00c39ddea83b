"""The ``brown-ft`` store as the worker publishes it (issue 21): what it costs
(build time, size, trainable parameters) and what its 3-bit responses lose
against exact float32 rows on the benchmark's ground truth.

- ``store``: ``{store_build_s, store_mb, trainable_params}`` of a store built by
  ``fa-worker build --preset brown-ft`` (its manifest's ``build_s``, the size
  of the version directory, the layout's size), with the responses' bytes
  beside their float32 size;
- ``quantized``: per member, the preset's responses ``U`` (the closed-form
  filter of ``bench.ft.ours`` at the preset's damping and horizon) scored
  exactly (``Q Uᵀ``) and through the store's 3-bit group-wise codes
  (``influence.quant``, ``store.quant_bits`` / ``quant_group``), LDS at the
  three levels on the reported (odd) subsets, 1 model and the ensemble.

Writes the two records into ``bench/results/ft_quality.json`` (kept by
``bench.ft.quality`` reruns) and prints them.

    python -m worker build --preset brown-ft      # first: the store
    python -m bench.ft.store [--store stores/brown-ft] [--members 5]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from bench.ft.ours import member_artefacts, responses
from bench.ft.protocol import DEFAULT, N_GENRES, doc_source
from bench.harness import truth
from bench.harness.common import RESULTS
from bench.harness.metrics import levels as evaluate_one
from influence.quant import dequantize, quantize
from influence.store import open_store
from worker.config import load_config

OUT = RESULTS / "ft_quality.json"


def store_record(root: Path) -> dict:
    st = open_store(root)
    man = st.manifest
    mb = sum(f.stat().st_size for f in st.path.rglob("*") if f.is_file()) / 1e6
    n, p = len(man.example_source), man.model.layout().numel
    return {"store_build_s": man.extra.get("build_s"), "store_mb": round(mb, 2),
            "trainable_params": p, "responses_mb": round((st.path / "responses.safetensors").stat().st_size / 1e6, 2),
            "responses_float32_mb": round(n * p * 4 / 1e6, 2), "version": man.version,
            "method": {k: man.method[k] for k in ("rank", "curvature_subset", "damping", "steps")}}


def quantized_record(members: int, genre_seeds: int = 2) -> dict:
    cfg = load_config("brown-ft")
    m, bits, group = cfg.method, cfg.store.quant_bits, cfg.store.quant_group
    gt = truth.load(DEFAULT, genre_seeds=tuple(2 + s for s in range(genre_seeds)))
    report = gt.split(1)
    exact, coded = [], []
    for e in range(members):
        art = member_artefacts(e)
        U = responses(art, m.damping, m.steps)  # (450, p) float32: the rows the store holds
        Uq = dequantize(quantize(U, bits, group))
        Q = art["Q"].float()
        exact.append((Q @ U.T).double().numpy())
        coded.append((Q @ Uq.T).double().numpy())
    out = {"bits": bits, "group": group, "damping": m.damping, "steps": m.steps}
    genre = doc_source("genre")
    for label, k in (("1", 1), (str(members), members)):
        a = evaluate_one(np.mean(exact[:k], 0), report, genre, N_GENRES)
        b = evaluate_one(np.mean(coded[:k], 0), report, genre, N_GENRES)
        out[f"models_{label}"] = {lvl: {"exact": a[lvl], "quantized": b[lvl], "loss": a[lvl] - b[lvl]} for lvl in a}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=Path("stores/brown-ft"))
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    res = json.loads(OUT.read_text()) if OUT.exists() else {"records": []}
    recs = [r for r in res["records"] if "store_build_s" not in r]
    rec = store_record(a.store)
    recs.append(rec)
    res["records"] = recs
    res["store_quantized"] = quantized_record(a.members)
    OUT.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({"store": rec, "quantized": res["store_quantized"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
