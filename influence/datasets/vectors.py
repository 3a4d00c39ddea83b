"""Datasets: the built-in ``digits`` set and user files (``.npz``, ``.csv``,
``.parquet``), validated with messages that name the file, the column and
the problem.

Built-in data has no real publishers, so ``digits`` gets a documented,
deterministic source assignment (``assign_sources``): ``n_sources``
publishers whose sizes follow a Zipf law of exponent ``skew`` and which each
lean towards one class (publisher ``k`` prefers class ``k mod C``, with
weight ``affinity``), so that source attribution shows structure.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..heldout import HeldoutQuery, HeldoutSample

LABEL_COLUMN = "label"
SOURCE_COLUMN = "source"


@dataclass
class Dataset:
    """``X (n, d) float32``, ``y (n,) int64`` in ``[0, len(classes))``,
    ``source (n,) int64`` indexing ``source_ids``."""

    X: np.ndarray
    y: np.ndarray
    source: np.ndarray
    source_ids: list[str]
    classes: list[str]
    name: str = "data"
    meta: dict = field(default_factory=dict)
    heldout: HeldoutSample | None = None  # queries never trained on (published as the store's heldout.json)
    image: dict | None = None  # {"height", "width", "scale"}: inputs are images of pixels / scale

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for a in (self.X, self.y, self.source):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update("\x00".join(self.source_ids).encode())
        return "sha256:" + h.hexdigest()


def builtin_split(name: str | None, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """``(X_train, X_test, y_train, y_test)`` of the built-in vector set ``name`` with ``dim`` features
    (``digits``: 64), or None when ``name`` is none of them (a user's file)."""
    return digits_split() if name == "digits" and dim == 64 else None


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The default protocol: pixels/16, stratified 80/20 split, seed 0.
    Returns ``X_train (1437, 64), X_test (360, 64), y_train, y_test``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    X = (d.data / 16.0).astype(np.float32)
    return train_test_split(X, d.target.astype(np.int64), test_size=0.2, random_state=0, stratify=d.target)


def assign_sources(
    y: np.ndarray, n_sources: int, skew: float, affinity: float, seed: int, n_classes: int
) -> np.ndarray:
    """Deterministic publisher index per example, ``(n,) int64``."""
    rng = np.random.default_rng(seed)
    base = (np.arange(n_sources) + 1.0) ** (-skew)
    out = np.empty(len(y), dtype=np.int64)
    for c in range(n_classes):
        idx = np.flatnonzero(y == c)
        w = base * np.where(np.arange(n_sources) % n_classes == c, 1.0 + affinity, 1.0)
        out[idx] = rng.choice(n_sources, size=len(idx), p=w / w.sum())
    return out


def load_digits_train(n_sources: int = 20, skew: float = 1.0, affinity: float = 4.0, seed: int = 0) -> Dataset:
    X, _, y, _ = digits_split()
    src = assign_sources(y, n_sources, skew, affinity, seed, 10)
    ids = [f"publisher-{k:02d}" for k in range(n_sources)]
    return Dataset(X, y, src, ids, [str(c) for c in range(10)], name="digits", heldout=digits_heldout(),
                   image={"height": 8, "width": 8, "scale": 16})


def load_digits_test() -> tuple[np.ndarray, np.ndarray]:
    _, X, _, y = digits_split()
    return X, y


def digits_heldout() -> HeldoutSample:
    """The digits test split as a held-out sample, in its row order (``test-<row>``)."""
    X, y = load_digits_test()
    return HeldoutSample(description=f"the digits test split ({len(X)} examples the model never trained on)",
                         queries=[HeldoutQuery(id=f"test-{i}", input=X[i].tolist(), target=int(y[i]))
                                  for i in range(len(X))])


def _read_table(path: Path):
    import pandas as pd

    try:
        if path.suffix == ".csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except Exception as e:  # the reader's own message is the useful part
        raise DataError(path, f"cannot be read as {path.suffix[1:]}: {e}") from None


def _read_columns(path: Path, label: str | None, need_label: bool):
    """-> (X, y or None, source or None) as raw arrays."""
    if not path.exists():
        raise DataError(path, "file not found")
    if path.suffix == ".npz":
        try:
            z = np.load(path, allow_pickle=False)
            arrays = {k: z[k] for k in z.files}
        except Exception as e:
            raise DataError(path, f"cannot be read as npz: {e}") from None
        if "X" not in arrays:
            raise DataError(path, f"missing array 'X' (has {sorted(arrays)})", column="X")
        if need_label and "y" not in arrays:
            raise DataError(path, "missing array 'y'", column="y")
        return arrays["X"], arrays.get("y"), arrays.get("source")
    if path.suffix not in (".csv", ".parquet"):
        raise DataError(path, f"unsupported file type {path.suffix!r}; use .npz, .csv or .parquet")
    df = _read_table(path)
    label = label or LABEL_COLUMN
    if need_label and label not in df.columns:
        raise DataError(path, f"missing label column (columns: {list(df.columns)[:10]})", column=label)
    y = df[label].to_numpy() if label in df.columns else None
    source = df[SOURCE_COLUMN].to_numpy() if SOURCE_COLUMN in df.columns else None
    feats = df.drop(columns=[c for c in (label, SOURCE_COLUMN) if c in df.columns])
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    for col in feats.columns:
        if not is_numeric_dtype(feats[col].dtype) or is_bool_dtype(feats[col].dtype):
            raise DataError(path, f"feature column is not numeric (dtype {feats[col].dtype})", column=str(col))
    return feats.to_numpy(), y, source


def _check_features(path: Path, X: np.ndarray, dim: int | None) -> np.ndarray:
    if X.ndim != 2 or X.shape[0] == 0:
        raise DataError(path, f"features must be a non-empty n×d matrix, got shape {X.shape}", column="X")
    if not np.issubdtype(X.dtype, np.number):
        raise DataError(path, f"features must be numeric, got dtype {X.dtype}", column="X")
    X = X.astype(np.float32)
    if not np.isfinite(X).all():
        r = int(np.argwhere(~np.isfinite(X))[0][0])
        raise DataError(path, f"features contain NaN or infinity (first at row {r})", column="X")
    if dim is not None and X.shape[1] != dim:
        raise DataError(path, f"expected {dim} features per row, got {X.shape[1]}", column="X")
    return X


def _encode(path: Path, values: np.ndarray, n: int, column: str, known: list[str] | None):
    """Map labels or source ids to integer codes; ``known`` fixes the vocabulary."""
    if values.ndim != 1 or len(values) != n:
        raise DataError(path, f"must have one value per row ({n}), got shape {values.shape}", column=column)
    if values.dtype.kind == "f":
        if not np.isfinite(values).all() or not (values == np.round(values)).all():
            raise DataError(path, "must be whole numbers or strings (found NaN or fractions)", column=column)
        values = values.astype(np.int64)
    strs = np.array([str(v) for v in values])
    vocab = known if known is not None else sorted(set(strs.tolist()), key=lambda s: (len(s), s))
    index = {v: i for i, v in enumerate(vocab)}
    bad = [str(s) for s in strs if s not in index]
    if bad:
        raise DataError(path, f"unknown value {bad[0]!r} (known: {vocab[:12]})", column=column)
    return np.array([index[s] for s in strs], dtype=np.int64), vocab


def _label_name(path: Path, label: str | None) -> str:
    return "y" if path.suffix == ".npz" else (label or LABEL_COLUMN)


def load_training_file(path: str | Path, label: str | None = None) -> Dataset:
    """A user training set; examples without a ``source`` get ``"unattributed"``."""
    path = Path(path)
    X, y, source = _read_columns(path, label, need_label=True)
    X = _check_features(path, np.asarray(X), None)
    y, classes = _encode(path, np.asarray(y), X.shape[0], _label_name(path, label), None)
    if len(classes) < 2:
        raise DataError(path, "needs at least two distinct labels", column=_label_name(path, label))
    if source is None:
        src, ids = np.zeros(X.shape[0], dtype=np.int64), ["unattributed"]
    else:
        src, ids = _encode(path, np.asarray(source), X.shape[0], SOURCE_COLUMN, None)
    return Dataset(X, y, src, ids, classes, name=path.stem)


def load_query_file(
    path: str | Path, dim: int, classes: list[str], label: str | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Queries for offline scoring: ``X (B, dim)`` and optional targets."""
    path = Path(path)
    X, y, _ = _read_columns(path, label, need_label=False)
    X = _check_features(path, np.asarray(X), dim)
    if y is None:
        return X, None
    codes, _ = _encode(path, np.asarray(y), X.shape[0], _label_name(path, label), classes)
    return X, codes
