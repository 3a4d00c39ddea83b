"""Fine-tuning ground truth of the ``brown-ft`` benchmark (``ft-protocol.md``; settings in
:mod:`bench.ft.protocol`, runs, files, claims and resuming in :mod:`bench.harness.truth`): f(q) of the
base itself, then LoRA fine-tunes of the shipped base (``worker.hf_train.finetune``) on all blocks, on
document subsets and on genre subsets. The full members' LoRA parameters are cached too, for the
attributions. One thread per run; several workers may share the plan:

    nohup python -m bench.ft.groundtruth --threads 1 > bench/.cache/ft_gt.log 2>&1 &
    python -m bench.ft.groundtruth --status
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from bench.ft.protocol import BASE_DIR, DEFAULT, RECIPE, SPEC, FTProtocol, blocks, doc_source, outputs, queries
from bench.harness import truth
from bench.harness.common import save_torch


def full_params_path(p: FTProtocol, e: int) -> Path:
    return p.params_dir() / f"full-e{e}.pt"


def finetune_full(p: FTProtocol, e: int, threads: int = 1):
    """Member ``e``'s fine-tune (model, LoRA params, stats); the params cached."""
    from worker.hf_train import finetune

    model, params, stats = finetune(BASE_DIR, SPEC, blocks()[0], None, p.full_seed(e), RECIPE, threads=threads)
    save_torch(params, full_params_path(p, e))
    return model, params, stats


def run_one(p: FTProtocol, kind: str, index: int, seed: int, threads: int = 1) -> float:
    """Fine-tune one run, evaluate f(q), write its file; returns its fine-tuning seconds."""
    from influence.hf.loader import load_model
    from influence.hf.model import HFCausalLM, context_of
    from worker.hf_train import finetune

    x, mask = queries(p)
    t0 = time.perf_counter()
    path = truth.run_path(p, kind, index, seed)
    if kind == "base":
        base = load_model(BASE_DIR)
        out = outputs(HFCausalLM(base, context_of(base.config)), x, mask)
        truth.save(path, outputs=out, seconds=np.float64(0.0), wall=np.float64(time.perf_counter() - t0))
        return 0.0
    keep, subset = p.subset(kind, index, blocks()[1].numpy(), doc_source("genre"))
    if kind == "full":
        model, _, stats = finetune_full(p, index, threads)
    else:
        model, _, stats = finetune(BASE_DIR, SPEC, blocks()[0], keep, seed, RECIPE, threads=threads)
    out = outputs(model, x, mask)
    truth.save(path, outputs=out, seconds=np.float64(stats["seconds"]), wall=np.float64(time.perf_counter() - t0),
               subset=subset, seed=np.int64(seed), final_loss=np.float64(stats["final_loss"]),
               n_blocks=np.int64(stats["n_blocks"]))
    return float(stats["seconds"])


if __name__ == "__main__":
    sys.exit(truth.main(DEFAULT, run_one, __doc__))
