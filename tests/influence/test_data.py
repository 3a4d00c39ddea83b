"""Data loading: the default protocol split, source assignment, user files,
and clear errors naming the file, column and problem."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from influence.datasets.vectors import (
    assign_sources,
    digits_split,
    load_digits_train,
    load_query_file,
    load_training_file,
)
from influence.errors import DataError


def test_digits_protocol():
    Xtr, Xte, ytr, yte = digits_split()
    assert Xtr.shape == (1437, 64) and Xte.shape == (360, 64)
    assert 0.0 <= Xtr.min() and Xtr.max() <= 1.0
    ds = load_digits_train()
    assert ds.n == 1437 and len(ds.source_ids) == 20
    sizes = np.bincount(ds.source, minlength=20)
    assert sizes.min() > 0 and sizes.max() > 5 * sizes.min()  # skewed, every publisher present
    assert ds.fingerprint() == load_digits_train().fingerprint()


def test_source_affinity_leans_to_one_class():
    y = np.repeat(np.arange(10), 200)
    src = assign_sources(y, 10, skew=0.0, affinity=9.0, seed=0, n_classes=10)
    share = np.mean(y[src == 3] == 3)
    assert share > 0.4  # 10x weight for its own class vs 1x for each of nine others -> ~0.5


def test_npz_csv_parquet_round_trip(tmp_path):
    X = np.random.default_rng(0).random((30, 4)).astype(np.float32)
    y = np.array(["cat", "dog", "eel"] * 10)
    src = np.array(["a", "b"] * 15)
    np.savez(tmp_path / "d.npz", X=X, y=y, source=src)
    df = pd.DataFrame(X, columns=list("pqrs")).assign(label=y, source=src)
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_parquet(tmp_path / "d.parquet")
    for name in ("d.npz", "d.csv", "d.parquet"):
        ds = load_training_file(tmp_path / name)
        assert ds.classes == ["cat", "dog", "eel"] and ds.source_ids == ["a", "b"]
        np.testing.assert_allclose(ds.X, X, rtol=1e-6)
        assert ds.y.tolist()[:3] == [0, 1, 2]
    Xq, yq = load_query_file(tmp_path / "d.csv", 4, ["cat", "dog", "eel"])
    assert Xq.shape == (30, 4) and yq[:3].tolist() == [0, 1, 2]


@pytest.mark.parametrize("make, column, problem", [
    (lambda p: pd.DataFrame({"a": ["x", "y"], "label": [0, 1]}).to_csv(p, index=False), "a", "not numeric"),
    (lambda p: pd.DataFrame({"a": [1.0, 2.0]}).to_csv(p, index=False), "label", "missing label column"),
    (lambda p: pd.DataFrame({"a": [1.0, np.nan], "label": [0, 1]}).to_csv(p, index=False), "X", "NaN"),
    (lambda p: pd.DataFrame({"a": [1.0, 2.0], "label": [0.5, 1]}).to_csv(p, index=False), "label", "whole numbers"),
    (lambda p: p.write_text("a,label\n1,0\n2\n3,4,5\n"), None, "cannot be read"),
])
def test_bad_files_named_clearly(tmp_path, make, column, problem):
    path = tmp_path / "bad.csv"
    make(path)
    with pytest.raises(DataError) as e:
        load_training_file(path)
    assert str(path) in str(e.value) and problem in str(e.value)
    if column:
        assert e.value.column == column


def test_query_file_errors(tmp_path):
    np.savez(tmp_path / "q.npz", X=np.zeros((3, 5)))
    with pytest.raises(DataError, match="expected 4 features"):
        load_query_file(tmp_path / "q.npz", 4, ["0", "1"])
    np.savez(tmp_path / "q2.npz", X=np.zeros((2, 4)), y=np.array([0, 7]))
    with pytest.raises(DataError, match="unknown value '7'"):
        load_query_file(tmp_path / "q2.npz", 4, ["0", "1"])
    with pytest.raises(DataError, match="file not found"):
        load_query_file(tmp_path / "nope.npz", 4, ["0", "1"])
    with pytest.raises(DataError, match="unsupported file type"):
        (tmp_path / "q.txt").write_text("1")
        load_query_file(tmp_path / "q.txt", 4, ["0", "1"])
