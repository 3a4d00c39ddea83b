"""Forward-only readout: ``τ(q, d) = d/dh f(q; θ + h u_d)|_{h=0}``.

Three ways to compute the same matrix of scores ``(B queries, R responses)``:

* ``linear_stack_scores`` — the fast path for MLPs. The forward tangent
  ``ż_l = ΔW_l a_{l−1} + Δc_l + W_l ȧ_{l−1}``, ``ȧ_l = σ'(z_l) ⊙ ż_l`` is
  carried for all responses at once, so each layer is one large GEMM
  ``(B, i) @ (i, R·o)`` plus one ``(B·R, i) @ (i, o)``; about ``2·R·B·p``
  flops, reading the store once per batch.
* ``jvp_scores`` — generic ``torch.func.jvp`` through any ``nn.Module``,
  vmapped over responses (one forward pass carrying a tangent).
* ``difference_scores`` — the two-point difference
  ``(f(θ+h u) − f(θ−h u)) / 2h``.

``gradient_scores`` (explicit ``∇f(q)ᵀ u``, with a backward pass) is the
slow reference the tests compare against; it is never used to serve.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jvp, vmap

from ..outputs import Output, output, output_grad
from .model import MLPSpec, ParamLayout

LayerResponses = list[tuple[torch.Tensor, torch.Tensor]]
"""Per linear layer ``(ΔW (R, o, i), Δc (R, o))``: responses split by layer,
each block contiguous so a layer's GEMM reads it in place."""

# Bound on the (B, R_chunk, width) tangent buffers. CPU: 4 MiB of float32 stays in cache (1 thread,
# B = 64-256: ~1.5x faster than 16 MiB chunks, side by side). GPU: large chunks, fewer kernel launches.
_CHUNK_ELEMENTS = 1 << 20
_CHUNK_ELEMENTS_GPU = 1 << 26


def split_layers(flat: torch.Tensor, spec: MLPSpec) -> LayerResponses:
    """``(R, p)`` flat responses -> contiguous per-layer blocks."""
    parts = spec.layout().unflatten(flat)
    n_layers = len(spec.widths) - 1
    return [
        (parts[f"{2 * l}.weight"].contiguous(), parts[f"{2 * l}.bias"].contiguous())
        for l in range(n_layers)
    ]


def _act_and_grad(z: torch.Tensor, activation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Activation ``σ(z)`` and its derivative ``σ'(z)``, elementwise."""
    if activation == "relu":
        return torch.relu(z), (z > 0).to(z.dtype)
    if activation == "tanh":
        a = torch.tanh(z)
        return a, 1 - a * a
    if activation == "sigmoid":
        a = torch.sigmoid(z)
        return a, a * (1 - a)
    if activation == "gelu":
        cdf = 0.5 * (1 + torch.erf(z / 2**0.5))
        pdf = torch.exp(-0.5 * z * z) / (2 * torch.pi) ** 0.5
        return z * cdf, cdf + z * pdf
    raise ValueError(f"unsupported activation {activation!r}")


def mlp_forward(
    params: dict[str, torch.Tensor], spec: MLPSpec, x: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Plain forward pass. Returns logits ``(B, C)``, the inputs of each
    linear layer ``a_{l−1}`` and the activation derivatives ``σ'(z_l)`` of
    each hidden layer."""
    n_layers = len(spec.widths) - 1
    acts, dacts, a = [], [], x
    for l in range(n_layers):
        acts.append(a)
        z = torch.nn.functional.linear(a, params[f"{2 * l}.weight"], params[f"{2 * l}.bias"])
        if l < n_layers - 1:
            a, da = _act_and_grad(z, spec.activation)
            dacts.append(da)
        else:
            a = z
    return a, acts, dacts


def linear_stack_scores(
    params: dict[str, torch.Tensor],
    spec: MLPSpec,
    layers: LayerResponses,
    x: torch.Tensor,
    y: torch.Tensor,
    kind: Output = "margin",
    chunk: int | None = None,
    forward: tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]] | None = None,
) -> torch.Tensor:
    """Fast forward-mode readout for an MLP.

    params: the model's parameters; layers: ``R`` responses split by layer
    (``split_layers``), any float dtype (upcast per chunk to the dtype of
    ``x``); x ``(B, d)``; y ``(B,)``. Returns scores ``(B, R)`` in output
    units per unit upweighting. ``chunk`` bounds responses per pass (memory);
    the result does not depend on it. ``forward``: ``mlp_forward(params,
    spec, x)`` when the caller has it already (it is shared by outputs and
    response sets).

    Work per chunk of ``r`` responses: the tangents ``ż_l`` of the hidden
    pre-activations (one GEMM ``(B, i) @ (i, r·o)`` per layer, plus
    ``(B·r, i) @ (i, o)`` from the second hidden layer on), then the output.
    The output tangent is only ever needed contracted with ``g = ∂f/∂z_L``, so
    that contraction is taken through the last linear layer instead of after
    it: ``g·ż_L = g·(ΔW_L a_{L−1} + Δc_L) + (σ'_{L−1} ⊙ W_Lᵀ g)·ż_{L−1}``
    (exact; the ``(B, r, C)`` product ``W_L ȧ_{L−1}`` with its skinny GEMM,
    the ``ȧ_{L−1}`` buffer and the bias broadcast over ``(B, r, h)`` are never
    formed). Each response block is still read once per call.
    """
    logits, acts, dacts = forward if forward is not None else mlp_forward(params, spec, x)
    g = output_grad(logits, y, kind)  # (B, C)
    n_resp, bsz = layers[0][0].shape[0], x.shape[0]
    if n_resp == 0:
        return x.new_zeros((bsz, 0))
    n_layers = len(layers)
    # σ'_{L−1} ⊙ W_Lᵀ g: the output gradient seen from the last hidden pre-activation, (B, h)
    w = (g @ params[f"{2 * (n_layers - 1)}.weight"]) * dacts[-1] if n_layers > 1 else None
    if chunk is None:
        budget = _CHUNK_ELEMENTS if x.device.type == "cpu" else _CHUNK_ELEMENTS_GPU
        chunk = max(1, budget // (bsz * max(spec.widths[1:])))
        if layers[0][0].dtype != x.dtype:  # upcast per chunk: keep that copy within the same bound
            chunk = min(chunk, max(1, budget // max(w[0].numel() for w, _ in layers)))
    if chunk >= n_resp:
        return _chunk_scores(params, acts, dacts, g, w, layers)
    out = x.new_empty((bsz, n_resp))
    for start in range(0, n_resp, chunk):
        sl = slice(start, start + chunk)
        out[:, sl] = _chunk_scores(params, acts, dacts, g, w, [(dw[sl], dc[sl]) for dw, dc in layers])
    return out


def _chunk_scores(params, acts, dacts, g, w, layers) -> torch.Tensor:
    """Scores ``(B, r)`` of one chunk of responses (see ``linear_stack_scores``)."""
    bsz, dtype = acts[0].shape[0], acts[0].dtype
    last = len(layers) - 1
    z_dot = None  # ż_l, (B, r, o): tangent of hidden pre-activation l
    for l in range(last):
        dw, dc = layers[l]
        r, o, i = dw.shape
        dw = dw.to(dtype).reshape(r * o, i)
        if l < last - 1:  # the bias of the last hidden layer is added after the contraction, as w·Δc
            z = torch.addmm(dc.to(dtype).reshape(1, r * o), acts[l], dw.T)  # ΔW_l a_{l−1} + Δc_l
        else:
            z = acts[l] @ dw.T  # (B, r·o)
        z = z.view(bsz, r, o)
        if z_dot is not None:  # + W_l ȧ_{l−1}, with ȧ_{l−1} = σ'_{l−1} ⊙ ż_{l−1}
            tangent = z_dot.mul_(dacts[l - 1][:, None, :]).view(bsz * r, -1)
            z.view(bsz * r, o).addmm_(tangent, params[f"{2 * l}.weight"].T)
        z_dot = z
    dw, dc = layers[last]
    r, c, h = dw.shape
    dw, dc = dw.to(dtype), dc.to(dtype)
    direct = (acts[last] @ dw.reshape(r * c, h).T).view(bsz, r, c).add_(dc)  # ΔW_L a_{L−1} + Δc_L
    # (not a separate g @ Δc_Lᵀ: MKL's kernel for that skinny shape (K = C = 5
    # or 10, few responses) gives a row a result that depends on its position
    # in the batch, which would break the service's batch invariance)
    s = torch.bmm(direct, g[:, :, None]).view(bsz, r)
    if z_dot is not None:
        s.view(bsz, 1, r).baddbmm_(w[:, None, :], z_dot.transpose(1, 2))  # w·ż_{L−1} ...
        s.addmm_(w, layers[last - 1][1].to(dtype).T)  # ... whose bias Δc_{L−1} was left out above
    return s


def _query_output(model: nn.Module, x: torch.Tensor, y: torch.Tensor, kind: Output):
    def f(p):
        return output(functional_call(model, p, (x,)), y, kind)

    return f


def jvp_scores(model, params, responses, x, y, kind: Output = "margin") -> torch.Tensor:
    """Generic ``torch.func.jvp`` readout for any module. responses: dict of
    ``(R, *shape)`` tangents. Returns ``(B, R)``."""
    f = _query_output(model, x, y, kind)
    one = lambda u: jvp(f, (params,), (u,))[1]  # noqa: E731
    return vmap(one)(responses).T


def difference_scores(model, params, responses, x, y, kind: Output = "margin", h: float = 1e-3):
    """Two-point difference ``(f(θ+hu) − f(θ−hu)) / 2h`` for every response;
    ``(B, R)``. Error is ``O(h²)``; use float64 for tight agreement."""
    f = _query_output(model, x, y, kind)

    def one(u):
        plus = {k: params[k] + h * u[k] for k in params}
        minus = {k: params[k] - h * u[k] for k in params}
        return (f(plus) - f(minus)) / (2 * h)

    return vmap(one)(responses).T


def gradient_scores(model, params, responses, x, y, kind: Output = "margin") -> torch.Tensor:
    """Reference: explicit per-query gradient (a backward pass) dotted with
    each flat response. Slow and obviously correct; tests only."""
    layout = ParamLayout.of(params)
    flat_u = layout.flatten(responses)  # (R, p)
    rows = []
    for b in range(x.shape[0]):
        p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        val = _query_output(model, x[b : b + 1], y[b : b + 1], kind)(p).sum()
        grads = torch.autograd.grad(val, list(p.values()))
        rows.append(flat_u @ torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)
