"""A store's held-out sample (``influence.heldout``): made by the dataset,
published by the worker as ``heldout.json``, checked on load."""

import json

import numpy as np
import pytest

from influence.datasets.brown import GENRE_NAMES, PASSAGE_WORDS, heldout_sample, load_brown
from influence.datasets.vectors import load_digits_test
from influence.errors import StoreError
from influence.heldout import HELDOUT_ASSET, HeldoutSample, spread, window
from influence.store import load_version, open_store


def test_spread_prefixes_are_the_smaller_spreads():
    labels = [3, 1, 1, 0, 3, 2, 0, 2, 1]
    assert spread(labels, 4) == [3, 1, 5, 0]  # the first of each label, in label order
    for n in range(len(labels) + 1):
        assert spread(labels, len(labels))[:n] == spread(labels, n)


def test_brown_sample_one_window_per_genre_first_with_its_source():
    samples = load_brown()
    ids = [s.id for s in samples[::9]][:40]
    by_id = {s.id: s for s in samples}
    for level in ("publication", "genre"):
        got = heldout_sample(ids, level).queries
        assert sorted(q.document for q in got) == sorted(ids)
        n_genres = len({by_id[i].genre for i in ids})
        assert len({q.genre for q in got[:n_genres]}) == n_genres  # one per genre first
        for q in got:
            doc = by_id[q.document]
            assert q.id == f"heldout-{doc.id}" and q.genre == GENRE_NAMES[doc.genre]
            assert q.source == (doc.genre if level == "genre" else doc.publisher_id)
            assert q.text.split(" ") == window(doc.tokens, PASSAGE_WORDS) and q.input is None


def test_a_built_digits_store_carries_its_test_split(tiny_store):
    store = open_store(tiny_store)
    got = store.heldout
    X, y = load_digits_test()
    assert HELDOUT_ASSET in store.manifest.assets and len(got.queries) == len(X)
    Xs, ys = got.arrays()
    assert np.array_equal(Xs, X) and np.array_equal(ys, y)  # bit for bit through JSON
    assert [q.id for q in got.queries[:3]] == ["test-0", "test-1", "test-2"]
    assert store.manifest.data["image"] == {"height": 8, "width": 8, "scale": 16}


def test_a_damaged_sample_is_refused_on_load(tiny_store, tmp_path):
    import shutil

    from influence.store import republish

    root = tmp_path / "store"
    shutil.copytree(tiny_store, root)
    version = open_store(root).version
    bad = json.dumps({"description": "x", "queries": [{"id": 1, "input": "no"}]}).encode()
    path = republish(root, version, {HELDOUT_ASSET: bad})  # checksummed like any asset, but not a sample
    with pytest.raises(StoreError, match="heldout.json: not a held-out sample"):
        load_version(path)
    assert HeldoutSample.from_bytes(open_store(root, version).assets[HELDOUT_ASSET]).queries
