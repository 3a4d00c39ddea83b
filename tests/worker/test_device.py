"""``train.device`` / ``fa-worker build --device`` for every model kind.

On the CPU, ``--device cpu`` builds of the tiny presets (the ``tiny`` MLP,
the tiny GPT text store of ``tests/text_corpus.py`` and a tiny Hugging Face
store as in ``test_hf_pipeline.py``) publish bit for bit what the default
build publishes (on a host without CUDA the default *is* the CPU; with
CUDA the reference is an explicit in-process CPU build).

On a CUDA host (``@pytest.mark.gpu``, skipped elsewhere) a CPU and a CUDA
build of the same three agree within ``TOLERANCE``: the relative Frobenius
norm of the difference, over all trained parameters and over all stored
responses. Both devices start from the same initialisation, minibatch order
and random test matrix (drawn on the CPU); what differs is float32 rounding
in different kernels, carried through training (a few hundred optimizer
steps) and the rank-k eigenbasis.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from worker.cli import main
from worker.config import ConfigError, load_config
from worker.device import resolve_device

from ..hf.conftest import save_tiny_checkpoint
from ..text_corpus import TINY_GPT, write_corpus

HF_FAST = ["method.rank=32", "method.curvature_subset=8", "method.steps=50", "train.epochs=1", "data.max_blocks=2",
           "store.quant_bits=0"]
TOLERANCE = {"mlp": {"params": 1e-3, "responses": 1e-2},
             "gpt": {"params": 1e-2, "responses": 5e-2},
             "hf": {"params": 1e-2, "responses": 5e-2}}
"""CPU vs CUDA, relative Frobenius norm of the difference (all tensors of the file together)."""


def _sets(overrides: list[str]) -> list[str]:
    return [x for o in overrides for x in ("--set", o)]


def build_tiny(tmp: Path, kind: str, device: str | None) -> Path:
    """Build the tiny store of ``kind`` under ``tmp`` through the CLI
    (``--device device``; ``None``: no flag, the default). Returns the root."""
    root = tmp / f"{kind}-{device or 'default'}"
    dev = [] if device is None else ["--device", device]
    if kind == "mlp":
        args = ["--preset", "tiny"]
    else:
        data = write_corpus(tmp / "docs.jsonl")
        if kind == "gpt":  # text quantisation off, so the comparison sees the simulation itself
            args = ["--preset", "brown", "--data", str(data), *_sets([*TINY_GPT, "store.quant_bits=0"])]
        else:
            base = tmp / "hf-base"
            if not base.exists():
                texts = [json.loads(line)["text"] for line in data.read_text().splitlines()]
                save_tiny_checkpoint(base, texts)
            args = ["--model", str(base), "--data", str(data), *_sets(HF_FAST)]
    assert main(["build", *args, *dev, "--store", str(root), "--quiet"]) == 0
    return root


def published(root: Path) -> dict[str, dict[str, torch.Tensor]]:
    vdir = root / "versions" / (root / "CURRENT").read_text().strip()
    return {f.name: load_file(f) for f in sorted(vdir.glob("*.safetensors")) if f.name != "training.safetensors"}


def rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    num = sum(float((a[k].double() - b[k].double()).norm()) ** 2 for k in a)
    den = sum(float(a[k].double().norm()) ** 2 for k in a)
    return (num / max(den, 1e-300)) ** 0.5


@pytest.mark.parametrize("kind", ["mlp", "gpt", "hf"])
def test_cpu_flag_builds_equal_the_default_cpu_build(tmp_path, kind):
    flagged = published(build_tiny(tmp_path, kind, "cpu"))
    ref = published(build_tiny(tmp_path, kind, None if not torch.cuda.is_available() else "cpu"))
    assert flagged.keys() == ref.keys() and "params.safetensors" in flagged
    for name, tensors in ref.items():
        assert tensors.keys() == flagged[name].keys(), name
        for k, v in tensors.items():
            assert torch.equal(v, flagged[name][k]), f"{name}:{k} differs"


def test_device_setting_is_checked():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="train.device"):
        load_config("tiny", overrides=["train.device=tpu"])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda:0")
        assert main(["build", "--preset", "tiny", "--device", "cuda", "--store", "/nonexistent/x", "--quiet"]) == 2


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["mlp", "gpt", "hf"])
def test_cpu_and_cuda_builds_agree(tmp_path, kind):
    cpu = published(build_tiny(tmp_path, kind, "cpu"))
    gpu = published(build_tiny(tmp_path, kind, "cuda"))
    assert cpu.keys() == gpu.keys()
    tol = TOLERANCE[kind]
    for name, tensors in cpu.items():  # params.safetensors, responses.safetensors
        what = "params" if name.startswith("params") else "responses"
        err = rel_diff(tensors, gpu[name])
        assert err <= tol[what], f"{kind} {name}: CPU vs CUDA relative difference {err:.2e} > {tol[what]}"
