"""A worker killed mid-simulation resumes from its checkpoint and publishes
the same store as an uninterrupted run; the previous store stays current."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from influence.store import current_version, open_store

ARGS = ["--preset", "tiny", "--quiet", "--set", "method.solver=steps", "--set", "method.steps=600",
        "--set", "store.checkpoint_every=20"]  # the step-by-step reference: resumable mid-propagation


def _build(root: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "worker", "build", "--store", str(root), *ARGS, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _same_store(a, b) -> None:
    for xs, ys in ((a.params, b.params), (a.examples, b.examples), (a.sources, b.sources)):
        for k, v in xs[0].items():
            assert torch.equal(v, ys[0][k]), k


def test_killed_worker_resumes_to_the_same_store(tmp_path):
    ref, root = tmp_path / "ref", tmp_path / "run"
    assert _build(ref).wait(timeout=300) == 0
    assert _build(root, "--seed", "5", "--set", "method.steps=3").wait(timeout=300) == 0  # the previous store
    proc = _build(root)
    deadline = time.monotonic() + 240
    while not list(root.glob(".work/*/sim-*.pt")):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert current_version(root) == "v000001" and open_store(root).manifest.recipe["seed"] == 5
    step = torch.load(next(root.glob(".work/*/sim-*.pt")))["step"]
    assert 0 < step < 600
    r = _build(root)
    assert r.wait(timeout=300) == 0, r.communicate()[1]
    assert current_version(root) == "v000002"
    _same_store(open_store(root), open_store(ref))
    assert not list(root.glob(".work/*")), "work directory left behind"


@pytest.mark.slow
def test_torchrun_two_ranks_equal_single_process(tmp_path, tiny_store):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--master-addr", "127.0.0.1", "--master-port", str(port)]
    # torchrun gives each rank 1 thread unless told; MKL's float32 results can
    # depend on the thread count (seen on an AVX-512 host), so match the
    # reference store's (built in this process)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    r = subprocess.run([*launcher, "-m", "worker", "build", "--preset", "tiny", "--quiet", "--store", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = open_store(tmp_path), open_store(tiny_store)
    for xs, ys in ((a.examples, b.examples), (a.sources, b.sources)):
        for k, v in xs[0].items():
            torch.testing.assert_close(v, ys[0][k], rtol=1e-5, atol=1e-6 * ys[0][k].abs().max().item())
    for k, v in a.params[0].items():
        assert torch.equal(v, b.params[0][k])
