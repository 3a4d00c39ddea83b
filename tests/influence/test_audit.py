"""Source-level metrics (influence.audit) against slow, obviously correct
references, and the store's audit support (republish, Store.audit)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from influence.audit import colcorr, draw_source_subsets, loso, source_lds, truth_noise, whatif_check
from influence.errors import StoreError
from influence.store import AUDIT_ASSET, current_version, list_versions, open_store, republish, set_current


def _data(seed=0, m=30, S=8, J=12):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(m, S)), rng.random((J, S)) < 0.5, rng.normal(size=(J, m)), rng.normal(size=(S, m))


def test_colcorr_matches_scipy_pearson_and_nan_for_constant():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(10, 5)), rng.normal(size=(10, 5))
    b[:, 2] = 4.0
    got = colcorr(a, b)
    for q in range(5):
        if q == 2:
            assert np.isnan(got[q])
        else:
            assert got[q] == pytest.approx(pearsonr(a[:, q], b[:, q])[0], abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_source_lds_matches_a_spearman_loop(seed):
    tau, keep, true, _ = _data(seed)
    got, per = source_lds(tau, keep, true)
    ref = [spearmanr([tau[q, k].sum() for k in keep], true[:, q])[0] for q in range(tau.shape[0])]
    np.testing.assert_allclose(per, ref, atol=1e-12)
    assert got == pytest.approx(np.mean(ref), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_loso_matches_loops(seed):
    tau, _, _, effect = _data(seed)
    got = loso(tau, effect)
    m = tau.shape[0]
    assert got["loso_pearson"] == pytest.approx(np.mean([pearsonr(tau[q], effect[:, q])[0] for q in range(m)]))
    assert got["loso_spearman"] == pytest.approx(np.mean([spearmanr(tau[q], effect[:, q])[0] for q in range(m)]))
    top = np.mean([int(np.argmax(tau[q])) == int(np.argmax(effect[:, q])) for q in range(m)])
    assert got["top1_agree"] == pytest.approx(top)


def test_whatif_check_matches_the_first_order_formula():
    tau, keep, actual, _ = _data(4)
    n = 500
    removed = ~keep
    pred = np.array([[-sum(tau[q, s] for s in range(tau.shape[1]) if removed[j, s]) / n
                      for q in range(tau.shape[0])] for j in range(len(keep))])
    got = whatif_check(tau, n, actual, removed)
    assert got["pearson"] == pytest.approx(pearsonr(pred.ravel(), actual.ravel())[0])
    assert got["mae"] == pytest.approx(np.abs(pred - actual).mean())
    assert got["actual_mean_abs"] == pytest.approx(np.abs(actual).mean())
    k = got["scale_fit"]
    assert got["mae_fitted"] == pytest.approx(np.abs(k * pred - actual).mean())
    # a perfect first-order truth: Pearson 1, MAE 0
    exact = whatif_check(tau, n, pred, removed)
    assert exact["pearson"] == pytest.approx(1.0) and exact["mae"] == pytest.approx(0.0, abs=1e-15)


def test_truth_noise_matches_a_loop_and_is_empty_with_one_seed():
    rng = np.random.default_rng(5)
    E, L, J, m = 3, 6, 7, 9
    full, lo, sub = rng.normal(size=(E, m)), rng.normal(size=(L, E, m)), rng.normal(size=(J, E, m))
    got = truth_noise(full, lo, sub)
    a = full[0][None] - lo[:, 0]
    b = (full[1:][None] - lo[:, 1:]).mean(1)
    ref = np.mean([pearsonr(a[:, q], b[:, q])[0] for q in range(m)])
    assert got["loso_pearson_seed0_vs_rest"] == pytest.approx(ref)
    ref_s = np.mean([spearmanr(sub[:, 0, q], sub[:, 1:, q].mean(1))[0] for q in range(m)])
    assert got["subset_spearman_seed0_vs_rest"] == pytest.approx(ref_s)
    assert truth_noise(full[:1], lo[:, :1], sub[:, :1]) == {}


def test_draw_source_subsets_is_deterministic_and_respects_min_keep():
    a = draw_source_subsets(40, 6, 0.3, 3, seed=7)
    assert a.shape == (40, 6) and a.dtype == bool and (a.sum(1) >= 3).all()
    assert np.array_equal(a, draw_source_subsets(40, 6, 0.3, 3, seed=7))
    assert not np.array_equal(a, draw_source_subsets(40, 6, 0.3, 3, seed=8))
    with pytest.raises(ValueError):
        draw_source_subsets(4, 6, 1.0)


# -- the store's side: republish with an extra asset, Store.audit -----------------------------------------------
@pytest.fixture
def store_copy(tiny_store, tmp_path):
    root = tmp_path / "s"
    shutil.copytree(tiny_store, root)
    return root


def test_store_without_audit_says_so_and_republish_adds_one(store_copy):
    v1 = current_version(store_copy)
    old = open_store(store_copy)
    assert old.audit is None
    blob = json.dumps({"audited_version": v1, "metrics": {"source_lds": 0.5}}).encode()
    path = republish(store_copy, v1, {AUDIT_ASSET: blob}, {"audit": {"audited_version": v1}})
    new = open_store(store_copy)
    assert new.version == path.name == current_version(store_copy) != v1
    assert new.audit == {"audited_version": v1, "metrics": {"source_lds": 0.5}}
    assert new.manifest.extra["audit"] == {"audited_version": v1} and AUDIT_ASSET in new.manifest.assets
    assert {k: v for k, v in new.manifest.files.items() if k != AUDIT_ASSET} == old.manifest.files
    assert open_store(store_copy, v1).audit is None  # the audited version is left as it was


def test_republish_refuses_a_corrupt_source_and_a_moved_current(store_copy):
    v1 = current_version(store_copy)
    republish(store_copy, v1, {AUDIT_ASSET: b"{}"})
    before = list_versions(store_copy)
    with pytest.raises(StoreError, match="moved on"):  # v1 is no longer current: never roll a build back
        republish(store_copy, v1, {AUDIT_ASSET: b"{}"})
    set_current(store_copy, v1)
    f = store_copy / "versions" / v1 / "params.safetensors"
    f.write_bytes(f.read_bytes()[:-1] + b"\x00")
    with pytest.raises(StoreError, match="checksum mismatch"):
        republish(store_copy, v1, {AUDIT_ASSET: b"{}"})
    assert list_versions(store_copy) == before and current_version(store_copy) == v1
    assert not list((store_copy / "versions").glob(".tmp-*"))


def test_a_malformed_audit_asset_is_refused_on_load(store_copy):
    v1 = current_version(store_copy)
    republish(store_copy, v1, {AUDIT_ASSET: b"[1, 2]"})
    with pytest.raises(StoreError, match="audit.json: must hold a JSON object"):
        open_store(store_copy)
