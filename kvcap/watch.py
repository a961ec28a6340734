"""Live captions: `kvcap watch` over a camera, a stream, or a file played at its own pace.

The same stages as `kvcap caption`, one segment at a time: frames go to the shot
detector and the keyframe pool as they arrive; a segment closes at a shot change or after
`max_segment` seconds and is captioned at once, so a caption follows its picture within
about max_segment plus the time to caption it. Each caption is appended to a JSON-lines
log (one `write` per whole line: a kill leaves every line whole or absent) and to a rolling
WebVTT; alert words match captions by Kiwi lemma, as `kvcap search` does. A stream that
drops or stalls (a read timeout, not a hang) is reopened with backoff, and said so in the log.
"""
from __future__ import annotations

import collections
import datetime
import json
import os
import queue
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import av
from . import korean
from .errors import KvcapError, check_interrupted
from .frames import KeyframePool
from .outputs import timestamp
from .shots import SegmentSpec, ShotDetector, detect_size
from .video import Frame

READ_TIMEOUT = 10.0  # seconds without data before a live stream counts as stalled
BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)  # waits between reconnection attempts, then the last again
CLIP_BEFORE = 2.0  # seconds of picture kept before an alert's segment in its clip
BEHIND = 3.0  # seconds behind the picture before only keyframes are decoded (catching up); one
# caption (beam 8 in two styles, the witness) can take 1.5 s on 2 cores: 2.0 dropped frames at the end of a 10-s clip
CAUGHT_UP = 0.5  # ... and how close to it again before every frame is
COALESCE = 4  # while catching up, one segment grows to at most this many max-segments
MAX_GOP = 10.0  # stream seconds without a keyframe after which a stream is taken to mark none


# ----------------------------------------------------------------------------- outputs that grow

class LineLog:
    """A JSON-lines file appended one whole line per `write` (O_APPEND): never a torn line."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, record: dict) -> None:
        os.write(self.fd, (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))

    def close(self) -> None:
        os.close(self.fd)


class RollingVtt:
    """A WebVTT file that grows by one cue per caption (a player reloading it sees the latest)."""

    def __init__(self, path: Path):
        self.path = path
        if not path.exists() or path.stat().st_size == 0:
            path.write_text("WEBVTT\n\n", encoding="utf-8")
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND)

    def add(self, start: float, end: float, text: str) -> None:
        os.write(self.fd, f"{timestamp(start)} --> {timestamp(end)}\n{text}\n\n".encode("utf-8"))

    def close(self) -> None:
        os.close(self.fd)


# ----------------------------------------------------------------------------- alerts

@dataclass
class Alerts:
    """Watch-words as lemma sets: '쓰러지다' matches '쓰러져 있다', '사람이 들어오다' needs both."""
    words: list[str]
    cooldown: float = 30.0  # stream seconds before the same word alerts again
    _lemmas: dict[str, set[str]] = field(default_factory=dict)
    _last: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        self._lemmas = {w: set(korean.lemmas(w)) for w in self.words}
        empty = [w for w, lem in self._lemmas.items() if not lem]
        if empty:
            raise KvcapError(f"bad --alert {', '.join(empty)}: no content word to match")

    def match(self, text: str, at: float) -> list[str]:
        """Words this caption matches that are not cooling down."""
        have = set(korean.lemmas(text))
        hits = []
        for word, need in self._lemmas.items():
            if need <= have and at - self._last.get(word, -1e9) >= self.cooldown:
                self._last[word] = at
                hits.append(word)
        return hits


class Webhook:
    """POSTs alerts from a thread of its own, retrying with backoff; capture never waits for it."""

    def __init__(self, url: str, log: Callable[[dict], None], tries: int = 4):
        self.url, self.log, self.tries = url, log, tries
        self.queue: queue.Queue = queue.Queue(maxsize=1000)
        self.thread = threading.Thread(target=self._run, name="kvcap-webhook", daemon=True)
        self.thread.start()

    def send(self, record: dict) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:  # the receiver has been down for long: drop, say so
            self.log({"event": "webhook_dropped", "alert": record})

    def _run(self) -> None:
        while True:
            record = self.queue.get()
            if record is None:
                return
            body = json.dumps(record, ensure_ascii=False).encode("utf-8")
            for attempt in range(self.tries):
                try:
                    req = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
                    urllib.request.urlopen(req, timeout=5).close()
                    break
                except OSError as exc:
                    if attempt == self.tries - 1:
                        self.log({"event": "webhook_failed", "url": self.url, "error": str(exc)})
                    else:
                        time.sleep(0.5 * 2 ** attempt)

    def close(self, wait: float = 5.0) -> None:
        self.queue.put(None)
        self.thread.join(wait)


# ----------------------------------------------------------------------------- frames as they come

def is_live(source: str) -> bool:
    """A URL or a device (reopened when it drops); a plain file ends when it ends."""
    return "://" in source or source.startswith("/dev/")


def input_format(source: str, given: str | None = None) -> str | None:
    """FFmpeg's input format: the one given (x11grab, lavfi, ...), else V4L2 for a /dev/video*
    camera (a device cannot be probed like a file), else None (probed). A device that is not
    there is refused (kind "missing")."""
    if source.startswith("/dev/") and not os.path.exists(source):
        raise KvcapError("no such device (is the camera connected?)", source, "missing")
    if given:
        if given not in av.formats_available:
            raise KvcapError(f"bad --input-format {given!r}: FFmpeg here has no such input format")
        return given
    return "v4l2" if source.startswith("/dev/video") else None


def input_options(given: list[str]) -> dict[str, str]:
    """`KEY=VALUE` strings as FFmpeg input options."""
    bad = [g for g in given if "=" not in g or not g.split("=", 1)[0].strip()]
    if bad:
        raise KvcapError(f"bad --input-option {bad[0]!r}: KEY=VALUE, e.g. rtsp_transport=tcp")
    return dict(g.split("=", 1) for g in given)


class LiveSource:
    """One connection's frames as they arrive (video.Frame, time from the connection's start);
    with `realtime`, a file is played at its own pace. Iterating raises av.error.FFmpegError
    (or OSError) when the stream fails or stalls for `timeout` seconds.

    A paced source (live, or `realtime`) that falls more than BEHIND seconds behind its stream
    decodes keyframes only until it is within CAUGHT_UP of it again (`behind` says so), as a
    player drops frames: the captions stay seconds, not minutes, after what they describe."""

    def __init__(self, source: str, realtime: bool, timeout: float = READ_TIMEOUT, keep: float = 0.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 format: str | None = None, options: dict[str, str] | None = None):
        options = options or {}
        while True:
            try:
                self.container = av.open(source, format=input_format(source, format), options=options,
                                         timeout=(timeout, timeout), metadata_errors="ignore")
                break
            except av.error.ExitError:  # the open timed out (or a signal came while it waited)
                check_interrupted()
                if options.get("listen") != "1":
                    raise
                # a server waiting for its publisher: listen again
        if not self.container.streams.video:
            self.container.close()
            raise KvcapError("no video stream to watch", source, "no_video")
        self.stream = self.container.streams.video[0]
        self.paced = realtime or is_live(source)
        # frame threads hold frames back by a packet each: keyframes only, that is seconds
        self.stream.thread_type = "SLICE" if self.paced else "AUTO"
        self.fps = float(self.stream.average_rate or self.stream.guessed_rate or 25)
        self.realtime = realtime
        self.clock, self.sleep = clock, sleep
        self.behind = False
        self.skipped = 0  # frames not decoded since falling behind
        self.last_key = -1e9  # stream time of the last keyframe packet
        self.on_behind: Callable[[bool, float], None] = lambda behind, lag: None
        self.keep = keep  # seconds of packets kept for clips (0: none)
        self.recent: collections.deque = collections.deque()  # (time from start, packet), oldest first

    def __iter__(self) -> Iterator[Frame]:
        t0, first, n, scalers = self.clock(), None, 0, {}
        origin = None  # the first packet's time: lag is told by packets, as frames stop while we skip
        for packet in self.container.demux(self.stream):
            check_interrupted()
            if self.keep and packet.pts is not None and packet.size:
                self._remember(packet)
            stamp = packet.pts if packet.pts is not None else packet.dts
            if self.paced and stamp is not None:
                at = float(stamp * packet.time_base)
                origin = at if origin is None else origin
                self._pace((self.clock() - t0) - (at - origin), at, packet.is_keyframe)
            if self.behind and not packet.is_keyframe:
                self.skipped += 1  # not decoded: a keyframe needs nothing before it
                continue
            try:
                decoded = packet.decode()
            except av.error.InvalidDataError:  # a damaged packet: skip it, as players do
                continue
            for frame in decoded:
                t = float(frame.time) if frame.time is not None else n / self.fps
                first = t if first is None else first
                if self.realtime:
                    ahead = (t - first) - (self.clock() - t0)
                    if ahead > 0:
                        self.sleep(ahead)
                yield Frame(n, t - first, frame, scalers)
                n += 1

    def _pace(self, lag: float, at: float, key: bool) -> None:
        """Fall behind past BEHIND seconds; catch up within CAUGHT_UP, at a keyframe (what comes
        after one decodes whole) or, in a stream that marks none, at once."""
        if key:
            self.last_key = at
        if not self.behind and lag > BEHIND:
            self.behind, self.skipped = True, 0
            self.on_behind(True, lag)
        elif self.behind and lag < CAUGHT_UP and (key or at - self.last_key > MAX_GOP):
            self.behind = False
            self.on_behind(False, lag)

    def close(self) -> None:
        self.recent.clear()  # packets refer to the container's buffers: gone before it
        self.container.close()

    def _remember(self, packet) -> None:
        t = float(packet.pts * packet.time_base)
        self.origin = getattr(self, "origin", t)
        self.recent.append((t - self.origin, packet))
        while self.recent and self.recent[0][0] < self.recent[-1][0] - self.keep:
            self.recent.popleft()

    def clip(self, start: float, end: float, target: Path) -> Path | None:
        """The packets from the last keyframe at or before `start` to `end`, copied into an MP4."""
        keys = [i for i, (t, p) in enumerate(self.recent) if p.is_keyframe and t <= start + 1e-6]
        first = keys[-1] if keys else next((i for i, (_, p) in enumerate(self.recent) if p.is_keyframe), None)
        if first is None:
            return None
        packets = [p for t, p in list(self.recent)[first:] if t <= end + 1e-6]
        tmp = target.with_name(f".{target.name}.part{os.getpid()}.mp4")
        base = min(p.dts if p.dts is not None else p.pts for p in packets)
        with av.open(str(tmp), "w", format="mp4") as out:
            stream = out.add_stream_from_template(self.stream)
            for p in packets:  # copies: the kept packets may go into the next clip too
                q = av.Packet(bytes(p))
                q.pts, q.dts = p.pts - base, (p.dts - base) if p.dts is not None else None
                q.time_base, q.is_keyframe, q.stream = p.time_base, p.is_keyframe, stream
                out.mux(q)
        os.replace(tmp, target)
        return target


# ----------------------------------------------------------------------------- the watcher

@dataclass
class WatchConfig:
    source: str
    out: Path
    alerts: list[str] = field(default_factory=list)
    max_segment: float = 8.0
    min_shot: float = 2.0
    realtime: bool = False
    cooldown: float = 30.0
    webhook: str | None = None
    keyframes: int = 4
    timeout: float = READ_TIMEOUT
    max_reconnects: int | None = None  # None: for ever
    keep_clips: bool = False  # an MP4 of each alert's segment (and 2 s before it) in out/clips/
    input_format: str | None = None  # FFmpeg's, for devices and grabs (v4l2, x11grab, lavfi)
    input_options: dict[str, str] = field(default_factory=dict)  # FFmpeg's (rtsp_transport=tcp, listen=1)


class Watcher:
    def __init__(self, cfg: WatchConfig, captioner, say: Callable[[str, bool], None],
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.cfg, self.captioner, self.say = cfg, captioner, say
        self.clock, self.sleep = clock, sleep  # a test's own clock: pacing without waiting
        cfg.out.mkdir(parents=True, exist_ok=True)
        self.alerts = Alerts(cfg.alerts, cfg.cooldown)
        self.log = LineLog(cfg.out / "watch.jsonl")
        self.alert_log = LineLog(cfg.out / "alerts.jsonl")
        self.vtt = RollingVtt(cfg.out / "watch.vtt")
        self.webhook = Webhook(cfg.webhook, self.log.write) if cfg.webhook else None
        self.offset = 0.0  # stream time of earlier connections: times keep growing across reconnects
        self.last_text = None

    def run(self) -> None:
        self.log.write(self._stamp({"event": "started", "source": self.cfg.source}))
        failures = 0
        try:
            while True:
                try:
                    got = self._connection()
                    failures = 0 if got else failures + 1
                    if not is_live(self.cfg.source):
                        break
                    self._drop("ended")
                except (av.error.FFmpegError, OSError) as exc:
                    check_interrupted()  # a read cut short by a signal PyAV swallowed
                    if not is_live(self.cfg.source):
                        raise KvcapError(f"cannot read the video ({exc})", self.cfg.source, "damaged") from None
                    failures += 1
                    self._drop(str(exc))
                except KvcapError as exc:  # a camera unplugged after it had worked may come back
                    if exc.kind != "missing" or not self.offset:
                        raise
                    failures += 1
                    self._drop(exc.message)
                if self.cfg.max_reconnects is not None and failures > self.cfg.max_reconnects:
                    raise KvcapError(f"stream lost after {failures} attempts to reconnect", self.cfg.source)
                wait = BACKOFF[min(failures, len(BACKOFF) - 1)]
                self.sleep(wait)
        finally:
            self.log.write(self._stamp({"event": "stopped"}))
            self.close()

    def _behind(self, behind: bool, lag: float) -> None:
        if behind:
            self.log.write(self._stamp({"event": "behind", "lag": round(lag, 3)}))
            self.say(f"처리가 {lag:.0f}초 늦어 따라잡는 중입니다 (키프레임만 봅니다)", False)
        else:
            self.log.write(self._stamp({"event": "caught_up", "lag": round(lag, 3),
                                        "skipped_frames": self.source.skipped}))

    def _drop(self, why: str) -> None:
        self.log.write(self._stamp({"event": "disconnected", "error": why, "stream_time": round(self.offset, 3)}))
        self.say(f"스트림 끊김: {why} — 다시 연결합니다", False)

    def _connection(self) -> bool:
        """Caption one connection's frames; True when any frame came."""
        keep = self.cfg.max_segment + CLIP_BEFORE + 2 if self.cfg.keep_clips else 0.0
        source = self.source = LiveSource(self.cfg.source, self.cfg.realtime, self.cfg.timeout, keep,
                                          clock=self.clock, sleep=self.sleep, format=self.cfg.input_format,
                                          options=self.cfg.input_options)
        source.on_behind = self._behind
        if self.offset:
            self.log.write(self._stamp({"event": "reconnected", "stream_time": round(self.offset, 3)}))
        spec = SegmentSpec(max_segment=self.cfg.max_segment, min_shot=self.cfg.min_shot)
        detector, pool = ShotDetector(spec, source.fps), KeyframePool()
        start, end, small = 0.0, None, None
        try:
            for f in source:
                if small is None:  # the first picture: when the stream's time 0 was on screen
                    self.log.write(self._stamp({"event": "playing", "stream_time": round(self.offset, 3)}))
                    small = detect_size(f.frame.width, f.frame.height)
                cuts = detector.push(f.time, f.bgr(*small))
                if pool.wants(f.time):
                    pool.add(f)
                end = f.time + 1.0 / source.fps
                close = cuts[-1] if cuts else (end if end - start >= self.cfg.max_segment else None)
                if source.behind and end - start < COALESCE * self.cfg.max_segment:
                    close = None  # catching up: one caption for the stretch, not one per segment
                if close is not None and close > start:
                    self._caption(pool, start, close)
                    pool.drop_before(close)
                    start = close
        finally:
            try:
                if end is not None:
                    if end > start + 0.1:  # what came before the end or the drop
                        self._caption(pool, start, end)
                    self.offset += end
            finally:
                source.close()
        return end is not None

    def _caption(self, pool: KeyframePool, start: float, end: float) -> None:
        feats = self.captioner.encoder.encode(pool.take(start, end, self.cfg.keyframes))
        cap, conf = self.captioner.caption_features([feats])[0]
        a, b = self.offset + start, self.offset + end
        record = self._stamp({"stream_start": round(a, 3), "stream_end": round(b, 3), "text": cap.text,
                              "confidence": None if conf is None else round(conf, 3)})
        self.log.write(record)
        self.vtt.add(a, b, cap.text)
        if cap.text != self.last_text:
            self.say(f"{record['wall'][11:19]}  {cap.text}", False)
        self.last_text = cap.text
        clip = None
        for word in self.alerts.match(cap.text, b):
            if self.cfg.keep_clips and clip is None:
                clip = self._clip(start, end, a)
            alert = {**record, "alert": word, **({"clip": clip} if clip else {})}
            self.alert_log.write(alert)
            self.say(f"경보 [{word}] {record['wall'][11:19]}  {cap.text}", True)
            if self.webhook:
                self.webhook.send(alert)

    def _clip(self, start: float, end: float, at: float) -> str | None:
        folder = self.cfg.out / "clips"
        folder.mkdir(exist_ok=True)
        name = f"alert-{at:09.3f}.mp4"
        try:
            made = self.source.clip(max(0.0, start - CLIP_BEFORE), end, folder / name)
        except (av.error.FFmpegError, OSError) as exc:  # a clip is a nicety: the alert stands
            self.log.write(self._stamp({"event": "clip_failed", "error": str(exc)}))
            return None
        return f"clips/{name}" if made else None

    @staticmethod
    def _stamp(record: dict) -> dict:
        return {"wall": datetime.datetime.now().astimezone().isoformat(timespec="milliseconds"), **record}

    def close(self) -> None:
        if self.webhook:
            self.webhook.close()
        for f in (self.log, self.alert_log, self.vtt):
            f.close()
