"""Video input with PyAV: check a file, then decode it once, frame by frame.

Frames are yielded as PyAV frames; each stage converts only the frames it uses, at the
size it uses (the shot detector a small BGR frame, the encoder a 224x224 RGB one) through
scalers kept for the whole stream, so no full-size RGB copy of every frame is made. Decoding is threaded.

Headers are not trusted: duration and frame count come from what actually decodes
(`plaza_crowd_broken_count.avi` claims twice the frames it has).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from .errors import KvcapError

MAX_PIXELS = 8192 * 4320  # 8K; beyond this a frame is almost surely a broken or hostile header


@dataclass
class VideoInfo:
    path: Path
    width: int
    height: int
    fps: float  # average; used for timecodes when a frame has no timestamp
    duration: float  # from the container header; an estimate until decoded
    has_audio: bool
    codec: str
    container: str = ""  # FFmpeg's demuxer names, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    audio_codec: str | None = None
    pix_fmt: str | None = None
    damage: "Damage | None" = None  # set by the last decoding pass (frames())

    @property
    def warnings(self) -> list[str]:
        return self.damage.warnings(self.fps) if self.damage else []


@dataclass
class Frame:
    index: int
    time: float  # seconds from the start of the stream
    frame: av.VideoFrame

    scalers: dict  # (width, height, format) -> VideoReformatter, shared by the whole stream

    def _convert(self, width, height, fmt: str, interpolation: str) -> np.ndarray:
        key = (width, height, fmt)
        scaler = self.scalers.get(key)
        if scaler is None:  # one per target: a scaler rebuilds itself whenever its target changes
            scaler = self.scalers[key] = VideoReformatter()
        return scaler.reformat(self.frame, width, height, fmt, interpolation=interpolation).to_ndarray()

    def rgb(self, width: int | None = None, height: int | None = None) -> np.ndarray:
        """This frame resized whole to width x height (default: its own size), RGB uint8."""
        return self._convert(width, height, "rgb24", "AREA")

    def bgr(self, width: int, height: int) -> np.ndarray:
        """A small BGR copy for the shot detector (fast scaling: it only compares frames)."""
        return self._convert(width, height, "bgr24", "FAST_BILINEAR")


def _open(path: Path):
    if not path.exists():
        raise KvcapError("no such file", path, "missing")
    if path.is_dir():
        raise KvcapError("is a folder, not a video", path, "not_video")
    if path.stat().st_size == 0:
        raise KvcapError("empty file (0 bytes)", path, "empty")
    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.error.InvalidDataError:
        if _is_mp4(path):  # an MP4 whose index (written last) never made it: a cut-off download or copy
            raise KvcapError("truncated MP4: the file ends before its index (moov), so nothing can be "
                             "decoded", path, "truncated") from None
        raise KvcapError("not a video file (no known container format)", path, "not_video") from None
    except av.error.EOFError:
        raise KvcapError("zero-length video (the file ends right after its header)", path, "empty") from None
    except av.error.FFmpegError as exc:
        raise KvcapError(f"cannot open video ({exc.strerror or exc})", path, "damaged") from None


def _is_mp4(path: Path) -> bool:
    """An ISO media file (MP4, MOV, 3GP) starts with an `ftyp` box."""
    with open(path, "rb") as f:
        head = f.read(12)
    return head[4:8] == b"ftyp"


def probe(path: str | Path) -> VideoInfo:
    """Check that `path` is a decodable video of sane size; raise KvcapError otherwise."""
    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            if container.streams.audio:
                raise KvcapError("an audio-only file: nothing to caption", path, "audio_only")
            raise KvcapError("a file without a video stream: nothing to caption", path, "no_video")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > MAX_PIXELS:
            raise KvcapError(f"frame size {width}x{height} is beyond the limit of {MAX_PIXELS // 1_000_000} megapixels", path, "too_large")
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        duration = 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
        info = VideoInfo(path, width, height, float(rate), duration, audio is not None, stream.codec_context.name,
                         container.format.name, audio, stream.codec_context.format.name
                         if stream.codec_context.format else None)
    if width <= 0 or height <= 0:
        raise KvcapError("video stream has no frame size (damaged header)", path, "damaged")
    return info


def frames(info: VideoInfo, threads: int = 0) -> Iterator[Frame]:
    """Decode every frame once. Packets that do not decode are skipped, as players do, and
    what was lost is recorded in `info.damage`; a stream with no decodable frame at all
    ends with a KvcapError."""
    path = info.path
    damage = info.damage = Damage()
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threads
        if threads:
            stream.codec_context.thread_count = threads
        index = 0
        last_time = -1.0
        # scalers live as long as the stream: PyAV otherwise builds a new one for every frame
        scalers: dict = {}
        try:
            for packet in container.demux(stream):
                damage.packets += packet.size > 0  # the last one is the decoder's flush
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError:
                    damage.bad_packet(packet)
                    continue
                for frame in decoded:
                    if frame.width * frame.height > MAX_PIXELS:
                        raise KvcapError(f"frame size {frame.width}x{frame.height} is beyond the limit", path, "too_large")
                    t = float(frame.time) if frame.time is not None else index / info.fps
                    if t <= last_time:  # repeated or missing timestamps: keep time moving forward
                        t = last_time + 1.0 / info.fps
                    last_time = t
                    yield Frame(index, t, frame, scalers)
                    index += 1
        except av.error.FFmpegError as exc:  # the demuxer gave up: the rest of the file is lost
            if index == 0:
                raise KvcapError(f"video data is damaged ({exc.strerror or exc})", path, "damaged") from None
            damage.stopped_at = last_time + 1.0 / info.fps
        if index == 0:
            if damage.bad:
                raise KvcapError("video data is damaged: no frame could be decoded", path, "damaged")
            raise KvcapError("zero-length or damaged video: no frame could be decoded", path, "damaged")
        damage.finish(stream, container.format.name, last_time + 1.0 / info.fps, info)


@dataclass
class Damage:
    """What one decoding pass lost: packets that did not decode, and a missing end."""
    packets: int = 0
    bad: list[float] = field(default_factory=list)  # times of packets that did not decode
    stopped_at: float | None = None  # where the file ended early, if it did
    expected: float | None = None  # how long its index says it is

    def bad_packet(self, packet) -> None:
        if packet.pts is not None and packet.time_base is not None:
            self.bad.append(float(packet.pts * packet.time_base))

    def finish(self, stream, container: str, end: float, info: VideoInfo) -> None:
        # an MP4/MOV index lists every sample: fewer packets than it lists means the data
        # ends early (other containers' counts are not trusted: see plaza_crowd_broken_count.avi)
        listed = stream.frames or 0
        if "mp4" in container and listed and self.packets < listed and info.duration > end + 0.5:
            self.stopped_at = end
        if self.stopped_at is not None and info.duration > self.stopped_at:
            self.expected = info.duration

    def ranges(self, fps: float) -> list[tuple[float, float]]:
        """Damaged stretches: bad packets less than a second apart form one."""
        out: list[list[float]] = []
        for t in sorted(self.bad):
            if out and t - out[-1][1] <= 1.0:
                out[-1][1] = t + 1.0 / fps
            else:
                out.append([t, t + 1.0 / fps])
        return [(a, b) for a, b in out]

    def warnings(self, fps: float) -> list[str]:
        """What the user is told, one line each; empty when nothing was lost."""
        out = [f"damaged at {a:.1f}–{b:.1f} s, captioned the rest" for a, b in self.ranges(fps)]
        if self.stopped_at is not None:
            of = f" of {self.expected:.1f} s" if self.expected else ""
            out.append(f"truncated: the video ends at {self.stopped_at:.1f} s{of}, captioned up to there")
        return out
