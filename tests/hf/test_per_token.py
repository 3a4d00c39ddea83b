"""Per-token scores of the forward readout (``jvp_scores(per_token=True)``):
``τ_t(q, r) = d/dh log p(y_t | y_<t; θ + h u_r)`` equals the per-token
gradient dot product and the two-point difference (tiny GPT-2 and Llama,
float64; the protocol GPT too), the masked mean equals the sequence score,
which does not move with per_token on or off, and batched equals one at a
time. A prompt + completion mask scores the completion's tokens only."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, jacrev

from influence.gpt.model import GPT, GPTSpec
from influence.layout import ParamLayout
from influence.text.lm_math import jvp_scores

from .conftest import V, tiny
from .test_hf_readout import TOL, _queries, _rel, _responses


def _token_logprobs(model, params, x):
    """``(B, T)`` log p(y_t | y_<t) with ``params`` substituted (autograd-able)."""
    logits = functional_call(model, params, (x[:, :-1],))
    return torch.log_softmax(logits.double(), -1).gather(-1, x[:, 1:, None])[..., 0]


def _per_token_reference(model, params, U, x, mask):
    """``(B, T, R)`` ∇θ log p(y_t) · u_r by reverse mode (0 where the mask is 0)."""
    layout = ParamLayout.of(params)
    J = jacrev(lambda p: _token_logprobs(model, p, x))(params)  # name -> (B, T, *shape)
    G = torch.cat([J[k].reshape(*x[:, 1:].shape, -1) for k in layout.names], -1)  # (B, T, p)
    return (G @ U.to(G.dtype).T) * mask[..., None]


def _difference(model, params, U, x, mask, h):
    out, Ud = [], ParamLayout.of(params).unflatten(U)
    for r in range(U.shape[0]):
        u = {k: v[r] for k, v in Ud.items()}
        plus = {k: params[k] + h * u[k] for k in params}
        minus = {k: params[k] - h * u[k] for k in params}
        out.append((_token_logprobs(model, plus, x) - _token_logprobs(model, minus, x)) / (2 * h))
    return torch.stack(out, -1) * mask[..., None]


@pytest.mark.parametrize("trained", ["lora", "all"])  # "all": GPT-2's tied, trained output layer (direct term)
def test_per_token_equals_gradient_and_difference(family, trained):
    model, params = tiny(family, trained)
    x, mask = _queries()
    U = _responses(params, 4)
    seq = jvp_scores(model, params, U, x, mask)
    scores, per = jvp_scores(model, params, U, x, mask, per_token=True)
    assert per.shape == (*mask.shape, 4)
    assert torch.equal(scores, seq)  # the answer (and the credit) does not move with per_token
    ref = _per_token_reference(model, params, U, x, mask)
    assert _rel(per, ref) < TOL[family]
    Un = U / U.norm(dim=1, keepdim=True)
    h, tol = (1e-6, 1e-6) if family == "gpt2" else (1e-3, 1e-3)
    _, per_n = jvp_scores(model, params, Un, x, mask, per_token=True)
    assert _rel(per_n, _difference(model, params, Un, x, mask, h)) < tol
    # the sequence score is the mean of its target tokens' scores
    n = mask.sum(-1, keepdim=True).double()
    assert torch.allclose(per.sum(1) / n, scores, rtol=1e-12, atol=1e-14)
    assert bool((per[~mask] == 0).all())


def test_per_token_batched_equals_one_at_a_time_and_func_equals_manual(family):
    model, params = tiny(family)
    x, mask = _queries()
    U = _responses(params, 3)
    _, per = jvp_scores(model, params, U, x, mask, per_token=True)
    _, per_func = jvp_scores(model, params, U, x, mask, per_token=True, impl="func")
    assert _rel(per_func, per) < TOL[family]
    for i in range(x.shape[0]):
        n = int(mask[i].sum())
        _, one = jvp_scores(model, params, U, x[i : i + 1, : n + 1], mask[i : i + 1, :n], per_token=True)
        assert _rel(one[0], per[i, :n]) < (1e-12 if family == "gpt2" else 1e-5)


def test_completion_mask_scores_the_completion_tokens_only(family):
    model, params = tiny(family)
    x, mask = _queries(lengths=(12,))
    comp = mask.clone()
    comp[:, :5] = False  # a 6-token prompt: targets 0..4 belong to it
    U = _responses(params, 3)
    s_all, per_all = jvp_scores(model, params, U, x, mask, per_token=True)
    s_c, per_c = jvp_scores(model, params, U, x, comp, per_token=True)
    assert bool((per_c[:, :5] == 0).all())
    assert _rel(per_c[:, 5:], per_all[:, 5:]) < 1e-10  # a token's own score does not depend on the mask
    assert torch.allclose(per_c[:, 5:].mean(1), s_c, rtol=1e-12, atol=1e-14)


def test_protocol_gpt_per_token_equals_gradient():
    spec = GPTSpec(vocab=V, context=16, d=8, heads=2, layers=2)
    torch.manual_seed(0)
    model = GPT(spec, seed=1).double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, mask = _queries()
    U = _responses(params, 3)
    scores, per = jvp_scores(model, params, U, x, mask, per_token=True)
    assert torch.equal(scores, jvp_scores(model, params, U, x, mask))
    assert _rel(per, _per_token_reference(model, params, U, x, mask)) < 1e-9


def test_attributor_per_token_means_are_the_sequence_scores(hf_att_per_token):
    att = hf_att_per_token
    qs = [att.encode(text="the cat sat on the mat"), att.encode(prompt="one two", completion="three four five")]
    plain = att.score(qs)
    got = att.score(qs, per_token=True)
    assert torch.equal(got.sources, plain.sources) and torch.equal(got.examples, plain.examples)
    for i, q in enumerate(qs):
        assert got.token_sources[i].shape == (q.n_targets, att.n_sources)
        assert got.token_examples[i].shape == (q.n_targets, att.n_examples)
        assert torch.allclose(got.token_sources[i].mean(0), got.sources[i], rtol=1e-4, atol=1e-6)
        assert torch.allclose(got.token_examples[i].mean(0), got.examples[i], rtol=1e-4, atol=1e-6)
    # batched = one at a time
    one = att.score(qs[1:], per_token=True)
    assert torch.allclose(one.token_sources[0], got.token_sources[1], rtol=1e-4, atol=1e-6)
    only = att.score(qs, examples=False, per_token=True)
    assert only.token_examples is None and torch.allclose(only.token_sources[0], got.token_sources[0])


@pytest.fixture(scope="module")
def hf_att_per_token(tmp_path_factory):
    from influence.store import open_store
    from influence.text.attributor import TextAttributor
    from tests.service.hf_store import build_hf_store

    return TextAttributor(open_store(build_hf_store(tmp_path_factory.mktemp("hf-store"))), "cpu")
