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

from .model import MLPSpec, ParamLayout
from .outputs import Output, output, output_grad

LayerResponses = list[tuple[torch.Tensor, torch.Tensor]]
"""Per linear layer ``(ΔW (R, o, i), Δc (R, o))``: responses split by layer,
each block contiguous so a layer's GEMM reads it in place."""

_CHUNK_ELEMENTS = 1 << 24  # bound on the (B, R_chunk, width) tangent buffers


def split_layers(flat: torch.Tensor, spec: MLPSpec) -> LayerResponses:
    """``(R, p)`` flat responses -> contiguous per-layer blocks."""
    parts = ParamLayout.for_spec(spec).unflatten(flat)
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
) -> torch.Tensor:
    """Fast forward-mode readout for an MLP.

    params: the model's parameters; layers: ``R`` responses split by layer
    (``split_layers``), any float dtype (upcast per chunk to the dtype of
    ``x``); x ``(B, d)``; y ``(B,)``. Returns scores ``(B, R)`` in output
    units per unit upweighting. ``chunk`` bounds responses per pass (memory);
    the result does not depend on it.
    """
    logits, acts, dacts = mlp_forward(params, spec, x)
    g_out = output_grad(logits, y, kind)  # (B, C)
    n_resp = layers[0][0].shape[0]
    if n_resp == 0:
        return x.new_zeros((x.shape[0], 0))
    if chunk is None:
        chunk = max(1, _CHUNK_ELEMENTS // (x.shape[0] * max(spec.widths[1:])))
    out = []
    for start in range(0, n_resp, chunk):
        sl = slice(start, start + chunk)
        out.append(_tangent_chunk(params, acts, dacts, g_out, [(w[sl], c[sl]) for w, c in layers]))
    return torch.cat(out, dim=1)


def _tangent_chunk(params, acts, dacts, g_out, layers) -> torch.Tensor:
    bsz, dtype = acts[0].shape[0], acts[0].dtype
    tangent = None  # ȧ_{l−1}, (B, R, i); zero for the input layer
    for l, (dw, dc) in enumerate(layers):
        r, o, i = dw.shape
        dw, dc = dw.to(dtype), dc.to(dtype)
        # ΔW_l a_{l−1} for all responses: one GEMM (B, i) @ (i, R·o)
        z_dot = (acts[l] @ dw.reshape(r * o, i).T).view(bsz, r, o) + dc
        if tangent is not None:
            z_dot += (tangent.reshape(bsz * r, i) @ params[f"{2 * l}.weight"].T).view(bsz, r, o)
        if l < len(layers) - 1:
            tangent = z_dot * dacts[l][:, None, :]
        else:
            return torch.einsum("brc,bc->br", z_dot, g_out)
    raise AssertionError("unreachable")


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
