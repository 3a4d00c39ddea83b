"""The dashboard on a Hugging Face (``hf``) store, in a real headless
Chromium against a real uvicorn and Redis: the store badge counts
documents, the text playground offers passages, shows every BPE token as
readable text with its log p, publishers by display name and documents;
the credit view and the report name the publishers. Helpers and fixtures
of ``test_dashboard`` and ``test_dashboard_text``."""

from __future__ import annotations

import base64
from pathlib import Path

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
    _check_answer(page, a)  # tokens: the text's own pieces, " w" with its space
    assert a["tokens"] == hf_att.encode(text=passages[2]["text"]).tokens
    assert "".join(_texts(page, "#pgt-tokens .tok .w")) == passages[2]["text"]
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


# pixels of a highlight: a tint of one of the palette's colours (not white, not grey)
TINTED = """async b64 => { const img = new Image(); img.src = 'data:image/png;base64,' + b64; await img.decode();
  const c = document.createElement('canvas'); c.width = img.width; c.height = img.height;
  const x = c.getContext('2d'); x.drawImage(img, 0, 0);
  const d = x.getImageData(0, 0, c.width, c.height).data; let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    const hi = Math.max(d[i], d[i + 1], d[i + 2]), lo = Math.min(d[i], d[i + 1], d[i + 2]);
    if (hi - lo > 25) n++; }
  return n / (d.length / 4); }"""


def test_hf_playground_highlights_the_answer_by_publisher(hf_dash, hf_att, page, tmp_path):
    """Per token (the default): the text drawn exactly as typed (non-ASCII
    too), each span of the answer in its top publisher's colour, a legend of
    those publishers, and a hover panel with a token's log p and top scores;
    off: no highlight, and the request carries no per_token."""
    base, _ = hf_dash
    _login(page, base, QUERY)
    page.click("#tab-playground")
    page.wait_for_selector("#pgt-passages .passage")
    text = "w1 s0x1 s0x2 w5 café 😀 s2x1 w9"
    assert len(hf_att.tokenizer.tokenize(text)) <= 33
    page.fill("#pgt-input", text)
    _submit(page)
    assert page.get_attribute("#pgt-result", "data-state") == "done", page.text_content("#pgt-msg")
    a = httpx.post(base + "/v1/attributions", headers=_h(QUERY), json={
        "queries": [{"text": text}], "top_k": 10, "granularity": "both", "record": False, "per_token": True,
        "token_top_k": 3}).json()["attributions"][0]
    _check_answer(page, a)
    assert page.is_visible("#pgt-pt")
    assert page.text_content("#pgt-highlight") == text  # context + spans: the text as typed
    assert page.text_content("#pgt-highlight .ctx") == text[:a["per_token"][0]["start_char"]]
    assert _attrs(page, "#pgt-highlight .hl", "data-source") == [s["source"] for s in a["spans"]]
    assert _texts(page, "#pgt-highlight .hl") == [text[s["start_char"]:s["end_char"]] for s in a["spans"]]
    assert _texts(page, "#pgt-highlight .pt") == [t["piece"] for t in a["per_token"]]
    # the legend: every publisher of a span once, most tokens first, each its own colour, as drawn
    legend = _attrs(page, "#pgt-legend .item", "data-source")
    counts = {}
    for s in a["spans"]:
        counts[s["source"]] = counts.get(s["source"], 0) + s["n_tokens"]
    assert sorted(legend) == sorted(counts) and [counts[i] for i in legend] == sorted(counts.values(), reverse=True)
    assert len(set(_attrs(page, "#pgt-legend .item", "data-color"))) == len(legend)
    assert _texts(page, "#pgt-legend .item span:nth-child(2)") == [NAMES[i] for i in legend]
    drawn = page.eval_on_selector_all("#pgt-highlight .hl", "es => es.map(e => getComputedStyle(e).borderBottomColor)")
    swatch = dict(zip(legend, page.eval_on_selector_all(
        "#pgt-legend .swatch", "es => es.map(e => getComputedStyle(e).backgroundColor)"), strict=True))
    assert drawn == [swatch[s["source"]] for s in a["spans"]]
    # hover a token: its piece, log p and top publishers with their scores
    k = min(3, len(a["per_token"]) - 1)
    page.hover(f"#pgt-highlight .pt >> nth={k}")
    page.wait_for_function(f"() => document.getElementById('pgt-hover').dataset.pos === '{k}'")
    t = a["per_token"][k]
    assert _attrs(page, "#pgt-hover tr", "data-source") == [x["id"] for x in t["sources"]]
    hover = page.text_content("#pgt-hover")
    assert f"log p = {t['logprob']:.3f}" in hover and all(NAMES[x["id"]] in hover for x in t["sources"])
    shot = page.locator("#pgt-highlight").screenshot()
    assert page.evaluate(TINTED, base64.b64encode(shot).decode()) > 0.05  # on its colours (a wide box)
    full = tmp_path / "per_token.png"
    page.evaluate("() => { document.querySelector('header').style.position = 'static'; }")  # (sticky: over the card)
    page.locator("#pgt-pt").screenshot(path=str(full))
    _check_png_any(full)

    # per token off: the request has no per_token, the highlight is hidden
    sent = []
    page.on("request", lambda r: sent.append(r.post_data) if r.url.endswith("/v1/attributions") else None)
    page.uncheck("#pgt-pertoken")
    _submit(page)
    assert sent and "per_token" not in sent[-1] and page.is_hidden("#pgt-pt")


def _check_png_any(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
