"""Screenshot of the web app for the README: start `kvcap serve`, drop a video into the
page in headless Chromium, wait for the captions, seek to a segment, save a PNG.

    python scripts/web_screenshot.py ../shared/videos/office_people_entering.mp4 docs/web-app.png --segment 2
"""
from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from playwright.sync_api import sync_playwright

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("video")
    ap.add_argument("out")
    ap.add_argument("--segment", type=int, default=0, help="which segment to seek to (0 = first)")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    a = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data:
        server = subprocess.Popen([sys.executable, "-m", "kvcap", "serve", "--port", str(port), "--data", data])
        try:
            for _ in range(300):
                try:
                    urllib.request.urlopen(f"{url}/api/config", timeout=1)
                    break
                except OSError:
                    time.sleep(0.3)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=a.chromium, args=ARGS)
                page = browser.new_page(viewport={"width": 1200, "height": 860}, locale="ko-KR")
                page.goto(url)
                page.set_input_files("#file", a.video)
                page.wait_for_selector("#segments li", timeout=600_000)
                items = page.locator("#segments li button")
                items.nth(min(a.segment, items.count() - 1)).click()
                page.wait_for_function("(v => v.readyState >= 2 && !v.seeking)(document.querySelector('#player'))")
                page.evaluate("document.querySelector('#player').pause()")
                time.sleep(0.5)
                page.screenshot(path=a.out, full_page=True)
                browser.close()
        finally:
            server.terminate()
            server.wait()
    print(a.out)


if __name__ == "__main__":
    main()
