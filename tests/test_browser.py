"""The page in a real headless Chromium (Debian's, driven by Playwright) against
`kvcap serve` on loopback: upload, progress, the captioned player, seeking by segment,
the caption toggle, downloads, search, and errors shown in Korean.

A screenshot of the result is saved in $KVCAP_ARTIFACTS (default: artifacts/) for CI."""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import ROOT, make_audio_only

CHROMIUM = os.environ.get("KVCAP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("KVCAP_ARTIFACTS", ROOT / "artifacts"))
# as root and on a closed network: no sandbox, no background calls to other hosts
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage"]
HANGUL = re.compile(r"[가-힣]")


@pytest.fixture(scope="module")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright (pip install -e '.[test]')")
    if not Path(CHROMIUM).exists():
        message = f"needs Chromium at {CHROMIUM} (sh scripts/install-debian.sh chromium installs Debian's)"
        if os.environ.get("CI"):  # CI's command installs it: missing there is a broken setup
            pytest.fail(message)
        pytest.skip(message)
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, web):
    context = browser.new_context(viewport={"width": 1200, "height": 900}, locale="ko-KR")
    pg = context.new_page()
    pg.requests = []
    pg.on("request", lambda r: pg.requests.append(r.url))
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.goto(web.url + "/")
    yield pg
    context.close()


def test_upload_watch_and_seek(page, web, videos):
    page.set_input_files("#file", str(videos / "multishot_4cuts.mp4"))
    # progress: the stage list shows while the job is uploaded and captioned
    page.wait_for_selector("#progress:not([hidden])", timeout=30_000)
    page.wait_for_selector("#segments li", timeout=240_000)
    assert page.locator("#error").is_hidden()

    texts = page.locator("#segments li .text").all_inner_texts()
    spans = page.locator("#segments li .span").all_inner_texts()
    # one caption per shot (cuts at 5, 10, 15 s), fewer only where neighbours said the same
    assert 1 <= len(texts) <= 4 and all(HANGUL.search(t) for t in texts), texts
    assert all(a != b for a, b in zip(texts, texts[1:]))
    starts = [float(m.group(1)) * 60 + float(m.group(2)) for m in (re.match(r"(\d+):([\d.]+)", s) for s in spans)]
    assert starts[0] == 0.0 and {round(s) for s in starts} <= {0, 5, 10, 15}
    # each caption says how far to trust it; nothing was damaged
    sure = page.locator("#segments li .confidence").all_inner_texts()
    assert len(sure) == len(texts) and all(re.fullmatch(r"확신도 \d{1,3}%", c) for c in sure), sure
    assert page.locator("#warnings").is_hidden()

    # the captions are a WebVTT track of the player, on by default
    player = "document.querySelector('#player')"
    page.wait_for_function(f"{player}.textTracks[0].cues && {player}.textTracks[0].cues.length > 0")
    assert page.evaluate(f"{player}.textTracks[0].mode") == "showing"
    cues = page.evaluate(f"Array.from({player}.textTracks[0].cues).map(c => c.text)")
    assert cues == texts

    # clicking the last segment seeks the player to its start and highlights it
    page.evaluate(f"window.seekedAt = []; {player}.addEventListener('seeked', () => seekedAt.push({player}.currentTime))")
    page.locator("#segments li button").last.click()
    page.wait_for_function("window.seekedAt.length > 0")
    t = page.evaluate("window.seekedAt[window.seekedAt.length - 1]")
    assert abs(t - starts[-1]) < 0.05, (t, starts[-1])
    # while it plays on, the track shows that segment's caption and the list highlights it
    # (cues are updated as the player's clock moves, so wait for the clock, not a fixed time)
    active = f"Array.from({player}.textTracks[0].activeCues).map(c => c.text)"
    page.wait_for_function(f"{active}.length === 1 && {active}[0] === {json.dumps(texts[-1])}", timeout=10_000)
    page.evaluate(f"{player}.pause()")
    assert page.locator("#segments li.current .text").all_inner_texts() == [texts[-1]]

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-result.png"), full_page=True)

    # captions can be turned off, and back on
    page.click("#cc")
    assert page.evaluate(f"{player}.textTracks[0].mode") == "hidden"
    page.click("#cc")
    assert page.evaluate(f"{player}.textTracks[0].mode") == "showing"

    # downloads point at this job's files
    job_id = re.search(r"job=([\w-]{22})", page.url).group(1)
    hrefs = page.eval_on_selector_all("#downloads a:not([hidden])", "as => as.map(a => a.getAttribute('href'))")
    assert hrefs == [f"/api/jobs/{job_id}/{k}?download=1"
                     for k in ("srt", "vtt", "json", "mp4", "described", "descriptions")]

    # audio description: a descriptions track, and a switch to the described sound at the same moment
    kinds = page.evaluate(f"Array.from({player}.textTracks).map(t => t.kind)")
    assert kinds == ["captions", "descriptions"]
    page.evaluate(f"{player}.currentTime = 6.0")
    page.wait_for_function(f"Math.abs({player}.currentTime - 6.0) < 0.1")
    page.focus("#ad")
    page.keyboard.press("Space")  # reachable and usable from the keyboard
    page.wait_for_function(f"{player}.currentSrc.endsWith('/described-video') && {player}.readyState >= 1")
    page.wait_for_function(f"Math.abs({player}.currentTime - 6.0) < 0.3")
    assert page.get_attribute("#ad-toggle", "hidden") is None and page.is_checked("#ad")
    page.click("#ad")
    page.wait_for_function(f"{player}.currentSrc.endsWith('/video')")
    with page.expect_download() as dl:
        page.click("#downloads a[data-kind=srt]")
    assert dl.value.suggested_filename == "multishot_4cuts.srt"

    # keyboard and screen reader: every control has a name in the accessibility tree, and Tab
    # reaches them in reading order
    for role, name in (("checkbox", "자막 표시"), ("checkbox", "화면해설 (소리로 듣기)"), ("link", "화면해설 MP4"),
                       ("link", "화면해설 WebVTT"), ("button", "다른 동영상 올리기"), ("searchbox", "자막 검색어"),
                       ("button", "검색")):
        assert page.get_by_role(role, name=name, exact=True).count() == 1, (role, name)
    assert page.get_attribute("#progress", "aria-live") == "polite"  # job progress is announced
    page.focus("#file")
    visited = []
    for _ in range(40):
        page.keyboard.press("Tab")
        visited.append(page.evaluate("document.activeElement.id || document.activeElement.dataset.kind || "
                                     "document.activeElement.textContent.trim().slice(0, 8)"))
    order = ["cc", "ad", "described", "descriptions", "again", "query"]
    assert all(k in visited for k in order), visited
    assert [visited.index(k) for k in order] == sorted(visited.index(k) for k in order)
    first_segment = next(i for i, v in enumerate(visited) if v.startswith("00:00"))
    assert visited.index("ad") < first_segment < visited.index("described")

    # the browser remembers its own uploads: a fresh visit lists it and opens it again
    page.goto(web.url + "/")
    page.click("#my-jobs a:has-text('multishot_4cuts.mp4')")
    page.wait_for_selector("#segments li")
    assert page.locator("#segments li .text").all_inner_texts() == texts

    # the page and everything it loaded came from the app itself
    assert page.requests and all(u.startswith(web.url) or u.startswith("data:") for u in page.requests), \
        [u for u in page.requests if not u.startswith(web.url)]
    assert not page.errors


def test_search_box_plays_from_the_hit(page, web, videos):
    from conftest import upload, wait_job

    job = wait_job(web.url, upload(web.url, videos / "multishot_4cuts.mp4").json()["id"])
    seg = job["segments"][1] if len(job["segments"]) > 1 else job["segments"][0]
    word = max(seg["text"].rstrip(".").split(), key=len)
    page.fill("#query", word)
    page.click("#search-form button")
    page.wait_for_selector("#hits li")
    hits = page.locator("#hits li .text").all_inner_texts()
    assert seg["text"] in hits
    page.locator("#hits li", has_text=seg["text"]).first.click()
    player = "document.querySelector('#player')"
    page.wait_for_selector("#segments li")
    page.wait_for_function(f"{player}.readyState >= 2 && !{player}.seeking && "
                           f"Math.abs({player}.currentTime - {seg['start']}) < 1.5")
    assert page.locator("#segments li.current .text").first.inner_text() == seg["text"]


def test_errors_are_shown_in_korean(page, web, tmp_path):
    # dropped onto the page (a real drop event with a file in its DataTransfer)
    data = base64.b64encode(make_audio_only(tmp_path / "tone.m4a").read_bytes()).decode()
    page.evaluate("""([b64, name]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, {type: "audio/mp4"}));
        document.querySelector('#drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
    }""", [data, "tone.m4a"])
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error").startswith("이 파일은 동영상이 아닙니다")

    text = tmp_path / "memo.mp4"
    text.write_text("동영상이 아닌 글\n" * 100)
    page.set_input_files("#file", str(text))
    page.wait_for_function("document.querySelector('#error').textContent.includes('이 파일은 동영상이 아닙니다.')")

    # a job that is gone (removed after its keeping time) says so and leaves "my videos"
    gone = "Z" * 22
    page.evaluate(f"localStorage.setItem('kvcap.jobs', JSON.stringify([{{id: '{gone}', name: 'old.mp4'}}]))")
    page.goto(f"{web.url}/#job={gone}")
    page.wait_for_function("document.querySelector('#error').textContent === '작업을 찾을 수 없습니다.'")
    assert page.locator("#my-jobs a").count() == 0 and page.locator("#mine").is_hidden()

    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * (5 << 20))  # over the server's 4 MB: refused in the page before uploading
    page.set_input_files("#file", str(big))
    page.wait_for_function("document.querySelector('#error').textContent.startsWith('파일이 너무 큽니다 (최대 4 MB)')")
    assert not [u for u in page.requests if u.endswith("/api/jobs")][2:]  # the big file was never sent


def test_a_damaged_video_is_shown_with_what_was_skipped(page, web, videos, tmp_path):
    data = bytearray((videos / "cockatoo.mp4").read_bytes())
    data[len(data) // 3 : len(data) // 2] = bytes(len(data) // 2 - len(data) // 3)
    bad = tmp_path / "zeroed.mp4"
    bad.write_bytes(bytes(data))
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#warnings:not([hidden])", timeout=240_000)
    assert page.inner_text("#warnings").startswith("영상 일부가 손상되어")
    assert "4.5–7.0 s" in page.inner_text("#warnings") and page.locator("#segments li").count() >= 1
    assert page.locator("#error").is_hidden()


def test_live_page_shows_what_a_running_watch_writes(browser, tmp_path):
    """`kvcap serve --live DIR`: the 실시간 section follows DIR's watch.jsonl and alerts.jsonl
    (written here as `kvcap watch` writes them), newest first, in Korean."""
    from conftest import Server
    from kvcap.watch import LineLog

    live = tmp_path / "live"
    live.mkdir()
    log, alerts = LineLog(live / "watch.jsonl"), LineLog(live / "alerts.jsonl")
    log.write({"wall": "2026-12-02T14:03:22.000+09:00", "event": "playing", "stream_time": 0.0})
    log.write({"wall": "2026-12-02T14:03:30.000+09:00", "stream_start": 0.0, "stream_end": 8.0,
               "text": "여자가 방으로 들어오고 있다.", "confidence": 0.6})
    server = Server(tmp_path / "data", "--live", str(live))
    context = browser.new_context(locale="ko-KR", timezone_id="Asia/Seoul")
    try:
        page = context.new_page()
        page.goto(server.url + "/")
        page.wait_for_selector("#live:not([hidden]) #live-captions li")
        assert "여자가 방으로 들어오고 있다." in page.inner_text("#live-captions li")
        assert page.inner_text("#live-status") == "재생 중"
        log.write({"wall": "2026-12-02T14:03:38.000+09:00", "stream_start": 8.0, "stream_end": 16.0,
                   "text": "남자가 쓰러져 있다.", "confidence": 0.5})
        alerts.write({"wall": "2026-12-02T14:03:38.000+09:00", "stream_start": 8.0, "stream_end": 16.0,
                      "text": "남자가 쓰러져 있다.", "confidence": 0.5, "alert": "쓰러지다"})
        page.wait_for_function("document.querySelectorAll('#live-captions li').length === 2")
        assert page.inner_text("#live-captions li").startswith("14:03:38")  # newest first
        page.wait_for_selector("#live-alerts li")
        assert " ".join(page.inner_text("#live-alerts li").split()) == "14:03:38 [쓰러지다] 남자가 쓰러져 있다."
        log.write({"wall": "2026-12-02T14:03:40.000+09:00", "event": "disconnected", "error": "timeout"})
        page.wait_for_function("document.querySelector('#live-status').textContent.startsWith('스트림이 끊겨')")
    finally:
        context.close()
        server.stop()
        log.close()
        alerts.close()
