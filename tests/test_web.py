"""The web app's JSON API against a real `kvcap serve` on loopback: upload, progress,
results, bad uploads, path traversal, load, the queue, restart, cleanup."""
from __future__ import annotations

import base64
import http.client
import os
import json
import re
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import av
import httpx
import pytest
import srt
import webvtt

from conftest import Server, make_audio_only, make_video, need, stream_seconds, upload, wait_job
from kvcap.jobs import JobStore, new_id

HANGUL = re.compile(r"[가-힣]")


def test_upload_caption_and_download(web, videos):
    video = videos / "multishot_4cuts.mp4"
    r = upload(web.url, video)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", job_id) and r.headers["location"] == f"/api/jobs/{job_id}"
    stages = set()
    deadline = time.monotonic() + 240
    while (job := httpx.get(f"{web.url}/api/jobs/{job_id}").json())["status"] not in ("done", "failed"):
        stages.add(job["stage"])
        assert 0.0 <= job["progress"] <= 1.0
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job["status"] == "done", job
    assert stages & {"queued", "decode", "captions", "render"}, stages
    assert job["name"] == "multishot_4cuts.mp4" and abs(job["duration"] - 20.0) < 0.1
    segs = job["segments"]
    # one per shot (cuts at 5, 10, 15 s), fewer only where neighbours got the same sentence
    assert 1 <= len(segs) <= 4
    assert {round(s["start"]) for s in segs} <= {0, 5, 10, 15} and segs[0]["start"] == 0.0
    assert all(HANGUL.search(s["text"]) for s in segs)
    assert all(a["text"] != b["text"] for a, b in zip(segs, segs[1:]))

    get = lambda kind, **kw: httpx.get(f"{web.url}/api/jobs/{job_id}/{kind}", **kw)  # noqa: E731
    subs = list(srt.parse(get("srt").text))
    assert [s.content for s in subs] == [s["text"] for s in segs]
    vtt = get("vtt")
    assert vtt.headers["content-type"].startswith("text/vtt")
    assert [c.text for c in webvtt.from_string(vtt.text)] == [s["text"] for s in segs]
    doc = get("json").json()
    assert doc["input"] == "multishot_4cuts.mp4" and doc["segments"] == segs
    saved = get("srt", params={"download": 1})
    assert "attachment" in saved.headers["content-disposition"] and "multishot_4cuts.srt" in saved.headers[
        "content-disposition"]

    # audio description: the descriptions track and the described MP4 (two audio tracks), and
    # the player's copy whose only sound is the description
    assert set(job["downloads"]) == {"srt", "vtt", "json", "mp4", "descriptions", "described"}
    cues = webvtt.from_string(get("descriptions").text).captions
    assert [c.text for c in cues] == [s["text"] for s in segs]
    described = web.data.parent / "described.mp4"
    described.write_bytes(get("described").content)
    with av.open(str(described)) as c:
        assert len(c.streams.audio) == 2 and c.streams.audio[1].metadata.get("language") == "kor"
    player = web.data.parent / "described-player.mp4"
    player.write_bytes(httpx.get(f"{web.url}{job['described_video']}").content)
    with av.open(str(player)) as c:
        assert len(c.streams.audio) == 1 and c.streams.audio[0].metadata.get("language") == "kor"

    mp4 = get("mp4")
    assert mp4.headers["content-type"] == "video/mp4"
    out = web.data.parent / "captioned.mp4"
    out.write_bytes(mp4.content)
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        assert (s.codec_context.width, s.codec_context.height) == (640, 360)
        assert c.streams.audio
    assert stream_seconds(out)["video"] == pytest.approx(20.0, abs=0.05)  # the video stream's own length

    # the player's file: the upload itself (H.264 in MP4 plays in browsers), seekable by range
    part = get("video", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == video.read_bytes()[100:200]
    assert part.headers["x-content-type-options"] == "nosniff"
    head = httpx.head(f"{web.url}/api/jobs/{job_id}/video")
    assert head.status_code == 200 and int(head.headers["content-length"]) == video.stat().st_size


def test_not_yet_done_and_unknown_jobs(web, tmp_path):
    r = httpx.get(f"{web.url}/api/jobs/{'A' * 22}")
    assert r.status_code == 404 and r.json()["detail"] == "작업을 찾을 수 없습니다."
    assert httpx.get(f"{web.url}/api/jobs/{'A' * 22}/srt").status_code == 404


@pytest.mark.parametrize("make, status, message", [
    (lambda d: (d / "notes.mp4").write_text("이건 동영상이 아니라 글입니다.\n" * 50), 415, "이 파일은 동영상이 아닙니다"),
    (lambda d: make_audio_only(d / "tone.m4a"), 415, "이 파일은 동영상이 아닙니다 (소리만"),
    (lambda d: (d / "empty.mp4").write_bytes(b""), 422, "빈 파일"),
    (lambda d: (d / "garbage.mkv").write_bytes(b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 40), 415,
     "이 파일은 동영상이 아닙니다"),
])
def test_bad_uploads_are_refused_in_korean(web, tmp_path, make, status, message):
    make(tmp_path)
    path = next(tmp_path.iterdir())
    before = set((web.data / "jobs").iterdir())
    r = upload(web.url, path)
    assert r.status_code == status, r.text
    assert r.json()["detail"].startswith(message)
    assert set((web.data / "jobs").iterdir()) == before  # no job was made
    assert not list((web.data / "uploads").iterdir())  # and the upload is gone


def test_damaged_video_is_refused(web, tmp_path, videos):
    data = bytearray((videos / "multishot_4cuts.mp4").read_bytes())
    data[: len(data) // 2] = bytes(len(data) // 2)  # header and first half zeroed
    bad = tmp_path / "damaged.mp4"
    bad.write_bytes(bytes(data))
    r = upload(web.url, bad)
    assert r.status_code in (415, 422) and "동영상" in r.json()["detail"]


def test_upload_size_limit(web, tmp_path):
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * (5 << 20))  # the server takes 4 MB
    r = upload(web.url, big)
    assert r.status_code == 413 and r.json()["detail"] == "파일이 너무 큽니다 (최대 4 MB)."

    # without a Content-Length (chunked), the stream is cut off at the limit as it arrives
    def body():
        yield b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.mp4\"\r\n\r\n"
        for _ in range(80):
            yield b"\0" * (64 << 10)
        yield b"\r\n--XyZ--\r\n"

    r = httpx.post(f"{web.url}/api/jobs", content=body(), headers={"content-type": "multipart/form-data; boundary=XyZ"})
    assert r.status_code == 413
    assert not list((web.data / "uploads").iterdir())


def test_malformed_uploads(web):
    post = lambda body, ctype="multipart/form-data; boundary=XyZ": httpx.post(  # noqa: E731
        f"{web.url}/api/jobs", content=body, headers={"content-type": ctype})
    part = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\n\r\n" + b"\0" * 5000
    assert post(part).status_code == 400  # the body ends inside the file: never treated as a whole file
    assert post(b"--XyZ\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nx\r\n--XyZ--\r\n").json()[
        "detail"].startswith("'file' 항목이 없")
    assert post(b"{}", "application/json").status_code == 400
    assert not list((web.data / "uploads").iterdir())


def test_uploads_that_become_no_job_leave_no_file(web, videos):
    """The file part arrives whole, then the request fails: a malformed trailing part, or a
    client that promised far more bytes than it sent and went away."""
    head = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\n\r\n"
    whole = head + (videos / "desk_window_short.mp4").read_bytes() + b"\r\n--XyZ\r\n"
    r = httpx.post(f"{web.url}/api/jobs", content=whole + b"\x01\x02 not a header\r\n\r\n",
                   headers={"content-type": "multipart/form-data; boundary=XyZ"})
    assert r.status_code == 400
    assert not list((web.data / "uploads").iterdir())

    host, port = web.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XyZ\r\n"
                     b"Content-Length: %d\r\n\r\n" % (len(whole) + 1_000_000) + whole)
        time.sleep(0.5)  # the server has the whole file part, and waits for the rest
    deadline = time.monotonic() + 10
    while list((web.data / "uploads").iterdir()):
        assert time.monotonic() < deadline, "upload left behind after the client went away"
        time.sleep(0.1)


def test_stale_uploads_are_swept(tmp_path):
    store = JobStore(tmp_path)
    old, fresh = store.new_upload(), store.new_upload()
    old.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))  # no byte for two hours
    store.cleanup(max_age=24 * 3600)
    assert not old.exists() and fresh.exists()


def test_damaged_video_is_captioned_with_warnings(web, tmp_path, videos):
    data = bytearray((videos / "cockatoo.mp4").read_bytes())
    data[len(data) // 3 : len(data) // 2] = bytes(len(data) // 2 - len(data) // 3)
    bad = tmp_path / "zeroed.mp4"
    bad.write_bytes(bytes(data))
    job = wait_job(web.url, upload(web.url, bad).json()["id"])
    assert job["status"] == "done" and job["warnings"] == ["damaged at 4.5–7.0 s, captioned the rest"]
    assert job["segments"][-1]["end"] == pytest.approx(14.0, abs=0.06)
    out = tmp_path / "captioned.mp4"
    out.write_bytes(httpx.get(f"{web.url}/api/jobs/{job['id']}/mp4").content)
    assert stream_seconds(out)["video"] == pytest.approx(14.0, abs=0.06)


def test_delete_job(web, videos):
    job_id = upload(web.url, videos / "desk_window_short.mp4").json()["id"]
    assert wait_job(web.url, job_id)["status"] == "done"
    assert httpx.delete(f"{web.url}/api/jobs/{job_id}").status_code == 204
    assert httpx.get(f"{web.url}/api/jobs/{job_id}").status_code == 404
    assert httpx.get(f"{web.url}/api/jobs/{job_id}/srt").status_code == 404
    assert not (web.data / "jobs" / job_id).exists()
    assert httpx.delete(f"{web.url}/api/jobs/{job_id}").status_code == 404


def test_content_decides_not_the_name(web, videos, tmp_path):
    """A real video called 'notes.txt' is a video; the name is only shown, never a path."""
    r = upload(web.url, videos / "street_bikes.mp4", name="../../../escape/notes.txt")
    assert r.status_code == 201, r.text
    job = wait_job(web.url, r.json()["id"])
    assert job["status"] == "done" and job["name"] == "notes.txt"
    assert not (web.data.parent / "escape").exists() and not list(web.data.parent.rglob("notes.txt"))


def _raw_get(url: str, path: str) -> tuple[int, bytes]:
    """GET without any client-side normalisation of the path (httpx would resolve '..')."""
    host, port = url.removeprefix("http://").split(":")
    con = http.client.HTTPConnection(host, int(port), timeout=10)
    con.putrequest("GET", path, skip_accept_encoding=True)
    con.endheaders()
    resp = con.getresponse()
    return resp.status, resp.read()


def test_path_traversal_is_refused(web, videos):
    r = upload(web.url, videos / "desk_window_short.mp4")
    job_id = r.json()["id"]
    assert wait_job(web.url, job_id)["status"] == "done"
    attempts = [
        "/api/jobs/../../../../etc/passwd",
        "/api/jobs/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/api/jobs/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd/srt",
        f"/api/jobs/{job_id}/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        f"/api/jobs/{job_id}/../../../../etc/passwd",
        f"/api/jobs/{job_id}/%2e%2e%2f%2e%2e%2fjobs.sqlite",
        f"/api/jobs/{job_id}/..%252F..%252Fjobs.sqlite",
        f"/api/jobs/{job_id}/input",
        f"/api/jobs/{job_id}%2F..%2F..%2Fjobs.sqlite/srt",
        "/static/../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/static/..%252f..%252fjobs.py",
        "/fonts/..%2f__init__.py",
        "/fonts/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    ]
    for path in attempts:
        status, body = _raw_get(web.url, path)
        assert status in (400, 404, 405, 422), (path, status)
        assert b"root:" not in body and b"SQLite format" not in body and b"import" not in body, path
    # a job's own files are reachable, and only through its id
    status, body = _raw_get(web.url, f"/api/jobs/{job_id}/vtt")
    assert status == 200 and body.startswith(b"WEBVTT")


def test_job_ids_are_random(web, videos):
    ids = [upload(web.url, videos / "desk_window_short.mp4").json()["id"] for _ in range(3)]
    for i in ids:
        wait_job(web.url, i)
    assert len(set(ids)) == 3 and all(len(i) == 22 for i in ids)
    # unguessable, not counted: no two share more than a chance prefix, and over many ids the
    # 128 bits of each are set about half the time (a counter sets a handful)
    assert all(os.path.commonprefix([a, b]).__len__() < 4 for a in ids for b in ids if a != b)
    bits = [bin(int.from_bytes(base64.urlsafe_b64decode(new_id() + "=="), "big")).count("1") for _ in range(500)]
    assert len(base64.urlsafe_b64decode(ids[0] + "==")) == 16
    assert 60 < sum(bits) / len(bits) < 68 and min(bits) > 30


@pytest.mark.timing  # each answer within a second: run alone, not beside other tests
def test_status_under_load_and_queue(web, videos):
    """While a job runs, 50 concurrent status requests are each answered within a second;
    a second and a third upload wait in the queue and finish."""
    first = upload(web.url, videos / "office_people_entering.mp4").json()["id"]
    second = upload(web.url, videos / "street_bikes.mp4").json()["id"]
    third = upload(web.url, videos / "carphone_tiny.mp4").json()["id"]
    wait_job(web.url, first, until=("running",), timeout=60)
    queued = [httpx.get(f"{web.url}/api/jobs/{j}").json() for j in (second, third)]
    assert [q["status"] for q in queued] == ["queued", "queued"]
    assert [q["queue_position"] for q in queued] == [1, 2]

    host, port = web.url.removeprefix("http://").split(":")
    connections = [http.client.HTTPConnection(host, int(port), timeout=5) for _ in range(50)]
    for c in connections:
        c.connect()  # connect first: the clock measures answering, not the test's own TCP setup
    start = threading.Barrier(50)

    def timed(con: http.client.HTTPConnection):
        start.wait()
        t = time.perf_counter()
        con.request("GET", f"/api/jobs/{first}")
        resp = con.getresponse()
        body = json.loads(resp.read())
        return resp.status, body["status"], time.perf_counter() - t

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(timed, connections, timeout=30))
    for c in connections:
        c.close()
    assert all(code == 200 for code, _, _ in results)
    assert any(status == "running" for _, status, _ in results)  # the load met a running job
    slowest = max(t for _, _, t in results)
    print(f"50 concurrent status requests: slowest {slowest * 1000:.0f} ms")
    assert slowest < 1.0, f"slowest status answer took {slowest:.2f} s"

    for j in (first, second, third):
        assert wait_job(web.url, j)["status"] == "done"


def test_search_finished_jobs(web, videos):
    job = wait_job(web.url, upload(web.url, videos / "multishot_4cuts.mp4").json()["id"])
    seg = job["segments"][-1]
    word = max(seg["text"].rstrip(".").split(), key=len)
    hits = httpx.get(f"{web.url}/api/search", params={"q": word}).json()["hits"]
    assert any(h["job"] == job["id"] and h["start"] == seg["start"] and h["text"] == seg["text"] for h in hits)
    assert httpx.get(f"{web.url}/api/search", params={"q": "우주정거장"}).json()["hits"] == []


def test_openapi_and_offline_docs(web):
    spec = httpx.get(f"{web.url}/openapi.json").json()
    post = spec["paths"]["/api/jobs"]["post"]
    assert "multipart/form-data" in post["requestBody"]["content"]
    assert {"/api/jobs/{job_id}", "/api/jobs/{job_id}/{kind}", "/api/search"} <= set(spec["paths"])
    docs = httpx.get(f"{web.url}/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in docs and "https://" not in docs
    assert httpx.get(f"{web.url}/docs-assets/swagger-ui-bundle.js").status_code == 200


def test_page_needs_no_other_host(web):
    page = httpx.get(f"{web.url}/")
    assert page.status_code == 200 and '<html lang="ko">' in page.text
    for path in ("/", "/static/app.js", "/static/app.css"):
        text = httpx.get(f"{web.url}{path}").text
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//|fetch\(\s*["']https?:""",
                             text), path
    assert httpx.get(f"{web.url}/fonts/NanumGothicBold.ttf").status_code == 200


def test_restart_keeps_finished_and_fails_unfinished(tmp_path, videos):
    data = tmp_path / "data"
    server = Server(data)
    try:
        done_id = upload(server.url, videos / "multishot_4cuts.mp4").json()["id"]
        assert wait_job(server.url, done_id)["status"] == "done"
        vtt_before = httpx.get(f"{server.url}/api/jobs/{done_id}/vtt").text
        busy_id = upload(server.url, videos / "office_people_entering.mp4").json()["id"]
        wait_job(server.url, busy_id, until=("running",), timeout=60)
        queued_id = upload(server.url, videos / "carphone_tiny.mp4").json()["id"]
        assert httpx.get(f"{server.url}/api/jobs/{queued_id}").json()["status"] == "queued"
        time.sleep(1.0)
    finally:
        server.stop(kill=True)  # SIGKILL mid-job: no chance to tidy up

    server = Server(data)
    try:
        job = httpx.get(f"{server.url}/api/jobs/{done_id}").json()
        assert job["status"] == "done"
        assert httpx.get(f"{server.url}/api/jobs/{done_id}/vtt").text == vtt_before
        assert httpx.get(f"{server.url}/api/jobs/{done_id}/mp4").status_code == 200
        busy = httpx.get(f"{server.url}/api/jobs/{busy_id}").json()
        assert busy["status"] == "failed" and busy["error"]["kind"] == "restarted"
        assert "다시 시작" in busy["error"]["message"]
        assert not list((data / "jobs" / busy_id).iterdir())  # partial outputs removed
        queued = httpx.get(f"{server.url}/api/jobs/{queued_id}").json()  # waiting when the server died
        assert queued["status"] == "failed" and queued["error"]["kind"] == "restarted"
    finally:
        server.stop()

    # finished jobs are removed after --keep hours (here 2 s) by the server itself
    server = Server(data, "--keep", str(2 / 3600))
    try:
        deadline = time.monotonic() + 30
        while httpx.get(f"{server.url}/api/jobs/{done_id}").status_code != 404:
            assert time.monotonic() < deadline, "old job not removed"
            time.sleep(0.5)
        assert not (data / "jobs" / done_id).exists() and not (data / "jobs" / busy_id).exists()
    finally:
        server.stop()


# ----------------------------------------------------------------------------- the store, without a server

def test_old_jobs_are_removed(tmp_path):
    store = JobStore(tmp_path)
    jobs = []
    for status in ("done", "failed", "running", "done"):
        upload_file = store.new_upload()
        upload_file.write_bytes(b"x")
        job = store.create("v.mp4", upload_file)
        store.update(job.id, status=status, finished=time.time() if status != "running" else None)
        jobs.append(job.id)
    now = time.time()
    store.update(jobs[3], finished=now - 10)  # recent
    removed = store.cleanup(max_age=3600, now=now + 7200)
    assert set(removed) == {jobs[0], jobs[1], jobs[3]}  # the running one stays, whatever its age
    assert [j.id for j in store.list()] == [jobs[2]]
    assert not store.folder(jobs[0]).exists() and store.folder(jobs[2]).exists()
    assert store.cleanup(max_age=3600, now=now) == []
    store.close()
    assert [j.id for j in JobStore(tmp_path).list()] == [jobs[2]]  # removed from the database too


def test_full_queue_answers_503_with_retry_after_and_serve_options(tmp_path, videos):
    """A server with --queue 1 refuses a third upload while one job runs and one waits
    (503, Retry-After); the jobs it ran used its --model and --segments."""
    from kvcap import modelfile

    model = tmp_path / "my-model"
    shutil.copytree(modelfile.default_dir(), model)
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    (model / "config.json").write_text(json.dumps({**config, "name": "my-model"}), encoding="utf-8")
    server = Server(tmp_path / "data", "--queue", "1", "--model", str(model), "--segments", "fixed:3")
    try:
        first = upload(server.url, videos / "street_bikes.mp4").json()["id"]
        wait_job(server.url, first, until=("running",), timeout=60)
        second = upload(server.url, videos / "carphone_tiny.mp4")
        assert second.status_code == 201
        third = upload(server.url, videos / "desk_window_short.mp4")
        assert third.status_code == 503 and third.json()["kind"] == "busy"
        assert third.headers["retry-after"] == "30"
        done = wait_job(server.url, first)
        assert done["status"] == "done" and done["model"] == "my-model"
        assert all(round(s["start"], 3) % 3 == 0 for s in done["segments"])  # fixed 3-second windows
        assert not list((tmp_path / "data" / "uploads").iterdir())  # the refused upload left nothing
    finally:
        server.stop(kill=True)


def test_serve_refuses_bad_options(tmp_path):
    from typer.testing import CliRunner

    from kvcap.cli import app

    r = CliRunner().invoke(app, ["serve", "--data", str(tmp_path), "--max-upload", "0"])
    assert r.exit_code == 2 and "--max-upload" in r.output
    r = CliRunner().invoke(app, ["serve", "--data", str(tmp_path), "--model", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "nope" in r.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = CliRunner().invoke(app, ["serve", "--data", str(tmp_path), "--port", str(port)])
    assert r.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in r.output


def test_player_gets_a_browser_playable_copy(web, videos):
    """An AVI (not playable in browsers) gets an H.264 MP4 copy for the player, without captions."""
    need(videos / "plaza_crowd_broken_count.avi")
    job = wait_job(web.url, upload(web.url, videos / "plaza_crowd_broken_count.avi").json()["id"])
    assert job["status"] == "done", job
    r = httpx.get(f"{web.url}{job['video']}")
    assert r.headers["content-type"] == "video/mp4"
    out = web.data.parent / "preview.mp4"
    out.write_bytes(r.content)
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.video[0].codec_context.format.name == "yuv420p"


@pytest.mark.parametrize("name, codec, pix_fmt", [("clip.mkv", "libx264", "yuv420p"),
                                                   ("clip444.mp4", "libx264", "yuv444p")])
def test_mkv_and_444_uploads_get_a_player_copy(web, tmp_path, name, codec, pix_fmt):
    """Browsers play neither H.264 in Matroska nor H.264 4:4:4: the player gets a yuv420p MP4."""
    path = make_video(tmp_path / name, [(200, 30, 30), (30, 200, 30)], seconds_each=1.5, pix_fmt=pix_fmt)
    job = wait_job(web.url, upload(web.url, path).json()["id"])
    assert job["status"] == "done", job
    r = httpx.get(f"{web.url}{job['video']}")
    assert r.headers["content-type"] == "video/mp4" and r.content != path.read_bytes()
    out = tmp_path / "player.mp4"
    out.write_bytes(r.content)
    with av.open(str(out)) as c:
        assert c.format.name.startswith("mov,mp4")
        assert (c.streams.video[0].codec_context.name, c.streams.video[0].codec_context.format.name) == (
            "h264", "yuv420p")


def test_synthetic_multiscene_upload(web, tmp_path):
    video = make_video(tmp_path / "scenes.webm", [(200, 30, 30), (30, 200, 30)], seconds_each=3.0, codec="libvpx-vp9")
    job = wait_job(web.url, upload(web.url, video).json()["id"])
    assert job["status"] == "done" and job["segments"]
    r = httpx.get(f"{web.url}{job['video']}")
    assert r.headers["content-type"] == "video/webm" and r.content == video.read_bytes()
    assert json.loads(httpx.get(f"{web.url}/api/jobs/{job['id']}/json").text)["input"] == "scenes.webm"
