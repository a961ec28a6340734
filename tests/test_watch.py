"""`kvcap watch`: captions while the video plays, alerts, a stream that dies and comes
back, kill -9, webhooks."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import pytest

from kvcap import korean


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kvcap", "watch", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"watch exited: {proc.stderr.read()}")
        time.sleep(0.1)
    raise AssertionError("timed out")


class Loopback:
    """An HTTP server on 127.0.0.1 in a thread, for `handler` (its log kept quiet)."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], path: str):
        handler.log_message = lambda *a: None
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}{path}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Receiver(Loopback):
    """A webhook receiver that keeps what it is sent."""

    def __init__(self):
        got = self.got = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

        super().__init__(Handler, "/hook")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def first_words(videos, tmp_path_factory):
    """What the model says of street_bikes.mp4 (watched at full speed): a word to alert on."""
    out = tmp_path_factory.mktemp("fast")
    r = subprocess.run([sys.executable, "-m", "kvcap", "watch", str(videos / "street_bikes.mp4"), "--max-segment",
                        "2", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    texts = [x["text"] for x in records(out / "watch.jsonl") if "text" in x]
    nouns = [n for n in korean.lemmas(texts[1]) if n in korean.nouns_many([texts[1]])[0]]
    return texts, nouns[0]


def test_captions_arrive_while_the_video_plays_and_alerts_fire(videos, tmp_path, first_words):
    texts, word = first_words
    receiver = Receiver()
    try:
        out = tmp_path / "live"
        proc = start(videos / "street_bikes.mp4", "--realtime", "--max-segment", "2", "--alert", f"{word},코끼리",
                     "--webhook", receiver.url, "--keep-clips", "--out", out)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
    finally:
        receiver.stop()
    log = records(out / "watch.jsonl")
    started = _wall(log[0])
    caps = [x for x in log if "text" in x]
    assert [x["text"] for x in caps] == texts  # the same captions as at full speed
    # the first caption came while the 10 s video was still playing: before 40% of it
    assert _wall(caps[0]) - started < 4.0, (_wall(caps[0]) - started)
    assert _wall(caps[-1]) - started > 8.0  # and it really played at its own pace
    starts = [x["stream_start"] for x in caps]
    assert starts == sorted(starts) and all(a["stream_end"] == b["stream_start"] for a, b in zip(caps, caps[1:]))
    assert [_wall(x) for x in log] == sorted(_wall(x) for x in log)
    alerts = records(out / "alerts.jsonl")
    assert alerts and {a["alert"] for a in alerts} == {word}  # '코끼리' is in no caption
    assert word in korean.lemmas(alerts[0]["text"])
    assert "경보" in stdout and word in stdout
    assert [a["alert"] for a in receiver.got] == [a["alert"] for a in alerts]
    for a in alerts:  # each with a clip of its segment, copied from the stream (not re-encoded)
        with av.open(str(out / a["clip"])) as c:
            v = c.streams.video[0]
            seconds = float(v.duration * v.time_base)
            assert v.codec_context.name == "h264" and sum(1 for _ in c.decode(video=0)) == v.frames
        assert a["stream_end"] - a["stream_start"] <= seconds + 0.05
    assert webvtt_texts(out / "watch.vtt") == texts


def webvtt_texts(path: Path) -> list[str]:
    import webvtt

    return [c.text for c in webvtt.read(str(path)).captions]


def _wall(record: dict) -> float:
    import datetime

    return datetime.datetime.fromisoformat(record["wall"]).timestamp()


def test_kill_9_leaves_whole_lines_and_a_dead_webhook_does_not_stop_captioning(videos, tmp_path):
    out = tmp_path / "live"
    proc = start(videos / "office_people_entering.mp4", "--realtime", "--max-segment", "1", "--alert", "여자,남자",
                 "--cooldown", "0", "--webhook", f"http://127.0.0.1:{free_port()}/nobody", "--out", out)
    wait_for(lambda: (out / "watch.jsonl").exists() and "webhook_failed" in (out / "watch.jsonl").read_text(),
             120, proc)  # an alert's POST failed four times (with backoff) ...
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for name in ("watch.jsonl", "alerts.jsonl"):
        text = (out / name).read_text(encoding="utf-8")
        assert text.endswith("\n")
        assert all(json.loads(line) for line in text.splitlines())  # every line whole
    log = records(out / "watch.jsonl")
    first_alert = _wall(records(out / "alerts.jsonl")[0])  # the office captions name a man or a woman
    # ... while captions went on arriving every second: the webhook never held capture up
    during = [_wall(x) for x in log if "text" in x and first_alert < _wall(x)]
    assert len(during) >= 3 and max(b - a for a, b in zip([first_alert, *during], during)) < 2.5


class Flaky(Loopback):
    """Serves an MPEG-TS file; the first connection is cut off after `cut` bytes."""

    def __init__(self, data: bytes, cut: int):
        self.connections = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.end_headers()
                body = data[:cut] if outer.connections == 1 else data
                for a in range(0, len(body), 16384):
                    self.wfile.write(body[a : a + 16384])
                if outer.connections == 1:
                    self.connection.shutdown(socket.SHUT_RDWR)  # the stream dies mid-way

        super().__init__(Handler, "/live.ts")


def as_mpegts(src: Path, dst: Path) -> Path:
    with av.open(str(src)) as i, av.open(str(dst), "w", format="mpegts") as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for p in i.demux(i.streams.video[0]):
            if p.dts is not None:
                p.stream = s
                o.mux(p)
    return dst


def test_a_stream_that_dies_is_reconnected_and_goes_on(videos, tmp_path):
    data = as_mpegts(videos / "street_bikes.mp4", tmp_path / "live.ts").read_bytes()
    server = Flaky(data, cut=len(data) // 2)
    try:
        out = tmp_path / "live"
        proc = start(server.url, "--realtime", "--max-segment", "2", "--out", out)
        log = lambda: records(out / "watch.jsonl") if (out / "watch.jsonl").exists() else []  # noqa: E731
        wait_for(lambda: any(x.get("event") == "reconnected" for x in log()), 90, proc)
        reconnected = next(i for i, x in enumerate(log()) if x.get("event") == "reconnected")
        wait_for(lambda: any("text" in x for x in log()[reconnected:]), 60, proc)  # and captions go on
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        server.stop()
    events = [x.get("event") for x in log()]
    assert "disconnected" in events and events.index("disconnected") < events.index("reconnected")
    assert events[-1] == "stopped"  # SIGTERM ends it cleanly, the log closed
    before = [x for x in log()[:reconnected] if "text" in x]
    after = [x for x in log()[reconnected:] if "text" in x]
    assert before and after and after[0]["stream_start"] >= before[-1]["stream_end"]  # time keeps growing
    assert server.connections >= 2 and "kvcap: interrupted" in stderr
