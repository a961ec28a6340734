"""Audio description (화면해설): the descriptions track, the described MP4, where the speech
goes, and `kvcap describe` from a video, from corrected JSON and from SRT."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import webvtt

from conftest import need_command, stream_seconds
from kvcap.describe import Cue, describe, loudness, place, read_audio, speak, speakable
from kvcap.errors import KvcapError
from kvcap.video import frames, probe


@pytest.fixture(autouse=True)
def _espeak():
    need_command("espeak-ng")


def kvcap(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvcap", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def video_digest(path: Path) -> str:
    with av.open(str(path)) as c:
        return hashlib.sha1(b"".join(bytes(p) for p in c.demux(video=0) if p.size)).hexdigest()


def decoded(path: Path, index: int) -> tuple[np.ndarray, int]:
    """Audio track `index` decoded to mono float."""
    with av.open(str(path)) as c:
        stream = c.streams.audio[index]
        pcm = np.concatenate([f.to_ndarray().reshape(len(f.layout.channels), -1).mean(axis=0)
                              for f in c.decode(stream)])
        return pcm.astype(np.float32), stream.sample_rate


def secs(stamp: str) -> float:
    """A WebVTT time in seconds (webvtt-py's start_in_seconds drops the milliseconds)."""
    h, m, rest = stamp.split(":")
    return int(h) * 3600 + int(m) * 60 + float(rest)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt((x.astype(np.float64) ** 2).mean() + 1e-12))


def tone_then_silence(path: Path, tone: float = 3.0, total: float = 6.0) -> Path:
    """A grey video whose audio is a loud tone for `tone` seconds, then silence."""
    rate = 22050
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=10)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        aus = out.add_stream("aac", rate=rate)
        for i in range(int(total * 10)):
            for p in vs.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 128, np.uint8), format="rgb24")):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        t = np.arange(int(total * rate)) / rate
        samples = np.where(t < tone, 0.5 * np.sin(2 * np.pi * 440 * t), 0.0).astype(np.float32)
        for a in range(0, len(samples), 1024):
            frame = av.AudioFrame.from_ndarray(samples[None, a : a + 1024], format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, a, Fraction(1, rate)
            for p in aus.encode(frame):
                out.mux(p)
        for p in aus.encode():
            out.mux(p)
    return path


# ----------------------------------------------------------------------------- speech and placement

def test_korean_speech_is_real_and_counters_are_read_natively():
    speech = speak("두 남자가 길을 걷고 있다.")
    assert 1.0 < speech.seconds < 4.0 and rms(speech.samples) > 0.05
    assert speakable("고양이 3마리와 사람 2명") == "고양이 세 마리와 사람 두 명"
    assert speakable("21살 남자") == "스물한 살 남자" and speakable("3개월 된 아기") == "3개월 된 아기"
    longer = speak("두 남자가 길을 걷고 있다.", wpm=120)
    assert longer.seconds > speech.seconds * 1.2  # --rate reaches the voice


def test_description_goes_where_the_original_is_quiet(tmp_path):
    """Tone 0-3 s, silence 3-6 s: a description of 0-6 s starts after 3 s."""
    path = tone_then_silence(tmp_path / "tone.mp4")
    track = read_audio(path, 6.0)
    quiet = loudness(track) < -35.0
    (d,) = place([Cue(0.0, 6.0, "남자가 서 있다.")], [1.5], quiet, 0.05, 6.0)
    assert 3.0 <= d.start <= 3.3 and d.end <= 6.0 and d.duck == 0.25
    # with no room inside its span, it starts at once, and the original is ducked harder
    (d,) = place([Cue(0.0, 2.5, "남자가 서 있다.")], [1.5], quiet, 0.05, 6.0)
    assert d.start == 0.0 and d.duck == 0.125
    # and never over the description before it
    a, b = place([Cue(0.0, 1.0, "첫째."), Cue(1.0, 6.0, "둘째.")], [2.0, 1.0], np.ones(120, bool), 0.05, 6.0)
    assert b.start >= a.end + 0.2


# ----------------------------------------------------------------------------- the described video

@pytest.fixture(scope="module")
def described(videos, tmp_path_factory):
    """`kvcap describe` on a shared video with a sound track (a tone that changes at each cut)."""
    out = tmp_path_factory.mktemp("ad")
    r = kvcap("describe", videos / "multishot_4cuts.mp4", "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    return out, r


def test_descriptions_track_parses_in_order_inside_the_video(described):
    out, r = described
    cues = webvtt.read(str(out / "multishot_4cuts.descriptions.vtt")).captions
    assert len(cues) == len(r.stdout.strip().splitlines()) >= 1
    times = [(secs(c.start), secs(c.end)) for c in cues]
    assert times[0][0] == 0.0 and all(a < b for a, b in times) and times[-1][1] <= 20.0 + 1e-3
    assert all(b[0] >= a[1] for a, b in zip(times, times[1:]))  # no overlap
    assert all(c.text.endswith(".") for c in cues)


def test_described_mp4_copies_the_video_and_adds_a_korean_track(described, videos):
    out, _ = described
    mp4 = out / "multishot_4cuts.described.mp4"
    assert video_digest(mp4) == video_digest(videos / "multishot_4cuts.mp4")  # not re-encoded
    with av.open(str(mp4)) as c:
        audio = c.streams.audio
        assert len(audio) == 2 and audio[0].metadata.get("language") != "kor"
        assert audio[1].metadata.get("language") == "kor" and "화면해설" in audio[1].metadata.values()
    lengths = stream_seconds(mp4)
    assert lengths["video"] == pytest.approx(20.0, abs=0.04)
    with av.open(str(mp4)) as c:
        described_len = float(c.streams.audio[1].duration * c.streams.audio[1].time_base)
    assert described_len == pytest.approx(lengths["video"], abs=0.04 + 1024 / 44100)  # +- a frame (and an AAC frame)


def test_narration_is_heard_in_its_cues_and_the_original_elsewhere(described):
    out, _ = described
    mp4 = out / "multishot_4cuts.described.mp4"
    original, sr = decoded(mp4, 0)
    mix, sr2 = decoded(mp4, 1)
    assert sr == sr2
    n = min(len(original), len(mix))
    original, mix = original[:n], mix[:n]
    narration, nsr = read_wav(out / "multishot_4cuts.narration.wav")
    assert nsr == sr
    n = min(n, len(narration))
    original, mix = original[:n], mix[:n]
    spoken = np.abs(narration[:n]) > 1e-3
    # where the narration speaks, the described track is the voice over the ducked original
    spans = speech_spans(spoken, sr)
    assert spans
    for a, b in spans:
        seg = slice(int(a * sr), int(b * sr))
        assert rms(mix[seg] - 0.125 * original[seg]) > 2 * rms(0.125 * original[seg])  # the voice stands out
        # the tone never stops, so no quiet stretch fits: the original is ducked by 18 dB, not 12
        assert rms(mix[seg]) < rms(narration[seg]) + 0.2 * rms(original[seg])
    # and away from every description (0.3 s clear of it) it is the original sound
    clear = ~np.convolve(spoken, np.ones(int(0.3 * sr) * 2 + 1), "same").astype(bool)
    assert clear.sum() > sr * 5
    assert rms(mix[clear] - original[clear]) < 0.05 * rms(original[clear])


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    import wave

    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768, w.getframerate()


def speech_spans(spoken: np.ndarray, sr: int) -> list[tuple[float, float]]:
    """Stretches of the narration, gaps under 0.3 s (between words) bridged."""
    idx = np.flatnonzero(spoken)
    spans: list[list[float]] = []
    for i in idx[:: max(1, sr // 100)]:
        t = i / sr
        if spans and t - spans[-1][1] < 0.3:
            spans[-1][1] = t
        else:
            spans.append([t, t])
    return [(a, b) for a, b in spans if b - a > 0.3]


def test_a_video_without_sound_gets_a_described_track(videos, tmp_path):
    info = probe(videos / "carphone_tiny.mp4")  # no audio track
    assert not info.has_audio
    list(frames(info))
    placed = describe(info, [Cue(0.0, 4.0, "남자가 전화를 하고 있다.")], tmp_path, "carphone")
    assert placed[0].start == 0.0  # all quiet: at once
    assert video_digest(tmp_path / "carphone.described.mp4") == video_digest(videos / "carphone_tiny.mp4")
    with av.open(str(tmp_path / "carphone.described.mp4")) as c:
        assert len(c.streams.audio) == 1 and c.streams.audio[0].metadata.get("language") == "kor"
    mix, sr = decoded(tmp_path / "carphone.described.mp4", 0)
    assert rms(mix[: int(1.5 * sr)]) > 0.05 and rms(mix[int(3.0 * sr) :]) < 1e-3  # speech, then silence
    with pytest.raises(KvcapError, match="output exists"):  # kept unless --force
        describe(info, [Cue(0.0, 4.0, "다른 문장.")], tmp_path, "carphone")


# ----------------------------------------------------------------------------- the command

def test_describe_from_corrected_json_and_from_srt(videos, tmp_path):
    out = tmp_path / "out"
    doc = {"input": str(videos / "street_bikes.mp4"), "model": "person",
           "segments": [{"start": 0.0, "end": 5.0, "text": "자전거 두 대가 길가에 서 있다."},
                        {"start": 5.0, "end": 10.0, "text": "사람 3명이 길을 걷고 있다."}]}
    (tmp_path / "fixed.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    r = kvcap("describe", tmp_path / "fixed.json", "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    texts = [c.text for c in webvtt.read(str(out / "street_bikes.descriptions.vtt")).captions]
    assert texts == ["자전거 두 대가 길가에 서 있다.", "사람 3명이 길을 걷고 있다."]  # the person's words
    assert (out / "street_bikes.described.mp4").exists() and (out / "street_bikes.narration.wav").exists()

    (tmp_path / "clip.srt").write_text("1\n00:00:00,000 --> 00:00:03,000\n남자가 전화를 하고 있다.\n",
                                       encoding="utf-8")
    r = kvcap("describe", tmp_path / "clip.srt", "--video", videos / "carphone_tiny.mp4", "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert (out / "carphone_tiny.descriptions.vtt").exists()
    bad = kvcap("describe", tmp_path / "clip.srt", "--out", out, "--quiet")  # no video beside it
    assert bad.returncode == 2 and bad.stderr.strip() == (
        f"kvcap: {tmp_path / 'clip.srt'}: cannot find the video these captions belong to (give it with --video)")
    (tmp_path / "broken.json").write_text('{"segments": [{"start": 3, "end": 1, "text": "x"}], "input": "a"}')
    bad = kvcap("describe", tmp_path / "broken.json", "--video", videos / "carphone_tiny.mp4", "--out", out, "-q")
    assert bad.returncode == 2 and "caption times must be increasing" in bad.stderr


def test_caption_format_ad_writes_the_description_with_the_subtitles(videos, tmp_path):
    r = kvcap("caption", videos / "desk_window_short.mp4", "--format", "srt,ad", "--out", tmp_path, "--quiet")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "desk_window_short.described.mp4", "desk_window_short.descriptions.vtt", "desk_window_short.narration.wav",
        "desk_window_short.srt"]


def test_missing_voice_is_one_line(monkeypatch):
    import kvcap.describe

    monkeypatch.setattr(kvcap.describe.shutil, "which", lambda name: None)
    with pytest.raises(KvcapError, match="espeak-ng is not installed"):
        speak("남자가 서 있다.")


def test_extended_description_holds_the_picture_until_the_speech_ends(videos, tmp_path):
    """A long sentence for the first second: the picture holds at 1.0 s until it is spoken
    (WCAG 1.2.7); the video is longer by the hold, and later captions move by as much."""
    doc = {"input": str(videos / "street_bikes.mp4"), "segments": [
        {"start": 0.0, "end": 1.0, "text": "자전거를 탄 사람들이 넓은 길을 따라 천천히 지나가고 있다."},
        {"start": 1.0, "end": 6.0, "text": "길가에 자전거가 서 있다."},
        {"start": 6.0, "end": 10.0, "text": "사람들이 걷고 있다."}]}
    (tmp_path / "long.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "out"
    r = kvcap("describe", tmp_path / "long.json", "--out", out, "--extended", "--quiet")
    assert r.returncode == 0, r.stderr
    subs = webvtt.read(str(out / "street_bikes.extended.vtt")).captions
    hold = secs(subs[1].start) - 1.0  # the second caption starts when the hold ends
    assert 1.5 < hold < 4.0
    assert [round(secs(c.start) - hold, 2) for c in subs[1:]] == [1.0, 6.0]  # later ones move by the hold
    said = webvtt.read(str(out / "street_bikes.extended.descriptions.vtt")).captions
    assert [c.text for c in said] == [c.text for c in subs] and secs(said[1].start) >= secs(said[0].end)
    mp4 = out / "street_bikes.extended.mp4"
    lengths = stream_seconds(mp4)
    assert lengths["video"] == pytest.approx(10.0 + hold, abs=0.05)  # longer by the hold (± a frame)
    with av.open(str(mp4)) as c:
        pictures = [f.to_ndarray(format="gray").astype(int) for f in c.decode(video=0)]
        assert c.streams.audio[-1].metadata.get("language") == "kor"
    still = [np.abs(a - b).mean() for a, b in zip(pictures, pictures[1:])]
    held = still[26 : 25 + int(hold * 25) - 1]  # 25 fps: the frames of the hold
    assert max(held) < 0.05 and np.mean(still[:20]) > 0.5  # frozen there (but for coding noise), moving before
    assert np.mean(still[25 + int(hold * 25) + 2 : 25 + int(hold * 25) + 20]) > 0.5  # and moving after
