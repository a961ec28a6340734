"""Keyframes: several frames per segment, evenly spread, each resized whole to 224x224.

While the video decodes, `KeyframePool` keeps small candidate frames at a fixed rate
(a few per second, at the encoder's size only); once a segment is final, its keyframes
are the candidates nearest to evenly spread times inside it, and older candidates are
dropped, so memory stays bounded by the longest open shot.
"""
from __future__ import annotations

import bisect
from pathlib import Path

import numpy as np

from .errors import KvcapError
from .features import INPUT_SIZE
from .video import Frame, frames, probe


class KeyframePool:
    def __init__(self, rate: float = 2.0):  # 4 distinct keyframes even in a 2-second shot
        self.period = 1.0 / rate
        self.times: list[float] = []
        self.images: list[np.ndarray] = []
        self._next = 0.0

    def wants(self, time: float) -> bool:
        return time >= self._next - 1e-6

    def add(self, frame: Frame) -> None:
        """Keep this frame (call only when `wants(frame.time)`)."""
        self.times.append(frame.time)
        self.images.append(frame.rgb(INPUT_SIZE, INPUT_SIZE))
        self._next = (int(frame.time / self.period + 1e-6) + 1) * self.period  # on a fixed grid

    def take(self, start: float, end: float, k: int) -> np.ndarray:
        """Up to k distinct candidates nearest to the centres of k equal parts of [start, end)."""
        lo = bisect.bisect_left(self.times, start - 1e-6)
        hi = bisect.bisect_left(self.times, end - 1e-6)
        if hi <= lo:  # a segment shorter than the sampling period: nearest candidate
            if not self.times:
                raise KvcapError("no frames in segment")
            mid = (start + end) / 2
            j = min(range(len(self.times)), key=lambda i: abs(self.times[i] - mid))
            return self.images[j][None]
        picks: list[int] = []
        for i in range(k):
            t = start + (i + 0.5) * (end - start) / k
            j = min(range(lo, hi), key=lambda n: abs(self.times[n] - t))
            if j not in picks:
                picks.append(j)
        return np.stack([self.images[j] for j in picks])

    def drop_before(self, time: float) -> None:
        """Forget candidates before `time`, but the last of them: a short segment that starts
        between two candidates still has its nearest frame."""
        cut = bisect.bisect_left(self.times, time - 1e-6) - 1
        if cut > 0:
            del self.times[:cut], self.images[:cut]


def sample_frames(path: str | Path, n: int) -> np.ndarray:
    """n frames evenly spread over a whole video, 224x224 RGB (training on video clips)."""
    info = probe(path)
    pool = KeyframePool(rate=max(4.0, 2 * n / max(info.duration, 0.1)))
    end = 0.0
    for f in frames(info):
        if pool.wants(f.time):
            pool.add(f)
        end = f.time
    return pool.take(0.0, end + 1e-3, n)
