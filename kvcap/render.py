"""Captioned media: captions burned into an MP4 (libx264, audio kept) or a small GIF.

FFmpeg in the PyAV wheel has no drawtext/libass, so captions are drawn with Pillow: each
subtitle entry is rendered once into an RGBA strip (Hangul font, dark outline so it
reads on any background, wrapped to the frame width) and blended onto the bottom of
every frame it covers.
"""
from __future__ import annotations

import bisect
import os
from fractions import Fraction
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import KvcapError
from .outputs import atomic_path
from .progress import progress_bar
from .video import VideoInfo, frames

FONT_ENV = "KVCAP_FONT"
COPY_AUDIO = {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"}  # codecs MP4 can carry as they are


def font_path() -> Path:
    """The caption font: $KVCAP_FONT if set, else NanumGothic Bold shipped with kvcap."""
    custom = os.environ.get(FONT_ENV)
    path = Path(custom) if custom else Path(str(resources.files("kvcap") / "fonts" / "NanumGothicBold.ttf"))
    if not path.is_file():
        raise KvcapError("caption font not found (set KVCAP_FONT to a .ttf/.otf with Hangul)", path)
    return path


def check_font() -> None:
    """Fail early (before any work) when the caption font is missing or has no Hangul."""
    _font(16)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    path = font_path()
    try:
        font = ImageFont.truetype(str(path), size)
    except OSError:
        raise KvcapError("caption font cannot be read", path) from None
    # a font without Hangul draws nothing, or the same box ("tofu") for every syllable
    ga, na = font.getmask("가"), font.getmask("나")
    if ga.getbbox() is None or (ga.size == na.size and bytes(ga) == bytes(na)):
        raise KvcapError("caption font has no Hangul glyphs", path)
    return font


def wrap(text: str, font: ImageFont.FreeTypeFont, max_width: float) -> list[str]:
    """Break at spaces to fit `max_width`; a word wider than the line is broken by syllable."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if font.getlength(trial) <= max_width:
            line = trial
            continue
        if line:
            lines.append(line)
        line = ""
        for ch in word:
            if font.getlength(line + ch) > max_width and line:
                lines.append(line)
                line = ""
            line += ch
    if line:
        lines.append(line)
    return lines


class CaptionStrip:
    """One subtitle rendered for frames of width x height: RGBA pixels and where they go."""

    def __init__(self, text: str, width: int, height: int):
        size = max(12, round(min(height, width * 9 / 16) * 0.06))
        font = _font(size)
        stroke = max(1, size // 10)
        lines = wrap(text, font, width * 0.9)
        line_h = round(size * 1.3)
        strip_h = line_h * len(lines) + 2 * stroke + 4
        img = Image.new("RGBA", (width, strip_h), (0, 0, 0, 0))
        draw = ImageDraw.Draw(img)
        for i, line in enumerate(lines):
            x = (width - font.getlength(line)) / 2
            draw.text((x, stroke + 2 + i * line_h), line, font=font, fill=(255, 255, 255, 255),
                      stroke_width=stroke, stroke_fill=(0, 0, 0, 255))
        rgba = np.asarray(img, dtype=np.float32)
        self.rgb = rgba[..., :3]
        self.alpha = rgba[..., 3:4] / 255.0
        self.top = max(0, height - strip_h - round(height * 0.05))
        self.bottom = min(height, self.top + strip_h)

    def draw(self, rgb: np.ndarray) -> np.ndarray:
        band = rgb[self.top : self.bottom].astype(np.float32)
        h = band.shape[0]
        band = band * (1.0 - self.alpha[:h]) + self.rgb[:h] * self.alpha[:h]
        rgb[self.top : self.bottom] = band.astype(np.uint8)
        return rgb


class Timeline:
    """Which caption is on screen at a time (entries are sorted and do not overlap)."""

    def __init__(self, segments: Sequence, width: int, height: int):
        self.starts = [s.start for s in segments]
        self.segments = list(segments)
        self.width, self.height = width, height
        self._strips: dict[int, CaptionStrip] = {}

    def at(self, t: float) -> CaptionStrip | None:
        i = bisect.bisect_right(self.starts, t) - 1
        if i < 0 or t >= self.segments[i].end:
            return None
        if i not in self._strips:
            self._strips = {i: CaptionStrip(self.segments[i].text, self.width, self.height)}
        return self._strips[i]


def render_mp4(info: VideoInfo, segments: Sequence, target: Path, *, force: bool = False,
               progress: bool = False, crf: int = 20, preset: str = "veryfast",
               on_progress: Callable[[float], None] | None = None) -> Path:
    """The video at its own size, rate and length with captions burned in; audio is kept.
    With no segments it is a plain H.264/AAC copy that browsers play. `on_progress` gets
    the seconds rendered so far."""
    # yuv420p needs even sizes: crop the odd last row/column; a video under 2 pixels is scaled to 2
    width, height = max(2, info.width - info.width % 2), max(2, info.height - info.height % 2)
    scale = info.width < 2 or info.height < 2
    timeline = Timeline(segments, width, height)
    rate = Fraction(info.fps).limit_denominator(1001) if info.fps > 0 else Fraction(25)
    with atomic_path(target, force) as tmp, av.open(str(tmp), "w", format="mp4") as out:
        vout = out.add_stream("libx264", rate=rate, options={"crf": str(crf), "preset": preset})
        vout.width, vout.height, vout.pix_fmt = width, height, "yuv420p"
        vout.codec_context.time_base = Fraction(1, 1000) if info.codec == "gif" else 1 / rate
        audio = _AudioCopy(info.path, out) if info.has_audio else None
        with progress_bar(f"렌더링 (mp4) {info.path.name}", total=info.duration or None, enabled=progress,
                          counts=False) as advance:
            last, last_pts, video_end = 0.0, -1, 0.0
            for f in frames(info):
                rgb = f.rgb(width, height) if scale else f.rgb()[:height, :width]
                strip = timeline.at(f.time)
                if strip is not None:
                    rgb = strip.draw(np.ascontiguousarray(rgb))
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                # variable-rate input can put two frames in one tick: keep pts strictly increasing
                last_pts = frame.pts = max(round(f.time / vout.codec_context.time_base), last_pts + 1)
                frame.time_base = vout.codec_context.time_base
                for packet in vout.encode(frame):
                    out.mux(packet)
                video_end = f.time + 1.0 / float(rate)
                if audio:
                    audio.mux_until(f.time)
                advance(f.time - last)
                last = f.time
                if on_progress:
                    on_progress(f.time)
            for packet in vout.encode():
                out.mux(packet)
            if audio:
                audio.finish(video_end)
    return target


class _AudioCopy:
    """Carries the input's first audio track into the output, interleaved with the video:
    packets are copied when MP4 can hold the codec, otherwise re-encoded to AAC."""

    def __init__(self, path: Path, out):
        self.container = av.open(str(path), metadata_errors="ignore")
        self.stream = self.container.streams.audio[0]
        # FFmpeg names some decoders apart from their codec ("mp3float" decodes mp3)
        self.copy = self.stream.codec_context.name.removesuffix("float") in COPY_AUDIO
        if self.copy:
            self.out_stream = out.add_stream_from_template(self.stream)
        else:
            self.out_stream = out.add_stream("aac", rate=self.stream.codec_context.sample_rate or 48000)
        self.out = out
        self.packets = self.container.demux(self.stream)
        self.next = None  # read, not yet muxed: it starts after the time asked for
        self.done = False
        self.written = 0.0  # re-encoding: seconds of audio encoded so far

    def mux_until(self, t: float) -> None:
        """Mux the packets that start before `t`."""
        while not self.done:
            if self.next is None:
                try:
                    self.next = next(self.packets)
                except (StopIteration, av.error.FFmpegError):
                    self.done = True
                    break
                if self.next.dts is None:  # the demuxer's final flush packet
                    self.next = None
                    continue
            packet = self.next
            if packet.pts is not None and float(packet.pts * packet.time_base) >= t:
                break
            self._mux(packet)
            self.next = None

    def _mux(self, packet) -> None:
        if self.copy:
            packet.stream = self.out_stream
            self.out.mux(packet)
            return
        try:
            decoded = packet.decode()
        except av.error.FFmpegError:
            return
        for frame in decoded:
            # audio that did not decode (damage) becomes silence, so what follows stays in sync
            if frame.time is not None and frame.time - self.written > 0.05:
                self._encode(_silence(frame, frame.time - self.written))
            self._encode(frame)

    def _encode(self, frame) -> None:
        self.written += frame.samples / frame.sample_rate
        frame.pts = None
        for p in self.out_stream.encode(frame):
            self.out.mux(p)

    def finish(self, end: float) -> None:
        """The audio up to `end` (where the video ends: the two never disagree in length)."""
        self.mux_until(end)
        if not self.copy:
            for p in self.out_stream.encode():
                self.out.mux(p)
        self.container.close()


def _silence(like: av.AudioFrame, seconds: float) -> av.AudioFrame:
    """`seconds` of silence in the format of `like`."""
    frame = av.AudioFrame(format=like.format.name, layout=like.layout.name,
                          samples=max(1, round(seconds * like.sample_rate)))
    for plane in frame.planes:
        plane.update(bytes(plane.buffer_size))
    frame.sample_rate = like.sample_rate
    return frame


def render_gif(info: VideoInfo, segments: Sequence, target: Path, *, force: bool = False,
               progress: bool = False, max_width: int = 480, fps: float = 10.0) -> Path:
    """A small looping GIF (at most `max_width` wide, `fps` frames a second) with the same captions."""
    scale = min(1.0, max_width / info.width)
    width, height = max(2, round(info.width * scale)), max(2, round(info.height * scale))
    timeline = Timeline(segments, width, height)
    images: list[Image.Image] = []
    times: list[float] = []
    step = 1.0 / min(fps, info.fps or fps)
    next_t = 0.0
    with progress_bar(f"렌더링 (gif) {info.path.name}", total=info.duration or None, enabled=progress,
                      counts=False) as advance:
        last = 0.0
        for f in frames(info):
            advance(f.time - last)
            last = f.time
            if f.time + 1e-6 < next_t:
                continue
            next_t = f.time + step
            rgb = f.rgb(width, height)
            strip = timeline.at(f.time)
            if strip is not None:
                rgb = strip.draw(rgb)
            images.append(Image.fromarray(rgb).quantize(colors=255, method=Image.Quantize.MEDIANCUT))
            times.append(f.time)
    durations = [max(20, round((b - a) * 1000)) for a, b in zip(times, times[1:])] + [round(step * 1000)]
    with atomic_path(target, force) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=durations,
                       loop=0, optimize=False, disposal=1)
    return target
