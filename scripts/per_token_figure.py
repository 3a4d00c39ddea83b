"""The README's per-token figure: a text store served, its playground in a
headless Chromium, an answer highlighted by which publisher shaped each
part, one token hovered; the highlight card saved as a PNG.

    .venv/bin/python scripts/per_token_figure.py --store stores/brown --out docs/per_token.png

Needs Chromium (``apt-get install -y chromium``) and playwright (the test
extra); the service runs on a free loopback port with its embedded Redis
(or ``--redis-url``). ``--text`` (default: the store's first held-out
passage) and ``--hover`` (the token to hover, by position among the scored).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.service.test_dashboard import CHROMIUM_ARGS, _chromium  # noqa: E402
from tests.service.util import serve  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--text", help="the passage (default: the store's first held-out passage)")
    p.add_argument("--completion", default="", help="a completion: the passage is then its prompt")
    p.add_argument("--hover", type=int, default=6, help="scored token to hover")
    p.add_argument("--redis-url", default=None)
    a = p.parse_args(argv)
    import httpx
    from playwright.sync_api import sync_playwright

    from service.settings import Settings

    exe = _chromium()
    if exe is None:
        print("needs Chromium: apt-get install -y chromium", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        s = Settings(_env_file=None, store=a.store, data_dir=Path(tmp) / "var", redis_url=a.redis_url,
                     redis_prefix="fa-figure:")
        with serve(s) as base, sync_playwright() as pw:
            text = a.text or httpx.get(base + "/v1/playground/passages?n=1").json()["passages"][0]["text"]
            b = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
            page = b.new_page(viewport={"width": 1400, "height": 1000}, device_scale_factor=1)
            page.goto(base + "/dashboard")
            page.click("#tab-playground")
            page.wait_for_selector("#pgt-passages .passage")
            page.fill("#pgt-input", text)
            page.fill("#pgt-completion", a.completion)
            page.click("#pgt-submit")
            page.wait_for_selector("#pgt-result[data-state=done], #pgt-result[data-state=error]")
            if page.get_attribute("#pgt-result", "data-state") != "done":
                print(f"error: {page.text_content('#pgt-msg')}", file=sys.stderr)
                return 2
            page.evaluate("() => { document.querySelector('header').style.position = 'static'; }")
            page.hover(f"#pgt-highlight .pt >> nth={a.hover}")
            shot = Path(tmp) / "shot.png"
            page.locator("#pgt-pt").screenshot(path=str(shot))
            b.close()
        a.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
