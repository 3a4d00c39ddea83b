"""``fa-worker audit`` end to end on copies of the tiny store: a new version
with a checksummed audit.json, sane metrics, the audited version untouched,
and bad input answered with one line and exit 2, the store unchanged."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from datetime import datetime

import numpy as np
import pytest
import torch

from influence.store import current_version, list_versions, open_store
from worker.cli import main


def _hashes(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def audited(tiny_store, tmp_path_factory):
    """A copy of the tiny store audited once with the CLI defaults."""
    root = tmp_path_factory.mktemp("audited") / "s"
    shutil.copytree(tiny_store, root)
    v1 = current_version(root)
    before = _hashes(root / "versions" / v1)
    assert main(["audit", "--store", str(root), "--quiet"]) == 0
    return root, v1, before


def test_audit_publishes_a_new_checksummed_version(audited):
    root, v1, before = audited
    v2 = current_version(root)
    assert list_versions(root) == [v1, v2] and v2 != v1
    st = open_store(root)  # verifies every checksum, audit.json included
    man = st.manifest
    blob = (root / "versions" / v2 / "audit.json").read_bytes()
    assert "audit.json" in man.assets and man.files["audit.json"] == hashlib.sha256(blob).hexdigest()
    assert st.audit == json.loads(blob)
    assert man.extra["audit"]["audited_version"] == v1 and man.extra["audit"]["file"] == "audit.json"
    old = open_store(root, v1)
    assert old.audit is None and _hashes(root / "versions" / v1) == before  # the audited version is untouched
    for a, b in ((old.params, st.params), (old.examples, st.examples), (old.sources, st.sources)):
        assert all(torch.equal(v, b[0][k]) for k, v in a[0].items())


def test_audit_metrics_are_finite_and_in_range(audited):
    root, v1, _ = audited
    a = open_store(root).audit
    m = a["metrics"]
    for key in ("source_lds", "loso_pearson", "loso_spearman"):
        assert math.isfinite(m[key]) and -1 <= m[key] <= 1, key
    assert 0 <= m["top1_agree"] <= 1
    for w in (m["whatif_loso"], m["whatif_subsets"]):
        assert -1 <= w["pearson"] <= 1 and 0 <= w["mae"] < 10 and w["actual_mean_abs"] > 0
    assert m["source_lds"] > 0.3 and m["loso_pearson"] > 0.3  # the tiny store's scores carry signal
    s = a["settings"]
    assert (s["subsets"], s["seeds"], s["n_train"], s["n_sources"]) == (16, 2, 120, 5)
    assert s["models_trained"] == (1 + 16 + 5) * 2 and len(s["loso_sources"]) == 5
    assert s["query_set"].startswith("digits test split")
    assert a["audited_version"] == a["content_version"] == v1 and a["schema"] == 1
    assert a["truth"]["full_vs_store_margin_max_abs"] < 1e-3  # the store's own recipe reproduces its model
    assert set(a["truth"]["noise"]) >= {"loso_pearson_seed0_vs_rest"}
    assert a["durations_s"]["total"] > 0 and datetime.fromisoformat(a["created_at"]).tzinfo is not None


def test_info_shows_the_audit_or_says_there_is_none(audited, tiny_store, capsys):
    root, v1, _ = audited
    assert main(["info", "--store", str(root)]) == 0
    assert json.loads(capsys.readouterr().out)["audit"]["audited_version"] == v1
    assert main(["info", "--store", str(tiny_store)]) == 0
    assert json.loads(capsys.readouterr().out)["audit"] is None


def _refused(argv, capsys, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1, err
    for n in needles:
        assert n in err, (n, err)


def test_bad_stores_are_refused(tmp_path, tiny_store, capsys):
    _refused(["audit", "--store", str(tmp_path / "nope")], capsys, str(tmp_path / "nope"), "no such store directory")
    (tmp_path / "empty").mkdir()
    _refused(["audit", "--store", str(tmp_path / "empty")], capsys, str(tmp_path / "empty"), "no CURRENT")
    (tmp_path / "file").write_text("x")
    _refused(["audit", "--store", str(tmp_path / "file")], capsys, "no such store directory")
    bad = tmp_path / "corrupt"
    shutil.copytree(tiny_store, bad)
    v = current_version(bad)
    f = bad / "versions" / v / "responses.safetensors"
    f.write_bytes(f.read_bytes()[:-1] + b"\x01")
    _refused(["audit", "--store", str(bad)], capsys, "responses.safetensors", "checksum mismatch")
    assert list_versions(bad) == [v] and current_version(bad) == v


@pytest.mark.parametrize(("opt", "value", "needle"), [
    ("--subsets", "1", "--subsets: must be at least 3"), ("--seeds", "0", "--seeds: must be at least 1"),
    ("--queries", "1", "--queries: must be at least 2"), ("--keep-prob", "1.5", "--keep-prob: must be strictly"),
    ("--loso-sources", "2", "--loso-sources: must be at least 3"), ("--keep", "1", "--keep: must be at least 2"),
])
def test_bad_options_are_refused_and_the_store_is_unchanged(tiny_store, tmp_path, capsys, opt, value, needle):
    root = tmp_path / "s"
    shutil.copytree(tiny_store, root)
    before = _hashes(root)
    _refused(["audit", "--store", str(root), opt, value], capsys, needle)
    assert _hashes(root) == before


def test_a_non_number_option_is_an_argparse_error(tiny_store, capsys):
    with pytest.raises(SystemExit) as e:
        main(["audit", "--store", str(tiny_store), "--subsets", "many"])
    assert e.value.code == 2 and "--subsets: invalid int value" in capsys.readouterr().err


@pytest.fixture(scope="module")
def text_store(tmp_path_factory):
    """A tiny text store built from a JSONL corpus (3 publishers, 36 training documents)."""
    from ..text_corpus import TINY_TEXT_STORE, build_text_store

    tmp = tmp_path_factory.mktemp("text-audit")
    return build_text_store(tmp, *TINY_TEXT_STORE), tmp / "docs.jsonl"


def test_text_store_audit_retrains_language_models(text_store, tmp_path):
    """Every source left out in turn (3 of 3), 3 subsets, 1 seed: 7 GPTs
    retrained on the store's corpus; the full-data retrain reproduces the
    store's own model; the audit is published like an MLP store's."""
    src, _ = text_store
    root = tmp_path / "s"
    shutil.copytree(src, root)
    v1 = current_version(root)
    args = ["audit", "--store", str(root), "--subsets", "3", "--seeds", "1", "--queries", "12",
            "--loso-sources", "3", "--quiet"]
    assert main(args) == 0
    st = open_store(root)
    audit = st.audit
    assert st.manifest.version != v1 and audit["audited_version"] == v1 and audit["store_kind"] == "gpt"
    assert audit["settings"]["loso_sources"] == ["pub-0", "pub-1", "pub-2"] and audit["settings"]["models_trained"] == 7
    assert audit["settings"]["n_train_targets"] == st.manifest.data["n_targets"]
    assert audit["truth"]["full_vs_store_output_max_abs"] < 1e-3
    o = audit["outputs"]  # the retrained outputs, for other methods on the same truth (bench.sources.lm_quality)
    assert np.shape(o["full"]) == (1, 12) and np.shape(o["subset"]) == (3, 1, 12) and np.shape(o["loso"]) == (3, 1, 12)
    assert np.shape(o["keep"]) == (3, 3) and o["loso_index"] == [0, 1, 2]
    m = audit["metrics"]
    assert -1 <= m["source_lds"] <= 1 and -1 <= m["loso_pearson"] <= 1 and 0 <= m["top1_agree"] <= 1
    assert m["whatif_loso"]["mae"] >= 0 and m["whatif_subsets"]["actual_mean_abs"] > 0


def test_text_store_audit_refuses_a_changed_corpus_and_matched(text_store, tmp_path, capsys):
    src, data = text_store
    root = tmp_path / "s"
    shutil.copytree(src, root)
    before = _hashes(root)
    _refused(["audit", "--store", str(root), "--matched"], capsys, "--matched: not supported for text stores")
    keep = data.read_bytes()
    try:
        data.write_bytes(keep + b"\n")
        _refused(["audit", "--store", str(root)], capsys, str(data), "gone or has changed")
    finally:
        data.write_bytes(keep)
    assert _hashes(root) == before


def test_user_file_store_needs_held_out_queries(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.random((90, 3))

    def csv(rows):
        return "\n".join(["f1,f2,f3,label,source"] + [f"{a},{b},{c},{int(a > b)},pub{int(c * 4)}"
                                                      for a, b, c in rows])

    (tmp_path / "train.csv").write_text(csv(X[:60]))
    (tmp_path / "held.csv").write_text(csv(X[60:]))
    root = tmp_path / "s"
    assert main(["build", "--preset", "tiny", "--quiet", "--data", str(tmp_path / "train.csv"), "--store", str(root),
                 "--set", "method.steps=5"]) == 0
    capsys.readouterr()
    _refused(["audit", "--store", str(root)], capsys, "--query-file")
    assert main(["audit", "--store", str(root), "--quiet", "--seeds", "1", "--subsets", "4",
                 "--query-file", str(tmp_path / "held.csv")]) == 0
    a = open_store(root).audit
    assert a["settings"]["query_set"].endswith("held.csv: 30 of 30") and a["settings"]["n_sources"] == 4


def test_build_with_audit(tmp_path, capsys):
    root = tmp_path / "s"
    assert main(["build", "--preset", "tiny", "--quiet", "--store", str(root), "--set", "method.steps=5",
                 "--audit"]) == 0
    out = capsys.readouterr().out
    assert "audited v000001" in out and "published v000002" in out
    assert list_versions(root) == ["v000001", "v000002"] and open_store(root).audit["audited_version"] == "v000001"


def test_matched_truth_and_a_missing_query_file(tiny_store, tmp_path, capsys):
    root = tmp_path / "s"
    shutil.copytree(tiny_store, root)
    _refused(["audit", "--store", str(root), "--query-file", str(tmp_path / "q.npz")], capsys, "q.npz",
             "file not found")
    assert list_versions(root) == list_versions(tiny_store)
    assert main(["audit", "--store", str(root), "--quiet", "--matched", "--seeds", "1", "--subsets", "4",
                 "--queries", "32"]) == 0
    a = open_store(root).audit
    assert a["settings"]["models_trained"] == (1 + 4 + 5) + (4 + 5)
    assert math.isfinite(a["matched"]["loso_pearson"]) and a["truth"]["matched"]["effect_abs_mean"] > 0
    assert a["truth"]["noise"] == {}  # one seed: no noise estimate
