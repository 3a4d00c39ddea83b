"""Stores written by an earlier release stay readable (issue 24: "versioned
indexes that survive upgrades"): ``format3/`` holds one store of each model
kind (mlp, gpt, hf) as the code of 2026-12-07 wrote them (store format 3,
``make_stores.py``), never rewritten. Today's reader must open them, verify
every checksum and score the same queries to the numbers recorded then.

A change to the store format or to what a stored row means fails here; the
fix is a reader for the old format (``influence.store.READABLE_FORMATS``),
not new fixtures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from influence.store import READABLE_FORMATS, open_store

from .make_stores import _scores

HERE = Path(__file__).parent / "format3"


@pytest.fixture(params=["mlp", "gpt", "hf"])
def old_store(request, tmp_path) -> Path:
    # a copy: opening a store may write lock files, and the fixtures must stay byte for byte
    return Path(shutil.copytree(HERE / request.param, tmp_path / request.param))


def test_an_old_store_opens_and_scores_as_it_did(old_store):
    want, got = json.loads((old_store / "expected.json").read_text()), _scores(old_store)
    assert got["format_version"] == want["format_version"] in READABLE_FORMATS
    for key in ("sources", "examples", "logprob"):
        if key in want:
            w, g = np.asarray(want[key]), np.asarray(got[key])
            assert g.shape == w.shape, key
            # float32 readouts: summation order may change between releases, the numbers may not
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * np.abs(w).max(), err_msg=key)


def test_an_old_store_with_a_changed_byte_is_refused(old_store):
    """The fixtures are checked, not trusted: the reader verifies them (so the test above reads real bytes)."""
    version = (old_store / "CURRENT").read_text().strip()
    f = old_store / "versions" / version / "responses.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(Exception, match="responses.safetensors"):
        open_store(old_store)
