"""The dashboard on a text store (a small GPT): passages to pick, the text
playground (per-token log-probabilities, publishers by display name,
documents with snippets) and publisher display names in the credit and
report views; in a real headless Chromium against a real uvicorn and Redis
(fixtures and helpers of ``test_dashboard`` and ``test_text``).

The tiny text corpus names its publishers by id only, so the store served
here is a copy republished with display names, as the Brown store has them.
"""

from __future__ import annotations

import base64
import json
import shutil
import struct
from pathlib import Path

import httpx
import pytest

from influence.store import open_store, publish
from influence.text.attributor import TextAttributor
from service.settings import Settings

from . import test_dashboard as dash
from .test_dashboard import ADMIN, PUB, QUERY, REPORT, _h, _login, _value
from .util import REDIS_URL, serve

browser, page = dash.browser, dash.page  # their fixtures, used here too

NAMES = {"pub-0": "Zero Street Gazette", "pub-1": "One Lane Books", "pub-2": "Two Rivers Review"}
# pixels of a token chip's background: hsl(0..120, 70%, 86%), green (expected) .. red (surprising)
TOKEN_PIXELS = """async b64 => { const img = new Image(); img.src = 'data:image/png;base64,' + b64; await img.decode();
  const c = document.createElement('canvas'); c.width = img.width; c.height = img.height;
  const x = c.getContext('2d'); x.drawImage(img, 0, 0);
  const d = x.getImageData(0, 0, c.width, c.height).data; let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    const hi = Math.max(d[i], d[i + 1], d[i + 2]), lo = Math.min(d[i], d[i + 1], d[i + 2]), l = (hi + lo) / 510;
    if (l > 0.8 && l < 0.92 && hi - lo > 35 && d[i + 2] === lo) n++; }
  return { width: img.width, height: img.height, colored: n / (d.length / 4) }; }"""


@pytest.fixture(scope="module")
def named_store(text_store, tmp_path_factory) -> Path:
    """A copy of the tiny text store, republished with publisher display names."""
    root = tmp_path_factory.mktemp("named-text") / "store"
    shutil.copytree(text_store, root)
    st = open_store(root)
    man = st.manifest
    extra = {**man.extra, "source_names": [NAMES[i] for i in man.source_ids]}
    publish(root, man.model_copy(update={"extra": extra}), st.params, st.examples, st.sources, None,
            example_coef=st.example_coef, assets=st.assets)
    return root


@pytest.fixture(scope="module")
def named_att(named_store) -> TextAttributor:
    return TextAttributor(open_store(named_store), "cpu")


@pytest.fixture
def text_dash(named_store, prefix, tmp_path):
    """The named text store served with keys of every role: ``(base_url, settings)``."""
    s = Settings(_env_file=None, store=named_store, redis_url=REDIS_URL, redis_prefix=prefix,
                 data_dir=tmp_path / "var", max_wait_ms=1.0, replay_interval_s=0.2, admin_keys=[ADMIN],
                 query_keys=[QUERY], report_keys=[REPORT], publisher_keys={PUB: "pub-1"})
    with serve(s) as base:
        yield base, s


def _passages(base: str) -> dict:
    r = httpx.get(base + "/v1/playground/passages", headers=_h(QUERY))
    assert r.status_code == 200, r.text
    return r.json()


def _attribute(base: str, q: dict, record: bool = False) -> dict:
    r = httpx.post(base + "/v1/attributions", headers=_h(QUERY),
                   json={"queries": [q], "top_k": 10, "granularity": "both", "record": record})
    assert r.status_code == 200, r.text
    return r.json()["attributions"][0]


# ---------------------------------------------------------------- HTTP only
def test_passages_names_and_answer_tokens(text_dash, named_att, server):
    base, _ = text_dash
    assert httpx.get(base + "/v1/playground/passages").status_code == 401
    assert httpx.get(base + "/v1/playground/passages", headers=_h(PUB)).status_code == 403
    b = _passages(base)
    tok, docs = named_att.tokenizer, {d["id"]: d for d in named_att.documents}
    assert b["kind"] == "training" and "no held-out text" in b["note"]  # the tiny store carries none
    assert b["max_tokens"] == named_att.spec.context + 1 and len(b["passages"]) == 8
    assert [p["source"] for p in b["passages"][:3]] == ["pub-0", "pub-1", "pub-2"]  # one per publisher first
    for p in b["passages"]:
        doc = docs[p["document"]]
        assert p["id"] == "train-" + doc["id"] and p["source"] == doc["source"]
        assert p["source_name"] == NAMES[p["source"]] and doc["snippet"].startswith(p["text"])
        assert p["n_tokens"] == len(tok.tokenize(p["text"])) <= b["max_tokens"] and p["oov"] == 0
    bad = httpx.get(base + "/v1/playground/passages?n=0", headers=_h(QUERY))
    assert bad.status_code == 422 and bad.json()["error"]["fields"][0]["path"] == "n"

    names = httpx.get(base + "/v1/playground/names", headers=_h(PUB)).json()
    assert names["sources"] == [{"id": i, "name": n} for i, n in NAMES.items()]
    assert names["store_version"] == named_att.version

    # the answer carries every token as the model reads it, aligned with token_logprobs
    a = _attribute(base, {"prompt": "w1 zzz", "completion": b["passages"][0]["text"]})
    assert a["tokens"][:2] == ["w1", "<unk>"] and len(a["tokens"]) == a["n_tokens"]
    assert a["tokens"][2:] == tok.tokenize(b["passages"][0]["text"]) and len(a["token_logprobs"]) == a["n_targets"]
    assert [s["name"] for s in a["sources"]] == [NAMES[s["id"]] for s in a["sources"]]

    # a vector store: no passages (404 naming the store), names are its ids
    vec, _ = server
    r = httpx.get(vec + "/v1/playground/passages")
    assert r.status_code == 404 and r.json()["error"]["fields"][0]["path"] == "store"
    ids = httpx.get(vec + "/v1/store").json()["source_ids"]
    assert httpx.get(vec + "/v1/playground/names").json()["sources"] == [{"id": i, "name": i} for i in ids]


# ---------------------------------------------------------------- browser
def _texts(page, sel: str) -> list[str]:
    return page.eval_on_selector_all(sel, "es => es.map(e => e.textContent)")


def _attrs(page, sel: str, name: str) -> list[str]:
    return page.eval_on_selector_all(sel, f"es => es.map(e => e.getAttribute('{name}'))")


def _check_answer(page, a: dict) -> None:
    """The page shows answer ``a``: f, every token with its log p, publishers by name, documents with snippets."""
    assert float(_value(page, "#pgt-f")) == a["logprob"]
    first = a["n_tokens"] - a["n_targets"]
    assert _texts(page, "#pgt-tokens .tok .w") == a["tokens"]
    assert page.locator("#pgt-tokens .tok.ctx").count() == first
    assert [float(v) for v in _attrs(page, "#pgt-tokens .tok.scored", "data-logprob")] == a["token_logprobs"]
    assert _texts(page, "#pgt-tokens .tok.scored .lp") == [f"{v:.2f}" for v in a["token_logprobs"]]
    assert _attrs(page, "#pgt-sources tr", "data-source") == [s["id"] for s in a["sources"]]
    assert _texts(page, "#pgt-sources .pub-name") == [NAMES[s["id"]] for s in a["sources"]]
    assert _attrs(page, "#pgt-docs .doc", "data-index") == [str(d["index"]) for d in a["examples"]]
    assert _texts(page, "#pgt-docs .doc .snippet") == [d["snippet"] for d in a["examples"]]
    heads = _texts(page, "#pgt-docs .doc .doc-head")
    assert all(d["id"] in h and NAMES[d["source"]] in h for d, h in zip(a["examples"], heads, strict=True))


def _check_png(path: Path, width: int) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) > 30_000
    w, h = struct.unpack(">II", data[16:24])
    assert w == width and h >= 600
    return w, h


def _submit(page) -> None:
    page.click("#pgt-submit")
    page.wait_for_selector("#pgt-result[data-state=done], #pgt-result[data-state=error]")


def test_text_playground_shows_token_logprobs_publishers_and_documents(text_dash, page, tmp_path):
    base, _ = text_dash
    passages = _passages(base)["passages"]
    _login(page, base, QUERY)
    page.click("#tab-playground")
    page.wait_for_selector("#pgt-passages .passage")
    assert page.is_hidden("#pg-main") and page.is_visible("#pgt-main")
    assert _attrs(page, "#pgt-passages .passage", "data-id") == [p["id"] for p in passages]
    assert "not held out" in page.text_content("#pgt-passages-caption")
    assert page.get_attribute("#pgt-passages", "data-kind") == "training"

    page.click("#pgt-passages .passage >> nth=1")  # pick: the passage goes into the text box
    assert page.input_value("#pgt-input") == passages[1]["text"]
    _submit(page)
    a = _attribute(base, {"text": passages[1]["text"]})
    _check_answer(page, a)
    assert "not counted" in page.text_content("#pgt-timing")
    shot = tmp_path / "dashboard-text-playground.png"
    page.screenshot(path=str(shot), full_page=True)
    assert page.get_attribute("#pgt-result", "data-state") == "done"  # the state the screenshot shows
    _check_png(shot, 1400)
    chips = page.locator("#pgt-tokens").screenshot()
    seen = page.evaluate(TOKEN_PIXELS, base64.b64encode(chips).decode())
    assert seen["colored"] > 0.3, seen  # the tokens are drawn on their log p colours
    assert page.evaluate(TOKEN_PIXELS, base64.b64encode(shot.read_bytes()).decode())["colored"] > 0.01

    # typed: a prompt with an out-of-vocabulary word and a completion; only the completion is scored
    page.fill("#pgt-input", "W1 zzz w2")
    page.fill("#pgt-completion", "s0x1 s0x2 w3 w4")
    _submit(page)
    b = _attribute(base, {"prompt": "W1 zzz w2", "completion": "s0x1 s0x2 w3 w4"})
    assert b["n_targets"] == 4 and b["oov"] == 1
    _check_answer(page, b)
    assert page.locator("#pgt-tokens .tok.oov").count() == 1

    # a refused query is shown on the page, naming the field
    page.click("#pgt-clear")
    page.fill("#pgt-input", "w1")
    _submit(page)
    assert page.text_content("#pgt-msg").startswith("queries[0].text")
    assert httpx.get(base + "/v1/sources", headers=_h(REPORT)).json()["total_queries"] == 0


def test_credit_trend_and_report_show_publisher_names(text_dash, page, tmp_path):
    base, _ = text_dash
    for p in _passages(base)["passages"][:6]:
        _attribute(base, {"text": p["text"]}, record=True)
    sources = httpx.get(base + "/v1/sources", headers=_h(REPORT)).json()["sources"]
    credited = [s["id"] for s in sources if s["credit_units"] > 0]
    assert credited
    _login(page, base, REPORT)
    want = json.dumps([NAMES[i] for i in credited], separators=(",", ":"))  # as JSON.stringify writes it
    page.wait_for_function(f"() => document.getElementById('chart-share').dataset.labels === {json.dumps(want)}")
    assert json.loads(page.get_attribute("#chart-trend", "data-labels")) == [NAMES[i] for i in credited]
    assert _texts(page, "#sources-body .src-name") == [NAMES[s["id"]] for s in sources]

    page.click("#tab-report")
    page.wait_for_function("() => document.getElementById('rep-start').value !== ''")
    page.click("#rep-run")
    page.wait_for_selector("#rep-result:not([hidden])")
    rep = httpx.get(base + "/v1/reports/compensation", headers=_h(REPORT),
                    params={"start": page.input_value("#rep-start"), "end": page.input_value("#rep-end"),
                            "amount": page.input_value("#rep-amount"), "currency": "USD"}).json()
    assert _attrs(page, "#rep-body tr", "data-source") == [line["source_id"] for line in rep["lines"]]
    assert _texts(page, "#rep-body .src-name") == [NAMES[line["source_id"]] for line in rep["lines"]]
    assert json.loads(page.get_attribute("#chart-payout", "data-labels")) == \
        [NAMES[line["source_id"]] for line in rep["lines"]]
    page.screenshot(path=str(tmp_path / "dashboard-text-report.png"), full_page=True)
    _check_png(tmp_path / "dashboard-text-report.png", 1400)
