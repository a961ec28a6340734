"""Screenshot of the web app for the README: start `kvcap serve`, drop a video into the
page in headless Chromium, wait for the captions, seek to a segment, save a PNG.

    python scripts/web_screenshot.py ../shared/videos/office_people_entering.mp4 docs/web-app.png --segment 2
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from kvcap.webapp import LocalServer

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("video")
    ap.add_argument("out")
    ap.add_argument("--segment", type=int, default=0, help="which segment to seek to (0 = first)")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as data, LocalServer(Path(data)) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=a.chromium, args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 860}, locale="ko-KR")
        page.goto(server.url)
        page.set_input_files("#file", a.video)
        page.wait_for_selector("#segments li", timeout=600_000)
        items = page.locator("#segments li button")
        items.nth(min(a.segment, items.count() - 1)).click()
        page.wait_for_function("(v => v.readyState >= 2 && !v.seeking)(document.querySelector('#player'))")
        page.evaluate("document.querySelector('#player').pause()")
        time.sleep(0.5)
        page.screenshot(path=a.out, full_page=True)
        browser.close()
    print(a.out)


if __name__ == "__main__":
    main()
