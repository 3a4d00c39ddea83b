"""Curvature-vector products for many directions at once.

``U (R, p)`` flat directions -> ``(R, p)``. The Gauss-Newton product is
``G u = (1/N) Σ_n J_nᵀ H_n J_n u`` with ``H_n = diag(p_n) − p_n p_nᵀ`` the
cross-entropy Hessian in the logits; the exact Hessian product is
``∇²[(1/N) Σ_n ℓ_n] u``. Neither includes weight decay or damping.

``LinearStackGGN`` is the fast path for MLPs: a forward tangent for all
directions (one GEMM per layer), the output Hessian, then the transposed
pass, again one GEMM per layer. ``ggn_generic`` / ``hvp_generic`` use
``torch.func`` on any module and are the references it is tested against.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, grad, jvp, vjp, vmap

from ..outputs import cross_entropy_hessian
from ..simulate.settings import BLOCK_ELEMENTS
from .model import MLPSpec, ParamLayout
from .readout import mlp_forward, split_layers


class LinearStackGGN:
    """Caches one forward pass over the curvature batch ``X (N, d)``.

    Memory traffic, not flops, bounds this product on a CPU: the hidden
    tangents ``(N, R, width)`` are the big tensors. So the product runs over
    blocks of examples of ``block_elements`` tangent floats (16 MB at the
    default: cache-sized, while each block's dozen GEMMs stay big enough to
    amortise their call cost), biases are folded into the GEMMs (inputs
    augmented with a ones column), and each example's activation mask is
    folded into its own copy of the next layer's weights (``bmm``) instead
    of a pass over the tangents.
    """

    def __init__(self, params: dict[str, torch.Tensor], spec: MLPSpec, X: torch.Tensor,
                 block_elements: int = BLOCK_ELEMENTS):
        self.spec, self.block_elements = spec, block_elements
        logits, acts, self.dacts = mlp_forward(params, spec, X)
        self.probs = torch.softmax(logits, dim=1)
        self.acts = [torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1) for a in acts]  # (N, i+1)
        self.weights = [params[f"{2 * l}.weight"] for l in range(len(acts))]
        self.n = X.shape[0]

    def __call__(self, U: torch.Tensor) -> torch.Tensor:
        """``U (R, p)`` -> ``G U (R, p)``."""
        r = U.shape[0]
        blocks = [torch.cat([dw, dc[..., None]], dim=-1) for dw, dc in split_layers(U, self.spec)]  # (R, o, i+1)
        acc = [torch.zeros_like(b) for b in blocks]
        nb = max(1, self.block_elements // (r * max(self.spec.widths[1:])))
        for s in range(0, self.n, nb):
            self._block(slice(s, s + nb), blocks, acc)
        return torch.cat([t for a in acc for t in (a[..., :-1].reshape(r, -1), a[..., -1])], dim=1) / self.n

    def _block(self, sl: slice, blocks: list[torch.Tensor], acc: list[torch.Tensor]) -> None:
        """Add ``Σ_{n∈sl} J_nᵀ H_n J_n u`` for all directions into ``acc``."""
        acts = [a[sl] for a in self.acts]
        nb, r = acts[0].shape[0], blocks[0].shape[0]
        # W_l with the mask σ'(z_{l−1}) of each example folded in: (nb, o, i)
        masked = [None] + [w[None] * d[sl][:, None, :] for w, d in zip(self.weights[1:], self.dacts)]
        z = None
        for l, blk in enumerate(blocks):
            o, i1 = blk.shape[1:]
            z_new = (acts[l] @ blk.view(r * o, i1).T).view(nb, r, o)  # ΔW a + Δc
            if z is not None:
                z_new.baddbmm_(z, masked[l].transpose(1, 2))  # + W σ' ⊙ ż
            z = z_new
        p = self.probs[sl][:, None, :]
        delta = p * (z - (p * z).sum(-1, keepdim=True))  # H_n J_n u
        for l in range(len(blocks) - 1, -1, -1):
            o, i1 = blocks[l].shape[1:]
            acc[l].view(r * o, i1).addmm_(delta.reshape(nb, r * o).T, acts[l])
            if l > 0:
                delta = torch.bmm(delta, masked[l])  # (nb, r, i): σ' ⊙ Wᵀ δ


def _dict_fn(model, params, fn):
    """Wrap a dict-in/dict-out torch.func product as flat ``(R, p) -> (R, p)``."""
    layout = ParamLayout.of(params)

    def apply(U: torch.Tensor) -> torch.Tensor:
        return layout.flatten(vmap(fn)(layout.unflatten(U)))

    return apply


def ggn_generic(model, params: dict[str, torch.Tensor], X: torch.Tensor):
    """Gauss-Newton product through ``torch.func`` for any module."""
    f = lambda p: functional_call(model, p, (X,))  # noqa: E731
    logits, vjp_fn = vjp(f, params)
    h = cross_entropy_hessian(logits.detach()) / X.shape[0]

    def one(u):
        jv = jvp(f, (params,), (u,))[1]
        return vjp_fn(torch.einsum("nij,nj->ni", h, jv))[0]

    return _dict_fn(model, params, one)


def hvp_generic(model, params: dict[str, torch.Tensor], X: torch.Tensor, y: torch.Tensor):
    """Exact Hessian product of the mean cross-entropy through ``torch.func``."""
    g = grad(lambda p: torch.nn.functional.cross_entropy(functional_call(model, p, (X,)), y))
    return _dict_fn(model, params, lambda u: jvp(g, (params,), (u,))[1])


def per_example_grads(model, params: dict[str, torch.Tensor], X: torch.Tensor, y: torch.Tensor,
                      chunk: int = 4096) -> torch.Tensor:
    """``∇_θ ℓ(z_b; θ)`` for every example: ``(n, p)`` flat (no weight decay)."""
    layout = ParamLayout.of(params)

    def loss(p, x, t):
        return torch.nn.functional.cross_entropy(functional_call(model, p, (x[None],)), t[None])

    per = vmap(grad(loss), in_dims=(None, 0, 0))
    return torch.cat([layout.flatten(per(params, X[s : s + chunk], y[s : s + chunk]))
                      for s in range(0, len(X), chunk)])


def mlp_example_grads(params: dict[str, torch.Tensor], spec: MLPSpec, X: torch.Tensor, y: torch.Tensor,
                      chunk: int = 2048) -> torch.Tensor:
    """``per_example_grads`` for an MLP in closed form: ``(n, p)`` flat.

    Backpropagation of ``δ_L = softmax(z) − e_y`` through the stack for all
    examples at once; a weight's gradient is the outer product ``δ_l a_{l−1}ᵀ``
    (``O(n·p)``, no per-example autograd)."""
    out = []
    for s in range(0, len(X), chunk):
        logits, acts, dacts = mlp_forward(params, spec, X[s : s + chunk])
        delta = torch.softmax(logits, dim=1)
        delta[torch.arange(len(delta), device=delta.device), y[s : s + chunk]] -= 1.0
        parts = [None] * len(acts)
        for l in range(len(acts) - 1, -1, -1):
            parts[l] = (torch.einsum("no,ni->noi", delta, acts[l]).flatten(1), delta)
            if l > 0:
                delta = (delta @ params[f"{2 * l}.weight"]) * dacts[l - 1]
        out.append(torch.cat([t for pair in parts for t in pair], dim=1))
    return torch.cat(out)
