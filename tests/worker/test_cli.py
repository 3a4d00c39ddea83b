"""The worker CLI: build, score, info, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from influence.datasets.vectors import load_digits_test
from influence.store import open_store
from worker.cli import main
from worker.config import ConfigError, load_config


def test_score_writes_matrices_and_summary(tmp_path, tiny_store):
    X, y = load_digits_test()
    np.savez(tmp_path / "q.npz", X=X[:6], y=y[:6])
    assert main(["score", "--store", str(tiny_store), "--queries", str(tmp_path / "q.npz"),
                 "--out", str(tmp_path / "out"), "--top-k", "3"]) == 0
    ex, src = np.load(tmp_path / "out/examples.npy"), np.load(tmp_path / "out/sources.npy")
    assert ex.shape == (6, 120) and src.shape == (6, 5)
    np.testing.assert_allclose(src.sum(1), ex.sum(1), rtol=1e-3, atol=1e-4)
    summary = (tmp_path / "out/summary.txt").read_text()
    assert summary.count("query ") == 6 and "publisher-" in summary
    cols = json.loads((tmp_path / "out/columns.json").read_text())
    assert cols["sources"] == open_store(tiny_store).manifest.source_ids and cols["examples"] == list(range(120))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_score_tables_carry_the_ids(tmp_path, tiny_store, fmt):
    import pandas as pd

    X, y = load_digits_test()
    np.savez(tmp_path / "q.npz", X=X[:3], y=y[:3])
    assert main(["score", "--store", str(tiny_store), "--queries", str(tmp_path / "q.npz"),
                 "--out", str(tmp_path / "out"), "--format", fmt]) == 0
    read = pd.read_csv if fmt == "csv" else pd.read_parquet
    src = read(tmp_path / f"out/sources.{fmt}")
    ids = open_store(tiny_store).manifest.source_ids
    assert list(src.columns) == ["query", *ids] and list(src["query"]) == [0, 1, 2]
    np.testing.assert_allclose(src[ids].to_numpy(), np.load(tmp_path / "out/sources.npy"), rtol=1e-6)
    assert read(tmp_path / f"out/examples.{fmt}").shape == (3, 121)


def test_score_per_token_on_a_vector_store_is_refused(tmp_path, tiny_store, capsys):
    X, y = load_digits_test()
    np.savez(tmp_path / "q.npz", X=X[:2], y=y[:2])
    assert main(["score", "--store", str(tiny_store), "--queries", str(tmp_path / "q.npz"),
                 "--out", str(tmp_path / "out"), "--per-token"]) == 2
    err = capsys.readouterr().err
    assert "--per-token is for text stores" in err and "mlp" in err and not (tmp_path / "out").exists()


def test_build_from_user_csv_via_module(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.random((40, 3))
    lines = ["f1,f2,f3,label,source"] + [f"{a},{b},{c},{int(a > b)},pub{int(c * 3)}" for a, b, c in X]
    (tmp_path / "d.csv").write_text("\n".join(lines))
    r = subprocess.run([sys.executable, "-m", "worker", "build", "--preset", "tiny", "--quiet", "--data",
                        str(tmp_path / "d.csv"), "--store", str(tmp_path / "s"), "--set", "method.steps=5"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    st = open_store(tmp_path / "s")
    assert st.manifest.model.widths == [3, 12, 2] and st.manifest.source_ids == ["pub0", "pub1", "pub2"]


def test_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "bad.csv").write_text("a,label\nx,1\ny,0\n")
    assert main(["build", "--preset", "tiny", "--quiet", "--data", str(tmp_path / "bad.csv"),
                 "--store", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.csv" in err and "'a'" in err and "Traceback" not in err
    assert main(["info", "--store", str(tmp_path / "nothing")]) == 2
    assert "no store published yet" in capsys.readouterr().err
    assert not (tmp_path / "s").exists() or not (tmp_path / "s" / "CURRENT").exists()


def test_config_file_and_overrides(tmp_path):
    (tmp_path / "c.toml").write_text('[method]\nsteps = 7\n[train]\nepochs = 2\n')
    cfg = load_config("tiny", tmp_path / "c.toml", ["method.eta=0.1"])
    assert (cfg.method.steps, cfg.train.epochs, cfg.method.eta) == (7, 2, 0.1)
    (tmp_path / "c.yaml").write_text("method:\n  mode: two\n")
    assert load_config("tiny", tmp_path / "c.yaml").method.mode == "two"
    (tmp_path / "bad.toml").write_text('[method]\nstepz = 7\n')
    with pytest.raises(ConfigError, match=r"bad.toml: method.stepz: Extra inputs"):
        load_config("tiny", tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("huge")


@pytest.mark.parametrize("preset, over, match", [
    ("brown", ["train.lr=0.1"], r"^train\.lr: not used by the gpt recipe \(set: lr\); it reads only device, seed$"),
    ("brown", ["train.epochs=3", "train.batch_size=4"], r"^train\.batch_size: not used by the gpt recipe"),
    ("digits", ["train.betas=[0.9, 0.99]"], r"^train\.betas: not used by the mlp recipe with optimizer 'sgd'"),
    ("tiny", ["train.optimizer=adam", "train.momentum=0.5"], r"^train\.momentum: .* optimizer 'adam'"),
])
def test_a_train_setting_the_recipe_ignores_is_refused(preset, over, match):
    """Issue 29: for kind gpt, train.lr, epochs and batch_size were silently ignored."""
    with pytest.raises(ConfigError, match=match):
        load_config(preset, overrides=over)
    load_config(preset, overrides=["train.seed=5"])  # what every recipe reads stays settable


def test_a_curvature_the_kind_does_not_have_is_refused():
    with pytest.raises(ConfigError, match="method.curvature: 'fisher' is not built for kind 'mlp'"):
        load_config("digits", overrides=["method.curvature=fisher"])
    with pytest.raises(ConfigError, match="method.curvature: 'hessian' is not built for kind 'gpt'"):
        load_config("brown", overrides=["method.curvature=hessian", "method.eta=0.4"])
    assert load_config("brown", overrides=["method.curvature=fisher"]).method.curvature == "fisher"
