"""The dashboard on a Hugging Face (``hf``) store, in a real headless
Chromium against a real uvicorn and Redis: the store badge counts
documents, the text playground offers passages, shows every BPE token as
readable text with its log p, publishers by display name and documents;
the credit view and the report name the publishers. Helpers and fixtures
of ``test_dashboard`` and ``test_dashboard_text``."""

from __future__ import annotations

import httpx
import pytest

from service.settings import Settings

from . import test_dashboard as dash
from .hf_store import HF_NAMES
from .test_dashboard import ADMIN, PUB, QUERY, REPORT, _h, _login
from .test_dashboard_text import NAMES, _attrs, _check_answer, _submit, _texts
from .util import REDIS_URL, serve

browser, page = dash.browser, dash.page  # their fixtures, used here too


@pytest.fixture
def hf_dash(hf_store, prefix, tmp_path):
    s = Settings(_env_file=None, store=hf_store, redis_url=REDIS_URL, redis_prefix=prefix, data_dir=tmp_path / "var",
                 max_wait_ms=1.0, replay_interval_s=0.2, admin_keys=[ADMIN], query_keys=[QUERY], report_keys=[REPORT],
                 publisher_keys={PUB: "pub-1"})
    with serve(s) as base:
        yield base, s


def test_hf_playground_and_report(hf_dash, hf_att, page):
    assert HF_NAMES == NAMES  # _check_answer's display names
    base, _ = hf_dash
    passages = httpx.get(base + "/v1/playground/passages", headers=_h(QUERY)).json()["passages"]
    _login(page, base, QUERY)
    assert "documents" in page.text_content("#store-badge")
    page.click("#tab-playground")
    page.wait_for_selector("#pgt-passages .passage")
    assert page.is_hidden("#pg-main") and page.is_visible("#pgt-main")
    assert _attrs(page, "#pgt-passages .passage", "data-id") == [p["id"] for p in passages]
    assert "33 tokens" in page.text_content("#pgt-caption")
    page.click("#pgt-passages .passage >> nth=2")
    _submit(page)
    r = httpx.post(base + "/v1/attributions", headers=_h(QUERY), json={"queries": [{"text": passages[2]["text"]}],
                                                                       "top_k": 10, "granularity": "both",
                                                                       "record": False})
    a = r.json()["attributions"][0]
    _check_answer(page, a)  # tokens: the BPE pieces as text, " w" with its space
    assert a["tokens"] == hf_att.tokenizer.decode(hf_att.encode(text=passages[2]["text"]).ids)
    assert any(t.startswith(" ") for t in _texts(page, "#pgt-tokens .tok .w"))

    page.fill("#pgt-input", "w1 w2")  # a prompt and completion: only the completion is scored
    page.fill("#pgt-completion", " s0x1 s0x2")
    page.check("#pgt-record")
    _submit(page)
    b = httpx.post(base + "/v1/attributions", headers=_h(QUERY), json={
        "queries": [{"prompt": "w1 w2", "completion": " s0x1 s0x2"}], "top_k": 10, "granularity": "both",
        "record": False}).json()["attributions"][0]
    _check_answer(page, b)
    assert page.locator("#pgt-tokens .tok.ctx").count() == b["n_tokens"] - b["n_targets"] > 0

    # the recorded query's credit, by display name, in the report
    assert httpx.get(base + "/v1/sources", headers=_h(REPORT)).json()["total_queries"] == 1
    page.evaluate("() => sessionStorage.clear()")  # another key: the page asks again
    _login(page, base, REPORT)
    page.click("#tab-report")
    page.wait_for_function("() => document.getElementById('rep-start').value !== ''")
    page.click("#rep-run")
    page.wait_for_selector("#rep-result:not([hidden])")
    names = _texts(page, "#rep-body .src-name")
    assert names and set(names) <= set(NAMES.values())
