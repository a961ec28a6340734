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

# wall-clock assertions (captions within seconds of the picture): run alone, not beside other tests
pytestmark = pytest.mark.timing


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
    # a lemma that is a noun on its own (nouns_many folds variants: 자동차 counts as 차)
    nouns = [n for n in korean.lemmas(texts[1]) if korean.nouns_many([n])[0]]
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


class Clock:
    """Time that moves only when something waits or works: pacing tested without waiting."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class SlowCaptioner:
    """Takes `cost` seconds of the clock per caption (a machine far too slow for the stream)
    and records, per caption, the segment and how long after its end the caption began."""

    def __init__(self, clock: Clock, cost: float):
        self.clock, self.cost, self.made = clock, cost, []
        self.encoder = self

    def encode(self, images):
        return images

    def caption_features(self, batch):
        self.clock.sleep(self.cost)
        return [(type("Caption", (), {"text": "사람이 방에 있다."})(), 0.5)]


def watch_slowly(video: Path, out: Path, catch_up: bool, monkeypatch) -> tuple[list[dict], SlowCaptioner]:
    from kvcap import watch

    if not catch_up:
        monkeypatch.setattr(watch, "BEHIND", float("inf"))
    clock = Clock()
    captioner = SlowCaptioner(clock, cost=6.0)
    cfg = watch.WatchConfig(str(video), out, max_segment=2.0, realtime=True)
    watcher = watch.Watcher(cfg, captioner, lambda line, alert: None, clock=clock, sleep=clock.sleep)
    started = []
    real_caption = watcher._caption
    watcher._caption = lambda pool, a, b: (started.append((clock.now, b)), real_caption(pool, a, b))
    watcher.run()
    captioner.made = [{"began": t, "segment_end": b} for t, b in started]
    return records(out / "watch.jsonl"), captioner


def test_realtime_falls_back_to_keyframes_and_keeps_up_when_captioning_is_slow(videos, tmp_path, monkeypatch):
    """Captioning takes 6 s per 2-s segment: without catching up each caption starts later
    than the last (minutes behind by the end); with it, keyframe-only stretches that become
    one longer segment keep every caption one caption's cost from its picture, and the whole
    video is still covered."""
    video = videos / "office_people_entering.mp4"  # a keyframe every second
    log, slow = watch_slowly(video, tmp_path / "on", True, monkeypatch)
    lags = [m["began"] - m["segment_end"] for m in slow.made]
    caps = [r for r in log if "text" in r]
    from kvcap.watch import BEHIND

    assert max(lags) < BEHIND, lags  # each segment captioned as it closes: BEHIND at most
    assert caps[-1]["stream_end"] > 138.0  # to the end of the 139-s video
    assert all(a["stream_end"] <= b["stream_start"] + 1e-6 for a, b in zip(caps, caps[1:]))
    events = [r["event"] for r in log if "event" in r]
    assert "behind" in events and "caught_up" in events
    skipped = sum(r["skipped_frames"] for r in log if r.get("event") == "caught_up")
    assert skipped > 500  # of 1,390 frames, most were not decoded

    _, plain = watch_slowly(video, tmp_path / "off", False, monkeypatch)  # the same without catching up
    assert max(m["began"] - m["segment_end"] for m in plain.made) > 100.0


def test_a_missing_camera_or_unknown_input_format_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kvcap", "watch", "/dev/video97", "--out", tmp_path / "cam"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "kvcap: /dev/video97: no such device (is the camera connected?)"
    proc = subprocess.run([sys.executable, "-m", "kvcap", "watch", "x", "--input-format", "webcam",
                           "--out", tmp_path / "fmt"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "kvcap: bad --input-format 'webcam': FFmpeg here has no such input format"


def test_an_ffmpeg_input_format_is_watched(tmp_path, monkeypatch):
    """--input-format reaches FFmpeg: a lavfi test pattern (what a grab or a camera looks like
    to kvcap: frames with no file behind them) is watched to its end, segment by segment."""
    from kvcap import watch

    assert watch.input_format("/dev/null") is None and watch.input_format("rtsp://cam/stream") is None
    with monkeypatch.context() as m:  # no camera here: a V4L2 device as a path that exists
        m.setattr(watch.os.path, "exists", lambda path: True)
        assert watch.input_format("/dev/video0") == "v4l2"
    clock = Clock()
    cfg = watch.WatchConfig("testsrc2=size=320x240:rate=10:duration=6", tmp_path, max_segment=2.0,
                            min_shot=10.0, input_format="lavfi")
    watch.Watcher(cfg, SlowCaptioner(clock, cost=0.0), lambda line, alert: None).run()
    caps = [r for r in records(tmp_path / "watch.jsonl") if "text" in r]
    assert [(c["stream_start"], c["stream_end"]) for c in caps] == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0)]


def test_an_rtmp_stream_pushed_to_watch_is_captioned_as_it_plays(videos, tmp_path):
    """`--input-option listen=1`: an encoder pushes RTMP to kvcap (scripts/stream_file.py, as
    OBS or a camera would); captions arrive while it plays and cover the whole clip; after
    the push, kvcap listens again, and SIGTERM still ends it while it waits."""
    url = f"rtmp://127.0.0.1:{free_port()}/live/cam"
    proc = start(url, "--input-option", "listen=1", "--max-segment", "2", "--timeout", "2", "--out", tmp_path)
    try:
        wait_for(lambda: (tmp_path / "watch.jsonl").exists(), 60, proc)
        script = Path(__file__).parents[1] / "scripts" / "stream_file.py"
        for _ in range(100):  # the listener opens just after "started" is logged
            push = subprocess.run([sys.executable, str(script), str(videos / "street_bikes.mp4"), url],
                                  capture_output=True, text=True, timeout=60)
            if "Connection refused" not in push.stderr:
                break
            time.sleep(0.2)
        assert push.returncode == 0, push.stderr
        log = wait_for(lambda: [r for r in records(tmp_path / "watch.jsonl") if r.get("event") == "disconnected"]
                       and records(tmp_path / "watch.jsonl"), 30, proc)
        time.sleep(5)  # past the 1-s backoff and a 2-s listening timeout: waiting for the next push
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 143
    finally:
        proc.kill()
        proc.wait()
    assert records(tmp_path / "watch.jsonl")[-1]["event"] == "stopped"
    caps = [r for r in log if "text" in r]
    playing = _wall(next(r for r in log if r.get("event") == "playing"))
    assert caps[-1]["stream_end"] > 9.0 and len(caps) >= 4
    assert _wall(caps[0]) - playing < 5.0  # the first 2-s segment, not after the whole 10-s push
