"""The torch.func paths work for any ``nn.Module``, not just linear stacks:
a residual block with LayerNorm, checked against explicit matrices."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jacrev

from influence.mlp.curvature import ggn_generic
from influence.mlp.model import ParamLayout
from influence.mlp.readout import difference_scores, gradient_scores, jvp_scores
from influence.outputs import cross_entropy_hessian


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.norm, self.hid, self.out = nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        return self.out(h + torch.tanh(self.hid(self.norm(h))))


def _setup():
    torch.manual_seed(0)
    model = Residual().double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, y = torch.randn(7, 4, dtype=torch.float64), torch.randint(0, 3, (7,))
    layout = ParamLayout.of(params)
    U = torch.randn(5, layout.numel, dtype=torch.float64)
    return model, params, layout, x, y, U


def test_generic_readouts_agree():
    model, params, layout, x, y, U = _setup()
    resp = layout.unflatten(U)
    ref = gradient_scores(model, params, resp, x, y)
    torch.testing.assert_close(jvp_scores(model, params, resp, x, y), ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(difference_scores(model, params, resp, x, y, h=1e-5), ref, rtol=1e-6, atol=1e-8)


def test_generic_ggn_equals_explicit():
    model, params, layout, x, _, U = _setup()
    f = lambda th: functional_call(model, layout.unflatten(th), (x,))  # noqa: E731
    theta = layout.flatten(params)
    J = jacrev(f)(theta)
    G = torch.einsum("ncp,ncd,ndq->pq", J, cross_entropy_hessian(f(theta)), J) / len(x)
    torch.testing.assert_close(ggn_generic(model, params, x)(U), U @ G, rtol=1e-10, atol=1e-12)
