"""A store's audit reaches the user: ``/v1/store`` says ``audit: null`` for
a version never audited, and after ``fa-worker audit`` (a real run on a copy
of the tiny store) and a reload it carries the audit's metrics and date, and
``POST /v1/whatif`` answers carry its measured what-if accuracy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from .util import serve

ROOT = Path(__file__).resolve().parents[2]


def test_store_info_shows_the_audit_or_says_there_is_none(settings_for, store_root):
    with serve(settings_for()) as base:
        before = httpx.get(base + "/v1/store").json()
        assert before["audit"] is None
        cmd = [sys.executable, "-m", "worker", "audit", "--store", str(store_root), "--subsets", "4", "--seeds", "1",
               "--queries", "64", "--loso-sources", "3"]
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        assert httpx.post(base + "/v1/admin/reload").status_code == 200
        after = httpx.get(base + "/v1/store").json()
        ids = after["source_ids"]
        one = httpx.post(base + "/v1/whatif", json={"sample": 8, "remove": [ids[0]]}).json()
        half = httpx.post(base + "/v1/whatif", json={"sample": 8, "remove": ids[:2], "weights": {ids[2]: 3.0}}).json()
    audit = after["audit"]
    # what-if answers carry the audit's measured accuracy for their kind of scenario
    for got, scenario, key in ((one, "one_source_removed", "whatif_loso"),
                               (half, "half_the_sources_removed", "whatif_subsets")):
        acc = got["accuracy"]
        assert acc["scenario"] == scenario and acc["audited_version"] == before["version"] and acc["output"] == "margin"
        assert acc["pearson"] == audit["metrics"][key]["pearson"] and acc["mae"] == audit["metrics"][key]["mae"]
        assert "measured by this store's audit" in got["accuracy_note"]
    assert after["version"] != before["version"] and audit["audited_version"] == before["version"]
    assert -1.0 <= audit["metrics"]["source_lds"] <= 1.0 and audit["created_at"]
    assert audit["settings"]["subsets"] == 4
