"""A Hugging Face build stopped after any stage (fine-tune, document
gradients, curvature basis, a finished member) and started again continues
from its checkpoints and publishes the same store, tensor for tensor, as an
uninterrupted build (issue 24 row 4). The stop is an exception raised right
after the stage's checkpoint is written (where a kill would land), so the
test is the same on any machine speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from influence.store import open_store
from worker.config import load_config
from worker.hf_pipeline import build_hf
from worker.workdir import WorkDir

from ..hf.conftest import save_tiny_checkpoint
from ..text_corpus import write_corpus

FAST = ["method.rank=16", "method.curvature_subset=8", "method.steps=30", "train.epochs=1", "data.max_blocks=2",
        "method.ensemble=2", "store.quant_bits=0"]  # float rows: the torchrun check compares them to rounding


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf-resume")
    data = write_corpus(tmp / "docs.jsonl")
    base = save_tiny_checkpoint(tmp / "base", [json.loads(x)["text"] for x in data.read_text().splitlines()])
    return data, base


def _cfg(inputs, root):
    data, base = inputs
    return load_config("hf", overrides=[f'model.path="{base}"', f'data.path="{data}"', f'store.root="{root}"', *FAST])


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    root = tmp_path_factory.mktemp("ref") / "store"
    build_hf(_cfg(inputs, root), progress=False)
    return open_store(root)


def _same(a, b) -> None:
    for xs, ys in ((a.params, b.params), (a.examples, b.examples), (a.sources, b.sources)):
        assert (xs is None) == (ys is None)
        for x, y in zip(xs or [], ys or [], strict=True):
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("stop_after", ["ft-2", "sim-2-gradients", "sim-2-basis", "member-2", "sim-3-basis"])
def test_a_stopped_build_resumes_to_the_same_store(inputs, reference, tmp_path, monkeypatch, stop_after):
    root = tmp_path / "store"
    save = WorkDir.save

    def save_then_stop(self, name, value):
        save(self, name, value)
        if name == stop_after:
            raise Stop(name)

    monkeypatch.setattr(WorkDir, "save", save_then_stop)
    with pytest.raises(Stop):
        build_hf(_cfg(inputs, root), progress=False)
    monkeypatch.setattr(WorkDir, "save", save)
    assert not (root / "versions").exists()  # nothing published by the stopped build
    (work,) = (root / ".work").iterdir()
    assert (work / f"{stop_after}.pt").is_file()

    build_hf(_cfg(inputs, root), progress=False)
    st = open_store(root)
    _same(st, reference)
    assert st.manifest.extra["resumed_stages"][-1] == stop_after or stop_after.startswith("member")
    assert stop_after in st.manifest.extra["resumed_stages"]
    assert not (root / ".work").exists()  # removed once published


def test_changed_settings_do_not_resume_from_stale_work(inputs, tmp_path, monkeypatch):
    root = tmp_path / "store"
    save = WorkDir.save

    def stop_after_ft(self, name, value):
        save(self, name, value)
        if name == "ft-2":
            raise Stop(name)

    monkeypatch.setattr(WorkDir, "save", stop_after_ft)
    with pytest.raises(Stop):
        build_hf(_cfg(inputs, root), progress=False)
    monkeypatch.setattr(WorkDir, "save", save)
    data, base = inputs
    other = load_config("hf", overrides=[f'model.path="{base}"', f'data.path="{data}"', f'store.root="{root}"',
                                         *FAST, "train.lr=0.002"])
    build_hf(other, progress=False)
    assert open_store(root).manifest.extra["resumed_stages"] == []


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process(inputs, reference, tmp_path):
    """``torchrun --nproc-per-node 2`` on the CPU (gloo): each rank simulates half the documents and sums
    half the curvature chunks; the store equals one process's (parameters exactly, rows to float rounding:
    only the order of the curvature sum differs)."""
    import os
    import socket
    import subprocess
    import sys

    data, base = inputs
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                        "127.0.0.1", "--master-port", str(port), "-m", "worker", "build", "--model", str(base),
                        "--data", str(data), "--store", str(tmp_path / "store"), "--quiet",
                        *[x for o in FAST for x in ("--set", o)]], capture_output=True, text=True, timeout=600,
                       env=env, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr[-3000:]
    a = open_store(tmp_path / "store")
    for x, y in zip(a.params, reference.params, strict=True):
        assert all(torch.equal(x[k], y[k]) for k in y)
    for xs, ys in ((a.examples, reference.examples), (a.sources, reference.sources)):
        for x, y in zip(xs or [], ys or [], strict=True):
            for k in y:
                torch.testing.assert_close(x[k], y[k], rtol=1e-4, atol=1e-5 * y[k].abs().max().item())
    assert not (tmp_path / "store" / ".work").exists()
