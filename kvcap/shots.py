"""Segmentation: shots from PySceneDetect's detectors, then windows of bounded length.

The detector is fed frame by frame from the one decoding pass (small BGR frames, as
PySceneDetect's own manager downscales them), so cuts are known as soon as they pass and
the frames of finished segments can be encoded and dropped while decoding goes on.

Spec strings (``--segments``):
- ``shots`` (default): content-change cuts (ContentDetector), minimum shot length
  `min_shot` seconds (quicker cuts merge into one segment); shots longer than `max_segment` are split into equal windows.
- ``adaptive`` / ``hash``: the same with PySceneDetect's AdaptiveDetector / HashDetector.
- ``fixed:N``: plain N-second windows, no detection.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import KvcapError

DETECT_WIDTH = 128  # content scores barely change below PySceneDetect's 256; the cost drops 4x


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    shot: int = 0  # which shot it is a window of (fixed windows: all one "shot")

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class SegmentSpec:
    kind: str = "shots"  # shots | adaptive | hash | fixed
    fixed: float = 0.0
    max_segment: float = 8.0
    min_shot: float = 2.0  # subtitles shown for under ~2 s cannot be read; quicker cuts merge
    threshold: float | None = None

    @classmethod
    def parse(cls, text: str, max_segment: float = 8.0, min_shot: float = 2.0,
              threshold: float | None = None) -> "SegmentSpec":
        text = text.strip().lower()
        if not max_segment > 0:  # also catches NaN; 0 would cut windows of no length forever
            raise KvcapError(f"bad --max-segment {max_segment}: it must be more than 0 seconds")
        if not min_shot >= 0:
            raise KvcapError(f"bad --min-shot {min_shot}: it must be 0 seconds or more")
        if text.startswith("fixed:"):
            try:
                n = float(text.split(":", 1)[1])
            except ValueError:
                n = -1
            if not n > 0:
                raise KvcapError(f"bad --segments {text!r}: fixed:N needs N > 0 seconds")
            return cls("fixed", fixed=n, max_segment=max_segment, min_shot=min_shot)
        if text in ("shots", "content", "adaptive", "hash"):
            return cls("shots" if text == "content" else text, max_segment=max_segment, min_shot=min_shot,
                       threshold=threshold)
        raise KvcapError(f"bad --segments {text!r}: use shots, adaptive, hash or fixed:N")


def detect_size(width: int, height: int) -> tuple[int, int]:
    if width <= DETECT_WIDTH:
        return width - width % 2 or 2, height - height % 2 or 2
    h = max(2, round(height * DETECT_WIDTH / width / 2) * 2)
    return DETECT_WIDTH, h


def load_detectors() -> None:
    """Import PySceneDetect (and OpenCV with it, ~0.15 s) now rather than inside the first video."""
    import scenedetect.detectors  # noqa: F401


class ShotDetector:
    """Online cut detection: `push` each frame, get cut times back as they are decided."""

    def __init__(self, spec: SegmentSpec, fps: float):
        from scenedetect import AdaptiveDetector, ContentDetector, FrameTimecode, HashDetector

        self._tc = lambda t: FrameTimecode(float(t), fps=fps)
        self.spec = spec
        min_len = f"{spec.min_shot}s"
        if spec.kind == "fixed":
            self.detector = None
        elif spec.kind == "adaptive":
            self.detector = AdaptiveDetector(min_scene_len=min_len, **_thr("adaptive_threshold", spec.threshold))
        elif spec.kind == "hash":
            self.detector = HashDetector(min_scene_len=min_len, **_thr("threshold", spec.threshold))
        else:
            self.detector = ContentDetector(min_scene_len=min_len, **_thr("threshold", spec.threshold))
        self._last = 0.0

    @property
    def needs_frames(self) -> bool:
        return self.detector is not None

    def push(self, time: float, bgr_small: np.ndarray) -> list[float]:
        self._last = time
        if self.detector is None:
            return []
        return [tc.seconds for tc in self.detector.process_frame(self._tc(time), bgr_small)]

    def finish(self) -> list[float]:
        if self.detector is None:
            return []
        return [tc.seconds for tc in self.detector.post_process(self._tc(self._last))]


def _thr(name: str, value: float | None) -> dict:
    return {} if value is None else {name: value}


def windows(start: float, end: float, max_len: float, shot: int = 0) -> list[Segment]:
    """Split a shot [start, end) into windows of at most `max_len` seconds.

    Windows of exactly `max_len` from the start while more than 1.5x `max_len` remains,
    then the rest as one window (or two equal halves). A window is thereby fixed as soon
    as the shot is 1.5 windows past its start, so long shots can be captioned while the
    video still decodes, and the result is the same as if the whole shot were known.
    """
    out: list[Segment] = []
    a = start
    while end - a > 1.5 * max_len + 1e-9:
        out.append(Segment(a, a + max_len, shot))
        a += max_len
    rest = end - a
    if rest <= 1e-9:
        return out
    if rest <= max_len + 1e-9:
        return out + [Segment(a, end, shot)]
    return out + [Segment(a, a + rest / 2, shot), Segment(a + rest / 2, end, shot)]


def segments_from_cuts(cuts: list[float], end: float, spec: SegmentSpec, final: bool = True) -> list[Segment]:
    """Segments of [0, end): shots between cuts split into windows (or fixed windows).

    With `final=False`, `end` is only how far decoding has got: the result holds just the
    segments that can no longer change (closed shots, and windows of the open shot that
    are fixed already).
    """
    if spec.kind == "fixed":
        out, t = [], 0.0
        while t < end - 1e-6:
            seg = Segment(t, min(end, t + spec.fixed))
            if final or seg.end < end - 1e-6:
                out.append(seg)
            t += spec.fixed
        return out
    inner = sorted(c for c in cuts if 0.0 < c < end)
    bounds = [0.0] + inner + [end]
    out = []
    for shot, (a, b) in enumerate(zip(bounds, bounds[1:])):
        if final or b < end:
            out.extend(windows(a, b, spec.max_segment, shot))
        else:  # the open shot: windows that a longer shot would keep unchanged
            out.extend(w for w in windows(a, b, spec.max_segment, shot)
                       if b - w.start > 1.5 * spec.max_segment + 1e-9)
    return out
