"""Bad input, bad options and interruptions never give a wrong result, a hang or a lost file:
damaged videos, numeric options, crashes inside one input, signals, broken model folders."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import stream_seconds
from kvcap.cli import app
from kvcap.errors import KvcapError


def kvcap(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvcap", *map(str, args)], capture_output=True, text=True,
                          timeout=600, **kw)


def _zeroed(videos: Path, out: Path) -> Path:
    data = bytearray((videos / "cockatoo.mp4").read_bytes())
    data[len(data) // 3 : len(data) // 2] = bytes(len(data) // 2 - len(data) // 3)
    out.write_bytes(bytes(data))
    return out


# ----------------------------------------------------------------------------- damaged video

def test_damaged_video_is_captioned_past_the_damage_and_reported(videos, tmp_path):
    bad = _zeroed(videos, tmp_path / "zeroed.mp4")
    out = tmp_path / "out"
    r = kvcap("caption", bad, videos / "carphone_tiny.mp4", "--out", out, "--format", "json,mp4", "--quiet")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [f"kvcap: {bad}: damaged at 4.5–7.0 s, captioned the rest"]
    doc = json.loads((out / "zeroed.json").read_text(encoding="utf-8"))
    assert doc["warnings"] == ["damaged at 4.5–7.0 s, captioned the rest"]
    assert doc["segments"][-1]["end"] == pytest.approx(14.0, abs=0.06)  # not 3.35 s
    lengths = stream_seconds(out / "zeroed.captioned.mp4")
    assert lengths["video"] == pytest.approx(14.0, abs=0.06)
    original = stream_seconds(videos / "cockatoo.mp4")  # its audio ends 0.1 s before its video
    assert lengths["audio"] == pytest.approx(min(original["audio"], lengths["video"]), abs=0.05)
    assert json.loads((out / "carphone_tiny.json").read_text(encoding="utf-8"))["warnings"] == []


def test_audio_that_did_not_decode_becomes_silence_and_keeps_sync(tmp_path):
    """Re-encoded audio (PCM cannot go into MP4 as it is) with 2 s missing in the middle:
    the captioned MP4's audio is as long as the video, not 2 s short and early."""
    from kvcap.render import render_mp4
    from kvcap.video import frames, probe

    path = tmp_path / "gap.mkv"
    rate = 16000
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=10)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        aus = out.add_stream("pcm_s16le", rate=rate)
        for i in range(60):
            img = np.full((48, 64, 3), i * 4, np.uint8)
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        for k in [*range(0, 20), *range(40, 60)]:  # tenths of a second: 0-2 s and 4-6 s
            frame = av.AudioFrame.from_ndarray(np.full((1, rate // 10), 3000, np.int16), format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, k * rate // 10, Fraction(1, rate)
            for p in aus.encode(frame):
                out.mux(p)
        for p in aus.encode():
            out.mux(p)
    info = probe(path)
    list(frames(info))
    target = render_mp4(info, [], tmp_path / "gap.captioned.mp4")
    lengths = stream_seconds(target)
    assert lengths["video"] == pytest.approx(6.0, abs=0.1)
    assert lengths["audio"] == pytest.approx(6.0, abs=0.1)
    with av.open(str(target)) as c:  # and the gap is silent, the sound after it is where it was
        pcm = np.concatenate([f.to_ndarray().mean(axis=0) for f in c.decode(audio=0)])
        sr = c.streams.audio[0].sample_rate
    assert np.abs(pcm[int(2.5 * sr) : int(3.5 * sr)]).max() < 0.01
    assert np.abs(pcm[int(4.5 * sr) : int(5.5 * sr)]).mean() > 0.05


# ----------------------------------------------------------------------------- options

@pytest.mark.parametrize("args, message", [
    (["caption", "x.mp4", "--segments", "fixed:abc"], "fixed:N"),
    (["caption", "x.mp4", "--max-segment", "nan"], "--max-segment"),
    (["caption", "x.mp4", "--beam", "-2"], "--beam"),
    (["caption", "x.mp4", "--beam", "5000"], "--beam 5000: it must be 50 or less"),
    (["describe", "x.mp4", "--rate", "10"], "--rate"),
    (["describe", "x.mp4", "--rate", "1000"], "--rate 1000: it must be 400 or less"),
    (["batch", "x.mp4", "--out", "{tmp}/b", "--workers", "0"], "--workers"),
    (["batch", "x.mp4", "--out", "{tmp}/b", "--segments", "fixed:-1"], "fixed:N"),
    (["batch", "x.mp4", "--out", "{tmp}/b", "--max-segment", "0"], "--max-segment"),
    (["serve", "--data", "{tmp}/w", "--queue", "0"], "--queue"),
    (["serve", "--data", "{tmp}/w", "--keep", "-1"], "--keep"),
    (["serve", "--data", "{tmp}/w", "--max-upload", "nan"], "--max-upload"),
    (["serve", "--data", "{tmp}/w", "--port", "70000"], "--port"),
    (["serve", "--data", "{tmp}/w", "--max-segment", "0"], "--max-segment"),
    (["train", "x.json", "--epochs", "0"], "--epochs"),
    (["train", "x.json", "--batch-size", "0"], "--batch-size"),
    (["train", "x.json", "--lr", "0"], "--lr"),
    (["train", "x.json", "--val-fraction", "0.7"], "--val-fraction"),
    (["train", "x.json", "--styles", "many"], "--styles"),
    (["evaluate", "x.json", "--beam", "0"], "--beam"),
    (["search", "고양이", "--limit", "0"], "--limit"),
    (["watch", "x.mp4", "--out", "{tmp}/w", "--max-segment", "0"], "--max-segment"),
    (["watch", "x.mp4", "--out", "{tmp}/w", "--timeout", "0"], "--timeout"),
    (["watch", "x.mp4", "--out", "{tmp}/w", "--webhook", "ftp://x"], "--webhook"),
    (["watch", "x.mp4", "--out", "{tmp}/w", "--alert", "있다"], "--alert 있다: no content word"),
])
def test_every_numeric_option_is_checked_before_work(tmp_path, args, message):
    r = CliRunner().invoke(app, [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists() and not (tmp_path / "w").exists()  # nothing was started


# ----------------------------------------------------------------------------- one input's failure

def one_pixel_video(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        s = out.add_stream("ffv1", rate=10)
        s.width, s.height, s.pix_fmt = 1, 1, "yuv444p"
        for i in range(30):
            frame = av.VideoFrame.from_ndarray(np.full((1, 1, 3), i * 8, np.uint8), format="rgb24")
            for p in s.encode(frame.reformat(format="yuv444p")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def test_tiny_video_a_folder_in_the_way_and_stale_parts(videos, tmp_path):
    """One run: a 1x1 video is captioned (rendered at 2x2), an input whose output path is a
    folder fails alone before any work, the last input is still captioned, and a partial
    file left by a killed run is removed (but not one of a live process)."""
    out = tmp_path / "out"
    (out / "street_bikes.srt").mkdir(parents=True)
    dead = out / ".old.captioned.mp4.part999999999.mp4"  # no such process
    live = out / f".other.srt.part{os.getpid()}.srt"  # this test's own: alive
    dead.write_bytes(b"x" * 100)
    live.write_bytes(b"x")
    tiny = one_pixel_video(tmp_path / "one_pixel.mkv")
    r = kvcap("caption", tiny, videos / "street_bikes.mp4", videos / "carphone_tiny.mp4", "--out", out,
              "--format", "srt,mp4", "--quiet")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"kvcap: {out / 'street_bikes.srt'}: a folder is where this output goes"]
    with av.open(str(out / "one_pixel.captioned.mp4")) as c:
        v = c.streams.video[0]
        assert (v.codec_context.width, v.codec_context.height) == (2, 2) and v.frames == 30
    assert (out / "carphone_tiny.srt").stat().st_size > 0 and (out / "carphone_tiny.captioned.mp4").exists()
    assert not (out / "street_bikes.captioned.mp4").exists()  # refused before any work
    assert not dead.exists() and live.exists()


def test_a_crash_inside_one_input_is_one_line_and_a_log(videos, tmp_path, monkeypatch):
    """A full disk on the first input, a bug on the second: one line each (the bug's with
    where its traceback went), the third input is captioned, exit 2."""
    import kvcap.outputs
    import kvcap.render

    real = kvcap.outputs.write_text
    calls = {"n": 0}

    def write_text(target, text, force):
        calls["n"] += 1
        if target.stem == "street_bikes":
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        return real(target, text, force)

    def render_mp4(info, segments, target, **kw):
        if info.path.name == "carphone_tiny.mp4":
            raise IndexError("list index out of range")
        return target.write_bytes(b"mp4") and target

    monkeypatch.setattr(kvcap.outputs, "write_text", write_text)
    monkeypatch.setattr(kvcap.render, "render_mp4", render_mp4)
    monkeypatch.setenv("KVCAP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["caption", str(videos / "street_bikes.mp4"), str(videos / "carphone_tiny.mp4"),
                                 str(videos / "desk_window_short.mp4"), "--out", str(out), "--format", "srt,mp4",
                                 "--quiet"])
    assert r.exit_code == 2
    problems = [line for line in r.output.splitlines() if line.startswith("kvcap: ")]
    assert problems[0] == f"kvcap: {videos / 'street_bikes.mp4'}: {out / 'street_bikes.srt'}: No space left on device"
    assert problems[1].startswith(f"kvcap: {videos / 'carphone_tiny.mp4'}: internal error (IndexError: list index")
    log = Path(problems[1].rsplit("the full report is in ", 1)[1])
    assert log.parent == tmp_path / "cache" / "logs" and "Traceback" in log.read_text()
    assert len(problems) == 2 and "Traceback" not in r.output
    assert (out / "desk_window_short.srt").exists() and (out / "desk_window_short.captioned.mp4").exists()


def test_existing_output_is_refused_before_the_video_is_captioned(videos, tmp_path, monkeypatch):
    import kvcap.captioner

    def never(*a, **kw):
        raise AssertionError("captioned although its output exists")

    monkeypatch.setattr(kvcap.captioner.Captioner, "caption_video", never)
    out = tmp_path / "out"
    out.mkdir()
    (out / "street_bikes.vtt").write_text("mine", encoding="utf-8")
    r = CliRunner().invoke(app, ["caption", str(videos / "street_bikes.mp4"), "--out", str(out), "--quiet"])
    assert r.exit_code == 2
    assert r.output.strip() == f"kvcap: {out / 'street_bikes.vtt'}: output exists (use --force to overwrite)"
    assert (out / "street_bikes.vtt").read_text(encoding="utf-8") == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["street_bikes.vtt"]


# ----------------------------------------------------------------------------- signals

@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_while_rendering_leaves_no_partial_file(videos, tmp_path, sig, code):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "kvcap", "caption", str(videos / "office_people_entering.mp4"),
                             "--out", str(out), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list(out.glob(".*.part*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None and list(out.glob(".*.part*")), "never saw the render start"
    time.sleep(0.5)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert stderr.strip().splitlines()[-1].startswith("kvcap: interrupted")
    assert "Traceback" not in stderr
    assert not list(out.glob(".*")), list(out.iterdir())  # no hidden partial file
    assert sorted(p.name for p in out.iterdir()) == [
        "office_people_entering.json", "office_people_entering.srt", "office_people_entering.vtt"]


# ----------------------------------------------------------------------------- model folders

def _broken_model(tmp_path: Path, change) -> Path:
    from kvcap import modelfile

    folder = tmp_path / "model"
    shutil.copytree(modelfile.default_dir(), folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    (folder / "config.json").write_text(json.dumps(change(config)), encoding="utf-8")
    return folder


@pytest.mark.parametrize("change, message", [
    (lambda c: "hello", "not a kvcap model config"),
    (lambda c: {**c, "model": "attend"}, "must be an object"),
    (lambda c: {**c, "model": {**c["model"], "arch": "gpt-9"}}, "unknown architecture 'gpt-9'"),
    (lambda c: {**c, "model": {**c["model"], "hidden_dim": "512"}}, "hidden_dim must be int"),
    (lambda c: {**c, "model": {**c["model"], "dropout": "high"}}, "dropout must be float"),
    (lambda c: {**c, "model": {**c["model"], "hidden_dim": 10 ** 7}}, "hidden_dim 10000000 is out of range"),
    (lambda c: {**c, "model": {**c["model"], "encoder": "resnet-50"}}, "encoder 'resnet-50' is not one of"),
    (lambda c: {**c, "model": {**c["model"], "hidden_dim": 1024}}, "weights do not match the config"),
    (lambda c: {**c, "decoding": {"beam": "five"}}, "decoding.beam"),
    (lambda c: {**c, "decoding": {"beam": 5, "length_penalty": None}}, "length_penalty"),
    (lambda c: {**c, "name": ["x"]}, "name must be a string"),
])
def test_a_model_folder_with_wrong_content_is_refused_in_one_line(tmp_path, change, message):
    from kvcap import modelfile

    folder = _broken_model(tmp_path, change)
    t0 = time.perf_counter()
    with pytest.raises(KvcapError) as err:
        modelfile.load(folder)
    assert message in str(err.value) and "damaged model folder" in str(err.value) and "\n" not in str(err.value)
    assert time.perf_counter() - t0 < 2.0  # refused from the config and the weights' header alone


def test_a_broken_model_folder_through_the_cli(tmp_path, videos):
    folder = _broken_model(tmp_path, lambda c: {**c, "model": {**c["model"], "hidden_dim": 10 ** 7}})
    r = kvcap("caption", videos / "carphone_tiny.mp4", "--model", folder, "--out", tmp_path / "o", "--quiet")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"kvcap: {folder}: damaged model folder (config hidden_dim 10000000 is out of range)"


def test_ci_fails_when_the_shared_data_is_missing(tmp_path):
    """In CI (CI=true) a missing ../shared fails the suite instead of skipping most of it."""
    here = Path(__file__).parent
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(here / "test_video.py"),
            "-k", "real_video"]
    env = {**os.environ, "KVCAP_SHARED": str(tmp_path / "absent")}
    env.pop("CI", None)
    skipped = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout  # on a laptop: skipped, saying why
    failed = subprocess.run(args, capture_output=True, text=True, env={**env, "CI": "true"}, timeout=300)
    assert failed.returncode != 0 and "CI must have ../shared" in failed.stdout
