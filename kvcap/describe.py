"""Audio description (화면해설): the captions spoken in Korean, timed into the quiet
stretches of the soundtrack, mixed over the original sound on a second audio track.

The flow is the rest of kvcap's in small: captions → speech (espeak-ng's Korean voice,
offline) → placement (where the original audio has room) → a narration track (the
original ducked under the speech) → outputs: a `kind="descriptions"` WebVTT, the narration
alone as WAV, and an MP4 with the original video and audio streams copied as they are and
the described mix as a second audio track titled "화면해설" (language `kor`).
"""
from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import av
import numpy as np

from .errors import KvcapError
from .outputs import atomic_path, timestamp, write_text

VOICE = "ko"  # espeak-ng's Korean voice (GPL-3.0, Debian package espeak-ng)
RATE = 170  # words per minute: espeak-ng's default pace for Korean is hurried at 175+
MAX_SPEEDUP = 1.35  # faster than this is hard to follow; longer descriptions move instead
DUCK = 0.25  # the original sound under the narration: -12 dB
DUCK_LOUD = 0.125  # -18 dB where the narration had to go over sound (no quiet stretch fitted)
RAMP = 0.15  # seconds over which the ducking fades in and out
QUIET_DB = -35.0  # 50 ms frames of the original below this (dBFS) are room for speech
GAP = 0.25  # seconds kept between one description and the next
COPY_VIDEO = {"h264", "hevc", "mpeg4", "av1", "vp9"}  # video MP4 carries as it is


# ----------------------------------------------------------------------------- speech

@dataclass
class Speech:
    samples: np.ndarray  # float32 mono
    rate: int  # samples per second

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate


# counters that take native Korean numbers: "2명" is read 두 명, not 이 명
NATIVE_COUNTERS = ("명", "마리", "개", "대", "잔", "권", "살", "사람", "채", "그루", "송이", "척")
NATIVE = {1: "한", 2: "두", 3: "세", 4: "네", 5: "다섯", 6: "여섯", 7: "일곱", 8: "여덟", 9: "아홉"}
NATIVE_TENS = {1: "열", 2: "스물", 3: "서른", 4: "마흔", 5: "쉰", 6: "예순", 7: "일흔", 8: "여든", 9: "아흔"}
_COUNTED = re.compile(r"(?<!\d)(\d{1,2})\s*(" + "|".join(NATIVE_COUNTERS) + ")(?!월)")  # 3개월: 삼 개월


def speakable(text: str) -> str:
    """The sentence as it should be heard: digits before native counters as native numbers
    (espeak-ng reads every digit the Sino-Korean way: 이, 삼)."""
    def native(m: re.Match) -> str:
        n = int(m[1])
        if not 0 < n < 100:
            return m[0]
        tens, ones = divmod(n, 10)
        word = NATIVE_TENS.get(tens, "") + (NATIVE[ones] if ones else "")
        if tens == 2 and not ones:
            word = "스무"  # 스무 명
        return f"{word} {m[2]}"
    return _COUNTED.sub(native, text)


def speak(text: str, voice: str = VOICE, wpm: int = RATE) -> Speech:
    """One sentence read by espeak-ng (no network, no model download)."""
    text = speakable(text)
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise KvcapError("espeak-ng is not installed (sh scripts/install-espeak.sh, or apt-get install espeak-ng)")
    run = subprocess.run([exe, "-v", voice, "-s", str(int(wpm)), "--stdout", text], capture_output=True, timeout=60)
    if run.returncode != 0 or not run.stdout:
        raise KvcapError(f"espeak-ng could not speak with voice {voice!r} ({run.stderr.decode(errors='replace').strip()})")
    with wave.open(io.BytesIO(run.stdout)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
        return Speech(_trim(pcm.astype(np.float32) / 32768.0), w.getframerate())


def _trim(x: np.ndarray, floor: float = 1e-3) -> np.ndarray:
    """Without the silence espeak-ng puts before and after a sentence."""
    loud = np.flatnonzero(np.abs(x) > floor)
    return x[loud[0] : loud[-1] + 1] if len(loud) else x


def fitted_speech(text: str, room: float, voice: str = VOICE, wpm: int = RATE) -> Speech:
    """The sentence at the normal pace, or faster (within MAX_SPEEDUP) where `room` is short."""
    speech = speak(text, voice, wpm)
    if speech.seconds > room > 0:
        faster = min(MAX_SPEEDUP, speech.seconds / room)
        speech = speak(text, voice, round(wpm * faster))
    return speech


# ----------------------------------------------------------------------------- the original sound

@dataclass
class Soundtrack:
    samples: np.ndarray  # float32 (channels, n)
    rate: int
    layout: str

    @property
    def seconds(self) -> float:
        return self.samples.shape[1] / self.rate


def read_audio(path: Path, seconds: float) -> Soundtrack | None:
    """The first audio track decoded whole (float, its own rate and layout), or None."""
    with av.open(str(path), metadata_errors="ignore") as c:
        if not c.streams.audio:
            return None
        stream = c.streams.audio[0]
        rate = stream.codec_context.sample_rate or 48000
        layout = stream.codec_context.layout.name if stream.codec_context.layout else "stereo"
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        chunks = []
        for packet in c.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError:  # damaged: that bit is silent
                continue
            for frame in frames:
                chunks += [f.to_ndarray() for f in resampler.resample(frame)]
        chunks += [f.to_ndarray() for f in resampler.resample(None)]
    channels = len(av.AudioLayout(layout).channels)
    samples = np.concatenate(chunks, axis=1) if chunks else np.zeros((channels, 0), np.float32)
    return Soundtrack(_fit(samples, round(seconds * rate)), rate, layout)


def _fit(samples: np.ndarray, n: int) -> np.ndarray:
    """Exactly n samples: cut, or padded with silence."""
    if samples.shape[1] >= n:
        return samples[:, :n].astype(np.float32)
    return np.pad(samples, ((0, 0), (0, n - samples.shape[1]))).astype(np.float32)


def loudness(track: Soundtrack, hop: float = 0.05) -> np.ndarray:
    """dBFS of each `hop`-second frame (all channels together)."""
    step = max(1, round(track.rate * hop))
    n = track.samples.shape[1] // step
    frames = track.samples[:, : n * step].reshape(track.samples.shape[0], n, step)
    rms = np.sqrt((frames ** 2).mean(axis=(0, 2)) + 1e-12)
    return 20 * np.log10(rms)


# ----------------------------------------------------------------------------- placement

@dataclass
class Description:
    start: float  # where the narration starts
    end: float  # and ends
    text: str
    cue_start: float  # the caption entry it describes
    cue_end: float
    duck: float = DUCK  # the original's gain under it: lower where it is spoken over sound

    @property
    def moved(self) -> bool:
        return self.start < self.cue_start - 1e-6 or self.end > self.cue_end + 1e-6


def place(cues: Sequence, lengths: Sequence[float], quiet: np.ndarray, hop: float, end: float) -> list[Description]:
    """Where each description is spoken: the earliest start inside its caption's span where
    the original is quiet for the whole sentence, else the quietest such start; never over
    the previous description, never past the video's end."""
    out: list[Description] = []
    free = 0.0  # the previous description has ended (plus GAP) by then
    for cue, length in zip(cues, lengths):
        lo = max(cue.start, free)
        hi = max(lo, min(cue.end, end) - length)
        start = _quietest(lo, hi, length, quiet, hop)
        start = max(0.0, min(start, end - length))
        out.append(Description(start, start + length, cue.text, cue.start, cue.end, _duck(start, length, quiet, hop)))
        free = start + length + GAP
    return out


def _duck(start: float, length: float, quiet: np.ndarray, hop: float) -> float:
    """DUCK over quiet audio; harder where more than a tenth of the span is loud."""
    span = quiet[int(start / hop) : int(np.ceil((start + length) / hop))]
    return DUCK if not len(span) or (~span).mean() <= 0.1 else DUCK_LOUD


def _quietest(lo: float, hi: float, length: float, quiet: np.ndarray, hop: float) -> float:
    """The start in [lo, hi] (on the `hop` grid) whose span holds the fewest loud frames; the earliest of those."""
    if not len(quiet):
        return lo
    loud = np.concatenate([[0], np.cumsum(~quiet)])
    span = max(1, round(length / hop))
    best, best_loud = lo, None
    for k in range(int(np.ceil(lo / hop)), int(np.floor(hi / hop)) + 1):
        a, b = min(k, len(quiet)), min(k + span, len(quiet))
        n = loud[b] - loud[a]
        if best_loud is None or n < best_loud:
            best, best_loud = k * hop, n
            if n == 0:
                break
    return max(lo, best)


@dataclass
class Timeline:
    """Extended description (WCAG 1.2.7): the picture holds at `holds` (time, seconds) so
    that a long description is heard whole before the video goes on."""
    holds: list[tuple[float, float]]

    def shift(self, t: float) -> float:
        """Where original time `t` falls in the extended video (a hold at t comes before it)."""
        return t + sum(h for at, h in self.holds if at <= t + 1e-9)

    @property
    def added(self) -> float:
        return sum(h for _, h in self.holds)


def place_extended(cues: Sequence, lengths: Sequence[float], quiet: np.ndarray, hop: float,
                   end: float) -> tuple[list[Description], Timeline]:
    """Each description inside its caption's span, at its quietest start; where it does not
    end (plus GAP) before the span does, the picture holds at the span's end for the rest.
    Times returned are in the extended video."""
    placed, holds = [], []
    for cue, length in zip(cues, lengths):
        stop = min(cue.end, end)
        start = _quietest(cue.start, max(cue.start, stop - length), length, quiet, hop)
        over = start + length + GAP - stop
        if over > 1e-3:
            holds.append((stop, round(over, 3)))
        placed.append((cue, start, length))
    timeline = Timeline(holds)
    out = [Description(timeline.shift(s), timeline.shift(s) + n, c.text, timeline.shift(c.start),
                       timeline.shift(c.end), _duck(s, n, quiet, hop)) for c, s, n in placed]
    return out, timeline


def extend_audio(track: Soundtrack, timeline: Timeline) -> Soundtrack:
    """The original sound with silence where the picture holds."""
    parts, at = [], 0
    channels = track.samples.shape[0]
    for t, hold in sorted(timeline.holds):
        cut = min(track.samples.shape[1], round(t * track.rate))
        parts += [track.samples[:, at:cut], np.zeros((channels, round(hold * track.rate)), np.float32)]
        at = cut
    parts.append(track.samples[:, at:])
    return Soundtrack(np.concatenate(parts, axis=1), track.rate, track.layout)


# ----------------------------------------------------------------------------- mixing

def narration_track(descriptions: Sequence[Description], speeches: Sequence[Speech], rate: int,
                    seconds: float) -> np.ndarray:
    """The narration alone (mono, at `rate`), each sentence at its place."""
    out = np.zeros(round(seconds * rate), np.float32)
    for d, s in zip(descriptions, speeches):
        voice = _resample(s.samples, s.rate, rate)
        a = round(d.start * rate)
        voice = voice[: max(0, len(out) - a)]
        out[a : a + len(voice)] += voice * (0.9 / max(1e-6, np.abs(voice).max()))
    return out


def _resample(x: np.ndarray, rate: int, to: int) -> np.ndarray:
    if rate == to:
        return x
    frame = av.AudioFrame.from_ndarray(x[None, :].astype(np.float32), format="fltp", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=to)
    parts = [f.to_ndarray()[0] for f in resampler.resample(frame)] + [f.to_ndarray()[0] for f in resampler.resample(None)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def duck_gain(descriptions: Sequence[Description], rate: int, n: int) -> np.ndarray:
    """1 outside the descriptions, their `duck` under them, with short ramps so nothing clicks."""
    gain = np.ones(n, np.float32)
    ramp = max(1, round(RAMP * rate))
    for d in descriptions:
        a, b = round(d.start * rate), round(d.end * rate)
        gain[max(0, a) : min(n, b)] = d.duck
        for lo, hi, up in ((a - ramp, a, False), (b, b + ramp, True)):  # fade down before, up after
            idx = np.arange(max(0, lo), min(n, hi))
            if len(idx):
                t = (idx - lo) / ramp
                gain[idx] = np.minimum(gain[idx], d.duck + (1 - d.duck) * (t if up else 1 - t))
    return gain


def described_mix(original: Soundtrack, narration: np.ndarray, gain: np.ndarray) -> np.ndarray:
    mixed = original.samples * gain[None, :] + narration[None, :]
    return np.clip(mixed, -1.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------- outputs

def descriptions_vtt(descriptions: Sequence[Description]) -> str:
    """WebVTT cues for a `<track kind="descriptions">`: the caption's span, or the speech's where it moved."""
    import webvtt

    doc = webvtt.WebVTT()
    for d in descriptions:
        start, end = (d.start, d.end) if d.moved else (d.cue_start, d.cue_end)
        doc.captions.append(webvtt.Caption(timestamp(start), timestamp(end), d.text))
    return doc.content


def write_wav(target: Path, samples: np.ndarray, rate: int, force: bool) -> Path:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with atomic_path(target, force) as tmp, wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return target


def write_described_mp4(source: Path, mix: np.ndarray, rate: int, layout: str, target: Path, force: bool,
                        keep_audio: bool = True) -> Path:
    """`source`'s video (and audio, if any and `keep_audio`) copied packet for packet, plus
    the mix as an AAC track "화면해설" (kor). `source` must hold streams MP4 carries as they
    are. Without `keep_audio` the mix is the only sound: for browsers, which play only the
    first audio track of a file."""
    with av.open(str(source), metadata_errors="ignore") as src, atomic_path(target, force) as tmp, \
            av.open(str(tmp), "w", format="mp4") as out:
        kept = (*src.streams.video[:1], *(src.streams.audio[:1] if keep_audio else ()))
        copies = {s.index: out.add_stream_from_template(s) for s in kept}
        ad = _description_track(out, rate, layout)
        # interleaved by time, so a player streaming the file reads it in order
        pending = _encode_pcm(ad, mix, rate, layout)
        for packet in src.demux(*[s for s in src.streams if s.index in copies]):
            if packet.dts is None:
                continue
            at = float(packet.dts * packet.time_base)
            while pending and float(pending[0].dts * pending[0].time_base) <= at:
                out.mux(pending.pop(0))
            packet.stream = copies[packet.stream.index]
            out.mux(packet)
        for p in pending:
            out.mux(p)
    return target


def _description_track(out, rate: int, layout: str):
    """The AAC track players list as 화면해설 (Korean)."""
    stream = out.add_stream("aac", rate=rate, layout=layout)
    stream.metadata.update({"title": "화면해설", "handler_name": "화면해설", "language": "kor"})
    return stream


def _encode_pcm(stream, samples: np.ndarray, rate: int, layout: str, chunk: int = 1024) -> list:
    """The samples encoded with `stream`'s encoder: its packets, in order."""
    packets = []
    for a in range(0, samples.shape[1], chunk):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, a : a + chunk]), format="fltp",
                                           layout=layout)
        frame.sample_rate = rate
        frame.pts = a
        packets += stream.encode(frame)
    return packets + list(stream.encode())


def write_extended_mp4(info, timeline: Timeline, original: Soundtrack, mix: np.ndarray, target: Path,
                       force: bool) -> Path:
    """The video re-encoded with the picture held (the last frame before each hold repeated
    at the frame rate), the original sound with silence in the holds, and the described mix."""
    from fractions import Fraction

    from .video import frames

    rate = Fraction(info.fps).limit_denominator(1001) if info.fps > 0 else Fraction(25)
    width, height = max(2, info.width - info.width % 2), max(2, info.height - info.height % 2)
    holds = sorted(timeline.holds)
    with atomic_path(target, force) as tmp, av.open(str(tmp), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=rate, options={"crf": "20", "preset": "veryfast"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        tracks = []
        if info.has_audio:
            tracks.append((out.add_stream("aac", rate=original.rate, layout=original.layout), original.samples))
        ad = _description_track(out, original.rate, original.layout)
        tracks.append((ad, mix))
        n, last = 0, None
        for f in frames(info):
            while holds and f.time >= holds[0][0] - 1e-9 and last is not None:  # hold the picture here
                for _ in range(round(holds.pop(0)[1] * float(rate))):
                    n = _encode_frame(out, video, last, n)
            last = f.rgb(width, height) if (width, height) != (info.width, info.height) else f.rgb()[:height, :width]
            n = _encode_frame(out, video, last, n)
        for _, hold in holds:  # holds at the very end
            for _ in range(round(hold * float(rate))):
                n = _encode_frame(out, video, last, n)
        for p in video.encode():
            out.mux(p)
        for stream, samples in tracks:
            for p in _encode_pcm(stream, samples, original.rate, original.layout):
                out.mux(p)
    return target


def _encode_frame(out, stream, rgb: np.ndarray, n: int) -> int:
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    frame.pts = n
    frame.time_base = 1 / stream.codec_context.framerate
    for p in stream.encode(frame):
        out.mux(p)
    return n + 1


# ----------------------------------------------------------------------------- the whole job

OUTPUT_SUFFIXES = {"descriptions": ".descriptions.vtt", "narration": ".narration.wav", "described": ".described.mp4"}
EXTENDED_SUFFIXES = {"extended": ".extended.mp4", "extended_subtitles": ".extended.vtt",
                     "extended_descriptions": ".extended.descriptions.vtt"}


def output_paths(out_dir: Path, stem: str, extended: bool = False) -> dict[str, Path]:
    suffixes = {**OUTPUT_SUFFIXES, **(EXTENDED_SUFFIXES if extended else {})}
    return {k: out_dir / f"{stem}{suffix}" for k, suffix in suffixes.items()}


@dataclass
class Cue:
    start: float
    end: float
    text: str


def describe(info, segments: Sequence, out_dir: Path, stem: str, *, force: bool = False, voice: str = VOICE,
             wpm: int = RATE, player: Path | None = None, extended: bool = False) -> list[Description]:
    """Speak `segments` (start, end, text) over the video of `info` and write the three
    outputs; with `player`, also a copy whose only sound is the described mix (for a browser);
    with `extended`, also the video that holds its picture until each description ends."""
    from .render import COPY_AUDIO

    paths = output_paths(out_dir, stem, extended)
    if not force:
        for p in paths.values():
            if p.exists():
                raise KvcapError("output exists (use --force to overwrite)", p)
    seconds = max(info.duration, max((s.end for s in segments), default=0.0))
    cues = [Cue(s.start, min(s.end, seconds), s.text) for s in segments if s.text.strip()]
    speeches = [fitted_speech(c.text, c.end - c.start, voice, wpm) for c in cues]
    copyable = info.codec in COPY_VIDEO and (not info.has_audio or
                                             (info.audio_codec or "").removesuffix("float") in COPY_AUDIO)
    with _plain_copy(info, copyable, out_dir) as source:
        original = read_audio(source, seconds) or Soundtrack(np.zeros((2, round(seconds * 48000)), np.float32),
                                                             48000, "stereo")
        hop = 0.05
        quiet = loudness(original, hop) < QUIET_DB
        placed = place(cues, [s.seconds for s in speeches], quiet, hop, seconds)
        voice_only = narration_track(placed, speeches, original.rate, seconds)
        mix = described_mix(original, voice_only, duck_gain(placed, original.rate, original.samples.shape[1]))
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(paths["descriptions"], descriptions_vtt(placed), force)
        write_wav(paths["narration"], voice_only, original.rate, force)
        write_described_mp4(source, mix, original.rate, original.layout, paths["described"], force)
        if player is not None:
            write_described_mp4(source, mix, original.rate, original.layout, player, True, keep_audio=False)
    if extended:
        _describe_extended(info, cues, speeches, original, quiet, hop, seconds, paths, force)
    return placed


def _describe_extended(info, cues, speeches, original: Soundtrack, quiet, hop: float, seconds: float,
                       paths: dict[str, Path], force: bool) -> Timeline:
    placed, timeline = place_extended(cues, [s.seconds for s in speeches], quiet, hop, seconds)
    longer = extend_audio(original, timeline)
    n = longer.samples.shape[1]
    voice_only = _fit(narration_track(placed, speeches, longer.rate, n / longer.rate)[None, :], n)[0]
    mix = described_mix(longer, voice_only, duck_gain(placed, longer.rate, n))
    write_extended_mp4(info, timeline, longer, mix, paths["extended"], force)
    write_text(paths["extended_descriptions"], descriptions_vtt(placed), force)
    from .outputs import vtt_text

    shifted = [Cue(timeline.shift(c.start), timeline.shift(c.end), c.text) for c in cues]
    write_text(paths["extended_subtitles"], vtt_text(shifted), force)
    return timeline


@contextlib.contextmanager
def _plain_copy(info, copyable: bool, folder: Path) -> Iterator[Path]:
    """The input itself when MP4 can carry its streams as they are; otherwise a temporary
    H.264/AAC copy (made as the captioned MP4 is, without captions)."""
    if copyable:
        yield info.path
        return
    from .render import render_mp4

    folder.mkdir(parents=True, exist_ok=True)
    tmp = render_mp4(info, [], folder / f".{info.path.stem}.plain.mp4", force=True)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def load_captions(path: Path, video: Path | None = None) -> tuple[Path, list[Cue]]:
    """Captions a person may have corrected: a kvcap JSON (it names its video) or an SRT
    (the video beside it with the same name, or `video`)."""
    import json

    import srt

    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            doc = json.loads(text)
            cues = [Cue(float(s["start"]), float(s["end"]), str(s["text"])) for s in doc["segments"]]
            named = Path(doc["input"])
        else:
            cues = [Cue(s.start.total_seconds(), s.end.total_seconds(), s.content.replace("\n", " "))
                    for s in srt.parse(text)]
            named = None
    except (OSError, UnicodeDecodeError) as exc:
        raise KvcapError(f"cannot read captions ({exc})", path) from None
    except (ValueError, KeyError, TypeError, srt.SRTParseError) as exc:
        raise KvcapError(f"not kvcap JSON or SRT captions ({exc.__class__.__name__}: {exc})", path) from None
    if any(not c.end > c.start >= 0 for c in cues) or any(b.start < a.start for a, b in zip(cues, cues[1:])):
        raise KvcapError("caption times must be increasing, each entry ending after it starts", path)
    return _find_video(path, named, video), cues


def _find_video(captions: Path, named: Path | None, video: Path | None) -> Path:
    from .inputs import VIDEO_EXTS

    candidates = [video] if video else []
    if named is not None:
        candidates += [named, captions.parent / named.name]
    candidates += [captions.with_suffix(ext) for ext in sorted(VIDEO_EXTS)]
    for c in candidates:
        if c is not None and c.is_file():
            return c
    raise KvcapError("cannot find the video these captions belong to (give it with --video)", captions)
