"""Reloads that cannot succeed say so and keep serving (issue 28 rows 7 and 8):
a version directory whose manifest names another version is refused naming
``version``; a plain reload whose CURRENT names a damaged version is a 409
naming it, why, and the version still served (it was a 503
``store_unavailable`` while the old version served on)."""

from __future__ import annotations

import json
import shutil

import httpx

from influence.errors import StoreError
from influence.store import open_store

from .util import query, serve

ADMIN = {"Authorization": "Bearer a-key"}
KEYS = dict(admin_keys=["a-key"], query_keys=["q-key"], report_keys=["r-key"])


def test_a_version_whose_manifest_names_another_is_refused(settings_for, store_root, train_x):
    shutil.copytree(store_root / "versions" / "v000001", store_root / "versions" / "v000206")  # says v000001
    try:
        open_store(store_root, "v000206")
        raise AssertionError("a renamed version was read")
    except StoreError as e:
        assert "names version 'v000001', not 'v000206'" in str(e)
    with serve(settings_for(**KEYS)) as base:
        r = httpx.post(base + "/v1/admin/reload", params={"version": "v000206"}, headers=ADMIN)
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert err["code"] == "version_unloadable" and err["fields"][0]["path"] == "version"
        assert "v000206" in err["message"] and "still serving v000001" in err["message"]
        ok = httpx.post(base + "/v1/attributions", json={"queries": [query(train_x[0])]}, headers=ADMIN)
        assert ok.status_code == 200 and ok.json()["store_version"] == "v000001"


def test_a_plain_reload_onto_a_damaged_version_is_a_409_naming_it(settings_for, store_root, train_x):
    src, dst = store_root / "versions" / "v000001", store_root / "versions" / "v000002"
    shutil.copytree(src, dst)
    man = json.loads((dst / "manifest.json").read_text())
    (dst / "manifest.json").write_text(json.dumps({**man, "version": "v000002"}))
    f = next(p for p in dst.glob("*.safetensors"))
    f.write_bytes(f.read_bytes()[:-7] + b"garbage")  # checksum mismatch
    with serve(settings_for(**KEYS)) as base:
        (store_root / "CURRENT").write_text("v000002\n")
        r = httpx.post(base + "/v1/admin/reload", headers=ADMIN)
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert err["code"] == "version_unloadable" and err["fields"] == [
            {"path": "version", "in": "query", "reason": err["fields"][0]["reason"]}]
        assert "version v000002: cannot be loaded" in err["message"] and "checksum" in err["message"]
        assert "still serving v000001" in err["message"]
        ok = httpx.post(base + "/v1/attributions", json={"queries": [query(train_x[0])]}, headers=ADMIN)
        assert ok.status_code == 200 and ok.json()["store_version"] == "v000001"
