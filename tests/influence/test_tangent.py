"""``influence.gpt.tangent``: the hand-derived batched trunk tangent against
``torch.func.jvp`` (float64, a tiny GPT), and ``lm_math.jvp_scores`` with it
(``impl="manual"``, the default) against the ``torch.func`` path and the
explicit gradient dot product; float32 agreement and batch invariance."""

from __future__ import annotations

import pytest
import torch
from torch.func import jvp, vmap

from influence.gpt.model import GPT, GPTSpec
from influence.gpt.tangent import trunk_primal, trunk_tangents
from influence.text.causal import pad_right
from influence.text.lm_math import _trunk, gradient_scores, jvp_scores

SPEC = GPTSpec(vocab=50, d=8, heads=2, layers=2, context=16)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _params(spec: GPTSpec, dtype: torch.dtype, perturb: float = 0.3) -> tuple[GPT, dict[str, torch.Tensor]]:
    """``GPT(spec, seed=0)`` in ``dtype`` with its parameters perturbed (LayerNorm
    gains ≠ 1, biases ≠ 0, peaked attention: every term of the tangent matters)."""
    model = GPT(spec, seed=0).to(dtype)
    gen = _gen(1)
    params = {k: v.detach() + perturb * torch.randn(v.shape, generator=gen, dtype=torch.float64).to(dtype)
              for k, v in model.named_parameters()}
    return model, params


def _directions(spec: GPTSpec, R: int, dtype: torch.dtype, seed: int = 2) -> torch.Tensor:
    U = torch.randn(R, spec.n_params(), generator=_gen(seed), dtype=torch.float64)
    return (U / U.norm(dim=1, keepdim=True)).to(dtype)


def _queries(spec: GPTSpec, lengths: list[int], seed: int = 3):
    """Right-padded queries of ``lengths`` tokens: ``x``, the padding mask and a
    prompt/completion mask (one row with no completion target: all masked)."""
    gen = _gen(seed)
    x, pad = pad_right([torch.randint(0, spec.vocab, (n,), generator=gen).tolist() for n in lengths])
    comp = pad.clone()
    for i in range(len(lengths)):
        comp[i, : (i * 3) % max(1, lengths[i] - 1)] = False
    if len(lengths) > 2:
        comp[2] = False
    return x, pad, comp


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def tiny64():
    return _params(SPEC, torch.float64)


@pytest.mark.parametrize("B", [1, 3])
def test_trunk_tangents_match_torch_func_jvp(tiny64, B):
    model, params = tiny64
    layout = SPEC.layout()
    U = _directions(SPEC, 5, torch.float64)
    inp = torch.randint(0, SPEC.vocab, (B, SPEC.context), generator=_gen(4))
    trunk = lambda p: _trunk(model, p, inp)  # noqa: E731
    want_a = trunk(params)
    want = vmap(lambda u: jvp(trunk, (params,), (u,))[1])(layout.unflatten(U))  # (K, B, T, d)
    a, ad = trunk_tangents(params, SPEC, inp, U)
    assert ad.shape == (5, B, SPEC.context, SPEC.d) and ad.dtype == torch.float64
    torch.testing.assert_close(a, want_a, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ad, want, rtol=1e-10, atol=1e-10 * float(want.abs().max()))
    # unflattened directions, a reused primal, the model instead of its spec, a shorter input: all the same
    pr = trunk_primal(params, SPEC, inp)
    torch.testing.assert_close(trunk_tangents(params, model, inp, layout.unflatten(U), primal=pr)[1], ad,
                               rtol=0, atol=0)
    short = inp[:, :7]
    trunk7 = lambda p: _trunk(model, p, short)  # noqa: E731
    want7 = vmap(lambda u: jvp(trunk7, (params,), (u,))[1])(layout.unflatten(U))
    torch.testing.assert_close(trunk_tangents(params, SPEC, short, U)[1], want7, rtol=1e-10,
                               atol=1e-10 * float(want7.abs().max()))


def test_each_parameter_block_is_differentiated(tiny64):
    """One direction per parameter tensor (all others zero): each block's rule on its own."""
    model, params = tiny64
    layout = SPEC.layout()
    inp = torch.randint(0, SPEC.vocab, (2, SPEC.context), generator=_gen(5))
    gen = _gen(6)
    U = {k: torch.zeros(len(params), *v.shape, dtype=torch.float64) for k, v in params.items()}
    for i, k in enumerate(params):
        U[k][i] = torch.randn(params[k].shape, generator=gen, dtype=torch.float64)
    trunk = lambda p: _trunk(model, p, inp)  # noqa: E731
    want = vmap(lambda u: jvp(trunk, (params,), (u,))[1])(U)
    got = trunk_tangents(params, SPEC, inp, layout.flatten(U))[1]
    for i, k in enumerate(params):
        assert want[i].abs().max() > 0, k
        torch.testing.assert_close(got[i], want[i], rtol=1e-10, atol=1e-10 * float(want[i].abs().max()), msg=k)


@pytest.mark.parametrize("lengths", [[17], [17, 5, 11, 2]])
def test_jvp_scores_manual_equals_func_and_gradient(tiny64, lengths):
    """float64: manual == torch.func == ∇f·u at 1e-9 relative; padding rows,
    prompt masks, an all-masked row, R = 7 not a multiple of the chunk."""
    model, params = tiny64
    U = _directions(SPEC, 7, torch.float64)
    x, pad, comp = _queries(SPEC, lengths)
    for mask in (None, pad, comp):
        ref = gradient_scores(model, params, U, x, mask)
        func = jvp_scores(model, params, U, x, mask, impl="func")
        assert ref.abs().max() > 1e-3
        for chunk in (None, 3):
            got = jvp_scores(model, params, U, x, mask, chunk=chunk)
            assert got.shape == (x.shape[0], 7) and got.dtype == torch.float64
            assert _rel(got, ref) < 1e-9, (mask is None, chunk)
            assert _rel(got, func) < 1e-9, (mask is None, chunk)
        assert _rel(func, ref) < 1e-9
        if mask is comp and len(lengths) > 2:
            assert jvp_scores(model, params, U, x, mask)[2].abs().max() == 0  # no target: score 0


def test_float32_agrees_with_float64():
    """float32 (what serves) against the float64 manual scores: within 1e-4 of the
    largest score, manual and func alike."""
    model64, p64 = _params(SPEC, torch.float64)
    model32, p32 = GPT(SPEC, seed=0), {k: v.float() for k, v in p64.items()}
    U = _directions(SPEC, 9, torch.float64)
    x, _, comp = _queries(SPEC, [17, 9, 14, 3])
    ref = jvp_scores(model64, p64, U, x, comp)
    got = jvp_scores(model32, p32, U.float(), x, comp)
    func = jvp_scores(model32, p32, U.float(), x, comp, impl="func")
    assert got.dtype == torch.float32
    assert _rel(got.double(), ref) < 1e-4
    assert _rel(func.double(), ref) < 1e-4


@pytest.mark.parametrize("spec", [SPEC, GPTSpec(vocab=300)], ids=["tiny", "protocol-shapes"])
def test_a_row_does_not_depend_on_its_block(spec):
    """float32, fixed-shape blocks of 4 full-length rows (as ``TextAttributor`` is
    called by the service): a row's scores are bit-identical at every position
    of the block, whatever the other rows are (``blocks.text_batch_invariant``)."""
    model, params = _params(spec, torch.float32, perturb=0.02)
    U = _directions(spec, 15, torch.float32)
    L = spec.context + 1
    x, _, comp = _queries(spec, [L] * 8, seed=7)
    comp[1, :5] = False
    base = jvp_scores(model, params, U, x[:4], comp[:4])
    for shift in range(1, 4):
        idx = torch.tensor([(i - shift) % 4 for i in range(4)])  # row i moves to position i + shift
        rolled = jvp_scores(model, params, U, x[idx], comp[idx])
        assert torch.equal(rolled, base[idx]), shift
    others = torch.tensor([0, 5, 6, 7])  # row 0 with other company
    assert torch.equal(jvp_scores(model, params, U, x[others], comp[others])[0], base[0])


def test_bfloat16_tangents_against_float64():
    """``tangent_params`` in bfloat16 (the trunk tangents in bf16, all else in
    float32): within 3e-2 of the largest float64 score, the ranking of the
    directions per query nearly unchanged, and float32 ``tangent_params``
    are exactly the plain float32 path."""
    model64, p64 = _params(SPEC, torch.float64)
    model32, p32 = GPT(SPEC, seed=0), {k: v.float() for k, v in p64.items()}
    U = _directions(SPEC, 9, torch.float64)
    x, _, comp = _queries(SPEC, [17, 9, 14, 3])
    ref = jvp_scores(model64, p64, U, x, comp)
    f32, lp32 = jvp_scores(model32, p32, U.float(), x, comp, logprobs=True)
    bf, lpbf = jvp_scores(model32, p32, U.float(), x, comp, logprobs=True,
                          tangent_params={k: v.bfloat16() for k, v in p32.items()})
    assert bf.dtype == torch.float32 and torch.equal(lpbf, lp32)  # the primal stays float32
    err = _rel(bf.double(), ref)
    assert 1e-5 < err < 3e-2, err  # really reduced precision, and still close
    for q in (0, 1, 3):  # row 2 has no target: all scores 0
        rho = torch.corrcoef(torch.stack([bf[q].argsort().argsort().double(), ref[q].argsort().argsort()]))[0, 1]
        assert rho > 0.95, (q, rho)
    same = jvp_scores(model32, p32, U.float(), x, comp, tangent_params=p32)
    assert torch.equal(same, f32)
    with pytest.raises(ValueError, match="tangent_params"):
        jvp_scores(model32, p32, U.float(), x, comp, impl="func", tangent_params=p32)
