"""``influence.whatif``: first-order removal / re-weighting of sources (synthetic τ)."""

import numpy as np
import pytest
import torch

from influence.whatif import WhatIf, predict, removal, reweight, source_scores


@pytest.fixture
def tau():
    return np.random.default_rng(0).normal(size=(7, 4))  # 7 queries, 4 sources


def test_removal_is_minus_tau_over_n(tau):
    r = removal(tau, 100, [1, 3])
    assert isinstance(r, WhatIf)
    np.testing.assert_allclose(r.change, -(tau[:, 1] + tau[:, 3]) / 100)
    assert r.mean == pytest.approx(float(np.mean(-(tau[:, 1] + tau[:, 3]) / 100)))


def test_sign_removing_a_helpful_source_lowers_the_output():
    tau = np.array([[5.0, -2.0]])  # source 0 helps the query, source 1 hurts it
    assert removal(tau, 10, [0]).change[0] == pytest.approx(-0.5)
    assert removal(tau, 10, [1]).change[0] == pytest.approx(0.2)


def test_mask_and_ids_agree_and_batch(tau):
    masks = np.array([[True, False, False, True], [False, False, False, False], [True] * 4])
    r = removal(tau, 50, masks)
    assert r.change.shape == (3, 7) and r.mean.shape == (3,)
    np.testing.assert_allclose(r.change[0], removal(tau, 50, [0, 3]).change)
    np.testing.assert_allclose(r.change[1], 0.0)
    np.testing.assert_allclose(r.change[2], -tau.sum(1) / 50)
    np.testing.assert_allclose(r.mean, r.change.mean(1))


def test_reweight(tau):
    r = reweight(tau, 20, {2: 3.0, 0: 0.5})
    np.testing.assert_allclose(r.change, (2.0 * tau[:, 2] - 0.5 * tau[:, 0]) / 20)
    np.testing.assert_allclose(reweight(tau, 20, np.ones(4)).change, 0.0)
    np.testing.assert_allclose(reweight(tau, 20, np.zeros(4)).change, removal(tau, 20, [0, 1, 2, 3]).change)
    np.testing.assert_allclose(predict(tau, 20, np.array([1, 1, 4.0, 1])).change, 3 * tau[:, 2] / 20)


def test_per_example_scores_summed_per_source():
    rng = np.random.default_rng(1)
    tau_ex = rng.normal(size=(5, 9))
    src = np.array([0, 2, 1, 0, 2, 2, 1, 0, 2])
    per_src = source_scores(tau_ex, src, 3)
    np.testing.assert_allclose(per_src[:, 2], tau_ex[:, src == 2].sum(1))
    np.testing.assert_allclose(removal(tau_ex, 9, [2], source=src).change, -tau_ex[:, src == 2].sum(1) / 9)
    # removing every source at first order = removing every example
    np.testing.assert_allclose(removal(tau_ex, 9, [0, 1, 2], source=src).change, -tau_ex.sum(1) / 9)
    # a source with no examples has zero score
    assert np.all(source_scores(tau_ex, src, 4)[:, 3] == 0)


def test_torch_inputs(tau):
    t = torch.from_numpy(tau).float()
    r = removal(t, 10, torch.tensor([True, False, True, False]))
    np.testing.assert_allclose(r.change, -(tau[:, 0] + tau[:, 2]) / 10, atol=1e-6)
    s = source_scores(t, torch.tensor([0, 1, 1, 0]), 2)
    np.testing.assert_allclose(s[:, 0], tau[:, 0] + tau[:, 3], atol=1e-6)


@pytest.mark.parametrize("call", [
    lambda t: removal(t, 0, [0]),
    lambda t: removal(t, 10.5, [0]),
    lambda t: removal(t, 10, [4]),
    lambda t: removal(t, 10, [-1]),
    lambda t: removal(t, 10, np.array([True, False])),
    lambda t: reweight(t, 10, np.ones(3)),
    lambda t: reweight(t, 10, {7: 0.0}),
    lambda t: source_scores(t, np.array([0, 1]), 2),
    lambda t: source_scores(t, np.array([0, 1, 2, 3]), 3),
    lambda t: removal(t[0], 10, [0]),
    lambda t: removal(np.full((2, 4), np.nan), 10, [0]),
])
def test_rejects_bad_input(tau, call):
    with pytest.raises(ValueError):
        call(tau)
