"""The readout with the store resident on a CUDA device equals the CPU one."""

from __future__ import annotations

import pytest
import torch

from influence.mlp.attributor import VectorAttributor
from influence.store import open_store


@pytest.mark.gpu
def test_cuda_readout_equals_cpu(tiny_store):
    st = open_store(tiny_store)
    cpu, gpu = VectorAttributor(st, "cpu"), VectorAttributor(st, "cuda")
    assert gpu.examples[0][0][0].device.type == "cuda"
    x, y = st.X[:50], st.y[:50]
    a, b = cpu.score(x, y), gpu.score(x, y)
    scale = a.examples.abs().max()
    torch.testing.assert_close(b.examples.cpu(), a.examples, rtol=1e-3, atol=1e-4 * scale)
    torch.testing.assert_close(b.sources.cpu(), a.sources, rtol=1e-3, atol=1e-4 * scale)
