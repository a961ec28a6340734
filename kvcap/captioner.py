"""The library API: `Captioner.from_pretrained().caption_video(path)`.

One decoding pass drives every stage: each frame goes to the shot detector (small BGR),
a few per second are kept as 224x224 keyframe candidates; as soon as a segment is final
its keyframes are encoded and the candidates before it are dropped. Windows of one
unchanging shot are then grouped (stories.py) and each group is captioned once, in
batches; low-confidence captions are said in the model's general style (confidence.py);
consecutive segments that say the same thing are merged into one subtitle entry.
"""
from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from . import confidence, korean, modelfile
from .captions import Caption
from .features import Encoder, load_image
from .frames import KeyframePool
from .progress import progress_bar
from .shots import Segment, SegmentSpec, ShotDetector, detect_size, load_detectors, segments_from_cuts
from .stories import group_frames, group_windows
from .video import VideoInfo, frames, probe


@dataclass
class CaptionedSegment:
    start: float
    end: float
    text: str
    score: float  # the model's own: geometric mean of the caption's token probabilities
    confidence: float | None = None  # calibrated: expected share of its nouns that are right

    def to_dict(self) -> dict:
        d = {"start": round(self.start, 3), "end": round(self.end, 3), "text": self.text,
             "score": round(self.score, 4)}
        if self.confidence is not None:
            d["confidence"] = round(self.confidence, 3)
        return d


@dataclass
class VideoCaptions:
    path: Path
    info: VideoInfo | None
    segments: list[CaptionedSegment]
    model: str
    shots: list[Segment] = field(default_factory=list)  # before merging, for inspection
    warnings: list[str] = field(default_factory=list)  # what could not be decoded and was skipped

    def to_dict(self) -> dict:
        return {"input": str(self.path), "segments": [s.to_dict() for s in self.segments], "model": self.model,
                "warnings": list(self.warnings)}


def merge_repeats(segments: list[CaptionedSegment]) -> list[CaptionedSegment]:
    """Join neighbours whose captions say the same thing, so no sentence shows twice in a row."""
    out: list[CaptionedSegment] = []
    for s in segments:
        if out and _same(out[-1].text, s.text):
            prev = out[-1]
            out[-1] = CaptionedSegment(prev.start, s.end, prev.text, max(prev.score, s.score),
                                       _max(prev.confidence, s.confidence))
        else:
            out.append(CaptionedSegment(s.start, s.end, s.text, s.score, s.confidence))
    return out


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _same(a: str, b: str) -> bool:
    strip = lambda t: "".join(ch for ch in t if ch.isalnum())  # noqa: E731 - spacing/punctuation aside
    return strip(a) == strip(b)


Progress = Callable[[str, float, float | None], None]


class Captioner:
    def __init__(self, loaded: modelfile.Loaded, *, beam: int | None = None, keyframes: int = 4,
                 encoder_backend: str = "auto", threads: int | None = None, decode_threads: int = 0):
        self.loaded = loaded
        self.model = loaded.model.eval()
        self.vocab = loaded.vocab
        self.name = loaded.name
        decoding = loaded.meta.get("decoding", {})
        self.beam = beam or int(decoding.get("beam", 3))
        self.length_penalty = float(decoding.get("length_penalty", 0.7))
        self.keyframes = keyframes
        self.confidence = confidence.Calibration.for_model(loaded)
        self.threads = threads or os.cpu_count() or 1
        self.decode_threads = decode_threads  # 0: FFmpeg decides (best for one process alone)
        torch.set_num_threads(self.threads)
        self._encoder_backend = encoder_backend
        self._encoder: Encoder | None = None
        korean.kiwi()  # load the analyser now, once per process, not inside the first caption
        load_detectors()  # the same for the shot detector's library

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, **kwargs) -> "Captioner":
        """Load a model folder (default: the model shipped in the package)."""
        return cls(modelfile.load(path), **kwargs)

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = Encoder(self._encoder_backend, threads=self.threads, name=self.model.config.encoder)
        return self._encoder

    # ------------------------------------------------------------------ images

    def caption_features(self, segments: list[np.ndarray]) -> list[tuple[Caption, float | None]]:
        """Captions with their calibrated confidence; unsure ones said in the general style."""
        return self.confidence.generate(self.model, self.vocab, segments, beam=self.beam,
                                        length_penalty=self.length_penalty)

    def caption_image(self, image: str | Path | Image.Image) -> CaptionedSegment:
        feats = self.encoder.encode(load_image(image)[None])
        cap, conf = self.caption_features([feats])[0]
        return CaptionedSegment(0.0, 0.0, cap.text, cap.score, conf)

    # ------------------------------------------------------------------ videos

    def caption_video(self, path: str | Path, spec: SegmentSpec | None = None, *,
                      progress: bool = False, on_stage: Progress | None = None) -> VideoCaptions:
        spec = spec or SegmentSpec()
        info = probe(path)
        detector = ShotDetector(spec, info.fps)
        small = detect_size(info.width, info.height)
        pool = KeyframePool()
        segments: list[Segment] = []
        cuts: list[float] = []
        closed = 0.0  # segments before this time are final and handed to the worker
        pending: list[np.ndarray] = []  # keyframes of closed segments, not yet handed over
        # encoding runs on a worker thread (ONNX Runtime releases the GIL), overlapping with
        # decoding; each job is one batch of finished segments
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kvcap-features")
        jobs: list[Future] = []

        def close_until(t: float, final: bool = False) -> None:
            nonlocal closed
            for s in segments_from_cuts(cuts, t, spec, final=final):
                if s.start < closed - 1e-6:
                    continue
                pending.append(pool.take(s.start, s.end, self.keyframes))
                segments.append(s)
                closed = s.end
            pool.drop_before(closed)
            if pending and (final or sum(len(p) for p in pending) >= self.encoder.batch_size):
                jobs.append(worker.submit(self._encode_keyframes, list(pending)))
                pending.clear()

        try:
            end = 0.0
            total = info.duration or None
            with progress_bar(f"디코딩·장면 분할 {info.path.name}", total=total, enabled=progress, counts=False) as advance:
                for f in frames(info, threads=self.decode_threads):
                    if detector.needs_frames:
                        cuts.extend(detector.push(f.time, f.bgr(*small)))
                    if pool.wants(f.time):
                        pool.add(f)
                    frame_end = f.time + 1.0 / info.fps
                    advance(frame_end - end)
                    end = frame_end
                    if on_stage:
                        on_stage("decode", end, total)
                    if end - closed > 2 * spec.max_segment or (cuts and cuts[-1] > closed + 1e-6):
                        close_until(end)
                cuts.extend(detector.finish())
                close_until(end, final=True)
            info.duration = end  # what decoded, not what the header claimed
            if on_stage:
                on_stage("shots", len(segments), len(segments))

            feats = [f for job in jobs for f in job.result()]
        finally:
            worker.shutdown(wait=True, cancel_futures=True)
        groups = group_windows(segments, feats)
        caps: list[tuple[Caption, float | None]] = []
        with progress_bar("자막 생성 (captions)", total=len(groups), enabled=progress) as advance:
            for s in range(0, len(groups), 32):
                chunk = groups[s : s + 32]
                caps += self.caption_features([group_frames([feats[i] for i in g]) for g in chunk])
                advance(len(chunk))
                if on_stage:
                    on_stage("captions", len(caps), len(groups))
        raw = [CaptionedSegment(segments[i].start, segments[i].end, c.text, c.score, conf)
               for g, (c, conf) in zip(groups, caps) for i in g]
        return VideoCaptions(Path(path), info, merge_repeats(raw), self.name, segments, info.warnings)

    def _encode_keyframes(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        feats = self.encoder.encode(np.concatenate(batch))
        per_segment, at = [], 0
        for frames_ in batch:
            per_segment.append(feats[at : at + len(frames_)])
            at += len(frames_)
        return per_segment


__all__ = ["Captioner", "CaptionedSegment", "VideoCaptions", "merge_repeats"]
