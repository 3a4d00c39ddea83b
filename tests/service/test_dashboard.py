"""The dashboard page and the playground endpoints.

Browser tests drive the real page in a headless Chromium (Playwright with
the system's Chromium: ``apt-get install -y chromium``, or ``FA_TEST_CHROMIUM``
= its path) against a real uvicorn and Redis; they are skipped when no
Chromium or no Playwright is installed. Screenshots go to each test's tmp_path.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import tomllib
from pathlib import Path

import httpx
import numpy as np
import pytest

from influence.datasets.vectors import load_digits_test
from influence.store import open_store
from service.dashboard import STATIC_DIR

from .util import query, serve

ADMIN, QUERY, REPORT, PUB = "dash-admin-key-0123456789", "dash-query-key", "dash-report-key", "dash-pub-key"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
REPO = Path(__file__).resolve().parents[2]
DARK_PIXELS = """sel => { const c = document.querySelector(sel);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 160) n++; return n; }"""


def _keys(**over):
    return dict(admin_keys=[ADMIN], query_keys=[QUERY], report_keys=[REPORT],
                publisher_keys={PUB: "publisher-01"}, **over)


@pytest.fixture
def dash(settings_for):
    """A running service with keys of every role: ``(base_url, settings)``."""
    s = settings_for(**_keys())
    with serve(s) as base:
        yield base, s


def _h(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


# ---------------------------------------------------------------- HTTP only
def test_page_and_assets_are_served_without_external_resources(dash):
    base, _ = dash
    r = httpx.get(base + "/dashboard")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(base + "/dashboard/", follow_redirects=False).status_code == 308
    refs = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert {f"dashboard/static/{f}" for f in ("dashboard.css", "charts.js", "dashboard.js")} <= set(refs)
    for ref in refs:
        if ref.startswith("dashboard/static/"):
            a = httpx.get(f"{base}/{ref}")
            assert a.status_code == 200, ref
            assert a.headers["content-type"].split(";")[0] in ("text/css", "text/javascript", "application/javascript")
    assert httpx.get(base + "/dashboard/static/nope.js").status_code == 404
    # no CDN: nothing in the shipped files loads from another origin
    for f in STATIC_DIR.iterdir():
        text = f.read_text()
        assert not [u for u in re.findall(r"https?://[^\s\"'`)]+", text) if not u.startswith("http://www.w3.org/")], f
    # keys go in a header, never in a URL
    js = (STATIC_DIR / "dashboard.js").read_text()
    assert "sessionStorage" in js and '"Authorization"' in js and "localStorage" not in js
    # the static files ship with the package
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "static/*" in meta["tool"]["setuptools"]["package-data"]["service"]


def test_playground_examples_and_training_rows(dash, built_store):
    base, _ = dash
    assert httpx.get(base + "/v1/playground/examples").status_code == 401
    assert httpx.get(base + "/v1/playground/examples", headers=_h(PUB)).status_code == 403
    assert httpx.get(base + "/v1/playground/training/0", headers=_h(PUB)).status_code == 403
    r = httpx.get(base + "/v1/playground/examples?n=12", headers=_h(QUERY))
    assert r.status_code == 200
    b = r.json()
    assert b["kind"] == "heldout" and b["in_dim"] == 64 and b["image"] == {"height": 8, "width": 8, "scale": 16}
    assert "digits test split" in b["note"]  # the store's own held-out sample (heldout.json), no dataset name here
    Xt, yt = load_digits_test()
    assert len(b["examples"]) == 12
    assert [e["label"] for e in b["examples"][:10]] == [str(c) for c in range(10)]  # one per class first
    for e in b["examples"]:
        i = int(e["id"].split("-")[1])
        assert np.array_equal(np.array(e["input"], dtype=np.float32), Xt[i]) and e["label"] == str(yt[i])
        assert all(v * 16 == round(v * 16) for v in e["input"])  # pixels / 16
    assert httpx.get(base + "/v1/playground/examples?n=0", headers=_h(QUERY)).status_code == 422

    st = open_store(built_store)
    man = st.manifest
    for i in (0, 7, len(man.example_source) - 1):
        t = httpx.get(f"{base}/v1/playground/training/{i}", headers=_h(REPORT)).json()
        assert t["index"] == i and t["store_version"] == man.version
        assert t["source"] == man.source_ids[man.example_source[i]]
        assert t["label"] == man.classes[int(st.y[i])]
        assert np.array_equal(np.array(t["input"], dtype=np.float32), st.X[i].numpy())
    bad = httpx.get(f"{base}/v1/playground/training/{len(man.example_source)}", headers=_h(QUERY))
    assert bad.status_code == 404 and bad.json()["error"]["fields"][0]["path"] == "index"
    assert httpx.get(f"{base}/v1/playground/training/-1", headers=_h(QUERY)).status_code == 404


# ---------------------------------------------------------------- browser
def _chromium() -> str | None:
    for c in (os.environ.get("FA_TEST_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
              "/usr/bin/chromium"):
        if c and Path(c).is_file():
            return c
    return None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the test extra)")
    exe = _chromium()
    if exe is None:
        pytest.skip("needs Chromium: apt-get install -y chromium (or set FA_TEST_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    pg = ctx.new_page()
    pg.set_default_timeout(15_000)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    # the page runs under its Content-Security-Policy: a violation is a bug
    pg.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _login(page, base: str, key: str) -> None:
    page.goto(base + "/dashboard")
    page.wait_for_selector("#keybox:not([hidden])")
    page.fill("#key-input", key)
    page.click("#key-connect")
    page.wait_for_selector("#keybox", state="hidden")
    page.wait_for_function("() => Number(document.body.dataset.polls) >= 1")


def _value(page, sel: str) -> str:
    return page.get_attribute(sel, "data-value")


def _send(base: str, n_requests: int, per: int, start: int = 0, record: bool = True) -> int:
    X, _ = load_digits_test()
    for r in range(n_requests):
        qs = [query(X[(start + r * per + j) % len(X)]) for j in range(per)]
        resp = httpx.post(base + "/v1/attributions", json={"queries": qs, "record": record}, headers=_h(QUERY))
        assert resp.status_code == 200, resp.text
    return n_requests * per


def test_live_figures_update_after_queries(dash, page, tmp_path):
    base, s = dash
    sent_urls: list[tuple[str, str | None]] = []
    page.on("request", lambda r: sent_urls.append((r.url, r.headers.get("authorization"))))
    page.goto(base + "/dashboard")
    page.wait_for_selector("#keybox:not([hidden])")  # keyed service: the page asks for a key
    page.fill("#key-input", "not-a-key")
    page.click("#key-connect")
    page.wait_for_function("() => document.getElementById('key-msg').textContent.includes('not accepted')")
    page.fill("#key-input", ADMIN)
    page.click("#key-connect")
    page.wait_for_selector("#keybox", state="hidden")
    page.wait_for_function("() => document.getElementById('kpi-queries').dataset.value === '0'")
    assert page.evaluate("sessionStorage.getItem('fa.apiKey')") == ADMIN
    assert ADMIN not in page.text_content("header")  # not shown, not even its end

    n = _send(base, 6, 2) + _send(base, 1, 3, start=50, record=False)
    page.wait_for_function(f"() => document.getElementById('kpi-queries').dataset.value === '{n}'")
    page.wait_for_function("() => document.getElementById('kpi-credited').dataset.value === '12'")
    page.wait_for_function("() => Number(document.getElementById('chart-share').dataset.bars) > 0")
    assert float(_value(page, "#kpi-latency")) > 0
    assert float(_value(page, "#kpi-batch")) >= 1
    assert _value(page, "#kpi-cache") != ""
    sources = httpx.get(base + "/v1/sources", headers=_h(REPORT)).json()
    rows = page.locator("#sources-body tr[data-source]")
    assert rows.count() == len(sources["sources"])
    assert rows.first.get_attribute("data-source") == sources["sources"][0]["id"]
    assert page.get_attribute("#store-badge", "data-version") == sources["store_version"]
    assert page.get_attribute("#audit-badge", "data-audited") == "0"  # the tiny store has no audit.json
    assert page.inner_text("#audit-badge") == "not audited"
    page.screenshot(path=str(tmp_path / "dashboard-live.png"), full_page=True)

    # the key survives a reload of the tab (sessionStorage), and is only ever sent as a header
    sent_urls.clear()
    page.reload()
    page.wait_for_function(f"() => document.getElementById('kpi-queries').dataset.value === '{n}'")
    assert page.is_hidden("#keybox")
    api = [(u, a) for u, a in sent_urls if "/v1/" in u]
    assert api and all(a == f"Bearer {ADMIN}" for _, a in api)
    assert not [u for u, _ in sent_urls if ADMIN in u]

    # forgetting the key stops the figures and asks again
    page.click("#key-change")
    page.click("#key-forget")
    page.wait_for_selector("#keybox:not([hidden])")
    assert page.evaluate("sessionStorage.getItem('fa.apiKey')") is None


def test_query_key_sees_its_figures_and_no_credit(dash, page):
    base, _ = dash
    _login(page, base, QUERY)
    page.wait_for_function("() => document.getElementById('kpi-credited-sub').textContent.includes('not readable')")
    assert page.is_visible("#sources-empty")
    _send(base, 1, 2)
    page.wait_for_function("() => document.getElementById('kpi-queries').dataset.value === '2'")


def test_playground_returns_an_answer(dash, page, tmp_path):
    base, _ = dash
    _login(page, base, ADMIN)
    page.click("#tab-playground")
    page.wait_for_selector("#pg-examples .thumb")
    assert page.locator("#pg-examples .thumb").count() == 12
    page.click("#pg-examples .thumb >> nth=3")  # the first test digit of class 3
    page.click("#pg-submit")
    page.wait_for_selector("#pg-result[data-state=done]")
    ex = httpx.get(base + "/v1/playground/examples?n=12", headers=_h(QUERY)).json()["examples"][3]
    ref = httpx.post(base + "/v1/attributions", headers=_h(QUERY),
                     json={"queries": [{"input": ex["input"]}], "top_k": 10, "granularity": "both",
                           "record": False}).json()["attributions"][0]
    assert _value(page, "#pg-pred") == ref["prediction"]["label"]
    shown = page.locator("#pg-train .thumb")
    assert shown.count() == 10
    assert [shown.nth(i).get_attribute("data-index") for i in range(10)] == [str(e["index"]) for e in ref["examples"]]
    assert page.get_attribute("#chart-pg-sources", "data-bars") == str(len(ref["sources"]))
    # every example image was drawn (a canvas with dark pixels)
    assert all(page.evaluate(DARK_PIXELS, f"#pg-train .thumb:nth-child({i + 1}) canvas") > 0 for i in range(10))
    page.screenshot(path=str(tmp_path / "dashboard-playground.png"), full_page=True)

    # drawing on the grid: clear, draw a stroke, submit; by default not counted in credit
    page.click("#pg-clear")
    assert page.evaluate(DARK_PIXELS, "#pg-grid") == 0
    box = page.locator("#pg-grid").bounding_box()
    page.mouse.move(box["x"] + 100, box["y"] + 20)
    page.mouse.down()
    page.mouse.move(box["x"] + 110, box["y"] + 230, steps=12)
    page.mouse.up()
    assert page.evaluate(DARK_PIXELS, "#pg-grid") > 0
    page.click("#pg-submit")
    page.wait_for_function("() => document.getElementById('pg-timing').textContent.includes('not counted')")
    assert httpx.get(base + "/v1/sources", headers=_h(REPORT)).json()["total_queries"] == 0


def test_report_view_and_csv_download(dash, page, tmp_path):
    base, _ = dash
    n = _send(base, 5, 2)
    _login(page, base, REPORT)
    page.click("#tab-report")
    page.wait_for_function("() => document.getElementById('rep-start').value !== ''")
    page.fill("#rep-amount", "1234.56")
    page.fill("#rep-currency", "EUR")
    page.click("#rep-run")
    page.wait_for_selector("#rep-result:not([hidden])")
    assert _value(page, "#rep-pool") == "123456"
    assert _value(page, "#rep-allocated") == "123456"
    assert _value(page, "#rep-queries") == str(n)
    assert "exactly" in page.text_content("#rep-reconciles")
    page.screenshot(path=str(tmp_path / "dashboard-report.png"), full_page=True)

    with page.expect_download() as dl:
        page.click("#rep-csv")
    d = dl.value
    assert re.fullmatch(r"compensation_\d{4}-\d\d-\d\d_\d{4}-\d\d-\d\d\.csv", d.suggested_filename)
    path = tmp_path / d.suggested_filename
    d.save_as(path)
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert rows and sum(int(r["payout_minor"]) for r in rows) == 123456
    assert {r["currency"] for r in rows} == {"EUR"}
    start, end = page.input_value("#rep-start"), page.input_value("#rep-end")
    ref = httpx.get(base + "/v1/reports/compensation", headers=_h(REPORT),
                    params={"start": start, "end": end, "amount": "1234.56", "currency": "EUR"}).json()
    assert [(r["source_id"], int(r["payout_minor"])) for r in rows] == \
        [(line["source_id"], line["payout_minor"]) for line in ref["lines"]]

    # a bad period is reported on the page, not thrown
    page.fill("#rep-start", "yesterday")
    page.click("#rep-run")
    page.wait_for_function("() => document.getElementById('rep-msg').textContent.includes('start')")
