"""Admin reload (issue 19, finding 1): ``version`` is a version name published
under the store root, never a path; a version of another model kind or
another source set is refused (409) unless the request says so, and credit
recorded for sources no longer served stays in the reports."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest

from .util import query, serve

ADMIN = {"Authorization": "Bearer a-key"}
KEYS = dict(admin_keys=["a-key"], query_keys=["q-key"], report_keys=["r-key"])
REPORT = {"start": "2000-01-01", "end": "2100-01-01", "amount": "10.00", "currency": "EUR"}


def _copy_version(src_root, dst_root, name: str, **manifest_changes) -> None:
    """Copy ``src_root``'s current version into ``dst_root`` as ``name``, the
    manifest edited (not checksummed: only the tensors are)."""
    cur = (src_root / "CURRENT").read_text().strip()
    dst = dst_root / "versions" / name
    shutil.copytree(src_root / "versions" / cur, dst)
    man = json.loads((dst / "manifest.json").read_text())
    man.update(version=name, **manifest_changes)
    (dst / "manifest.json").write_text(json.dumps(man))


def test_reload_takes_a_version_name_never_a_path(settings_for, store_root, text_store, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(store_root, other)
    _copy_version(store_root, other, "v000002")
    with serve(settings_for(**KEYS)) as base:
        bad = [str(text_store / "versions" / "v000001"), str(other / "versions" / "v000002"),
               "../../other/versions/v000002", "../v000001", "v000001/", "./v000001", "v000001\n", "V000001",
               "v00001", "v٠٠٠٠٠١", "v000001\x00", "", "%2Fetc"]
        for v in bad:
            r = httpx.post(base + "/v1/admin/reload", params={"version": v}, headers=ADMIN)
            assert r.status_code == 422, (v, r.status_code, r.text)
            err = r.json()["error"]
            assert err["fields"] == [{"path": "version", "in": "query", "reason": err["fields"][0]["reason"]}]
            assert err["message"].startswith("version: ")
        r = httpx.post(base + "/v1/admin/reload", params={"version": "v000009"}, headers=ADMIN)
        assert r.status_code == 404 and r.json()["error"]["fields"][0]["path"] == "version"
        info = httpx.get(base + "/v1/store", headers=ADMIN).json()
        assert info["version"] == "v000001" and info["model"]["kind"] == "mlp"


def test_kind_change_is_refused_unless_allowed(settings_for, store_root, text_store, train_x):
    _copy_version(text_store, store_root, "v000002")
    with serve(settings_for(**KEYS)) as base:
        r = httpx.post(base + "/v1/admin/reload", params={"version": "v000002"}, headers=ADMIN)
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert err["fields"][0]["path"] == "version" and "allow_kind_change=true" in err["message"]
        assert httpx.get(base + "/v1/store", headers=ADMIN).json()["model"]["kind"] == "mlp"
        ok = httpx.post(base + "/v1/attributions", json={"queries": [query(train_x[0])]}, headers=ADMIN)
        assert ok.status_code == 200
        r = httpx.post(base + "/v1/admin/reload", params={"version": "v000002", "allow_kind_change": "true"},
                       headers=ADMIN)  # its sources differ too: each change needs its own flag
        assert r.status_code == 409 and "allow_source_change=true" in r.json()["error"]["message"]
        r = httpx.post(base + "/v1/admin/reload", headers=ADMIN,
                       params={"version": "v000002", "allow_kind_change": "true", "allow_source_change": "true"})
        assert r.status_code == 200 and r.json()["store_version"] == "v000002"
        assert httpx.get(base + "/v1/store", headers=ADMIN).json()["model"]["kind"] == "gpt"


def test_source_change_is_refused_unless_allowed_and_old_credit_stays(settings_for, store_root, train_x):
    cur = json.loads((store_root / "versions" / "v000001" / "manifest.json").read_text())
    renamed = [f"renamed-{i}" for i in range(len(cur["source_ids"]))]
    _copy_version(store_root, store_root, "v000002", source_ids=renamed)
    with serve(settings_for(**KEYS)) as base:
        sent = httpx.post(base + "/v1/attributions", json={"queries": [query(train_x[i]) for i in range(4)]},
                          headers=ADMIN)
        assert sent.status_code == 200 and sent.json()["recorded"] is True
        before = httpx.get(base + "/v1/reports/compensation", params=REPORT, headers=ADMIN).json()
        assert before["total_credit_units"] > 0
        r = httpx.post(base + "/v1/admin/reload", params={"version": "v000002"}, headers=ADMIN)
        assert r.status_code == 409 and "allow_source_change=true" in r.json()["error"]["message"]
        r = httpx.post(base + "/v1/admin/reload", params={"version": "v000002", "allow_source_change": "1"},
                       headers=ADMIN)
        assert r.status_code == 200, r.text
        after = httpx.get(base + "/v1/reports/compensation", params=REPORT, headers=ADMIN).json()
        assert after["lines"] == before["lines"]  # credit recorded for the old ids is reported as before
        srcs = {s["id"]: s for s in httpx.get(base + "/v1/sources", headers=ADMIN).json()["sources"]}
        old = [ln["source_id"] for ln in before["lines"]]
        assert all(srcs[i]["in_store"] is False and srcs[i]["credit_units"] > 0 for i in old)
        assert all(srcs[i]["in_store"] is True for i in renamed)


@pytest.mark.parametrize("flag", ["allow_kind_change", "allow_source_change"])
def test_reload_needs_an_admin_key_whatever_the_flags(settings_for, flag):
    with serve(settings_for(**KEYS)) as base:
        r = httpx.post(base + "/v1/admin/reload", params={"version": "/etc", flag: "true"},
                       headers={"Authorization": "Bearer r-key"})
        assert r.status_code == 403
