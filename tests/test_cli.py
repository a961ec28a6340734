"""End to end: `kvcap caption` as a user runs it (stages 6 and 7, bad input, the API)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import srt
import webvtt
from PIL import Image

from conftest import HELDOUT_IMAGES, decodable_end, make_audio_only, need, stream_seconds

HANGUL = re.compile(r"[가-힣]")
LINE = re.compile(r"^(\d\d:\d\d:\d\d\.\d\d\d) → (\d\d:\d\d:\d\d\.\d\d\d)  (.+)$")


def kvcap(*args, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvcap", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600, **kw)


@pytest.fixture(scope="module")
def multishot_run(videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    r = kvcap("caption", videos / "multishot_4cuts.mp4", "--out", out)
    return r, out


def test_main_job_prints_one_line_per_caption(multishot_run):
    r, _ = multishot_run
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert 1 <= len(lines) <= 4
    parsed = [LINE.match(l) for l in lines]
    assert all(parsed), lines
    assert parsed[0].group(1) == "00:00:00.000"
    assert parsed[-1].group(2).startswith(("00:00:19.9", "00:00:20.0"))
    texts = [p.group(3) for p in parsed]
    assert all(HANGUL.search(t) and t.endswith(".") for t in texts)
    assert all(a != b for a, b in zip(texts, texts[1:]))  # the same sentence never twice in a row
    assert "디코딩·장면 분할 multishot_4cuts.mp4" in r.stderr and "자막 생성" in r.stderr  # progress: stderr
    assert "디코딩" not in r.stdout


def test_subtitles_parse_with_standard_libraries(multishot_run):
    r, out = multishot_run
    subs = list(srt.parse((out / "multishot_4cuts.srt").read_text(encoding="utf-8")))
    vtt = webvtt.read(str(out / "multishot_4cuts.vtt"))
    assert len(subs) == len(vtt.captions) == len(r.stdout.strip().splitlines())
    starts = [s.start.total_seconds() for s in subs]
    assert starts[0] == 0.0
    assert all(round(t, 1) in (5.0, 10.0, 15.0) for t in starts[1:])  # entries begin at the cuts
    assert [c.text for c in vtt.captions] == [s.content for s in subs]
    data = json.loads((out / "multishot_4cuts.json").read_text(encoding="utf-8"))
    assert data["input"].endswith("multishot_4cuts.mp4") and data["model"]
    assert [s["text"] for s in data["segments"]] == [s.content for s in subs]
    assert all(0.0 < s["score"] <= 1.0 and s["end"] > s["start"] for s in data["segments"])
    assert all(0.0 <= s["confidence"] <= 1.0 for s in data["segments"])  # the shipped model is calibrated


def test_captioned_mp4_keeps_size_rate_length_and_audio(multishot_run, videos):
    _, out = multishot_run
    with av.open(str(out / "multishot_4cuts.captioned.mp4")) as c:
        v = c.streams.video[0]
        assert (v.codec_context.width, v.codec_context.height) == (640, 360)
        assert float(v.average_rate) == pytest.approx(25.0, abs=0.01)
        assert c.streams.audio, "audio track lost"
        frames = [f.to_ndarray(format="rgb24") for i, f in zip(range(60), c.decode(video=0))]
    lengths = stream_seconds(out / "multishot_4cuts.captioned.mp4")  # the video's own, not the container's
    assert lengths["video"] == pytest.approx(20.0, abs=0.05) and lengths["audio"] == pytest.approx(20.0, abs=0.05)
    assert decodable_end(out / "multishot_4cuts.captioned.mp4") == (500, pytest.approx(20.0, abs=0.05))
    with av.open(str(videos / "multishot_4cuts.mp4")) as c:
        orig = [f.to_ndarray(format="rgb24") for i, f in zip(range(60), c.decode(video=0))]
    diff = np.abs(frames[50].astype(int) - orig[50].astype(int)).mean(axis=(1, 2))
    assert diff[-80:].max() > 20  # captions are drawn at the bottom
    assert diff[:120].mean() < 6  # the picture above them is the original


def test_json_lines_and_format_selection(videos, tmp_path):
    r = kvcap("caption", videos / "street_bikes.mp4", videos / "carphone_tiny.mp4", "--json", "--format", "srt",
              "--out", tmp_path, "--quiet")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in r.stdout.strip().splitlines()]
    assert [Path(x["input"]).name for x in rows] == ["street_bikes.mp4", "carphone_tiny.mp4"]
    for x in rows:
        assert set(x) == {"input", "segments", "model", "warnings"} and x["warnings"] == []
        assert all(set(s) == {"start", "end", "text", "score", "confidence"} for s in x["segments"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["carphone_tiny.srt", "street_bikes.srt"]
    assert r.stderr == ""  # --quiet


def test_gif_output(videos, tmp_path):
    r = kvcap("caption", videos / "desk_window_short.mp4", "--format", "json", "--gif", "--out", tmp_path, "--quiet")
    assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / "desk_window_short.captioned.gif") as im:
        assert im.format == "GIF" and im.n_frames >= 8 and im.size[0] <= 480


def test_images_get_a_single_caption(tmp_path):
    src = sorted(need(HELDOUT_IMAGES).glob("*.jpg"))[:2]
    Image.open(src[1]).save(tmp_path / "photo.webp", lossless=True)
    Image.open(src[1]).save(tmp_path / "photo.png")
    r = kvcap("caption", src[0], tmp_path / "photo.webp", tmp_path / "photo.png", "--out", tmp_path / "o", "--quiet")
    assert r.returncode == 0, r.stderr
    body = [l for l in r.stdout.splitlines() if not l.startswith("==")]
    assert len(body) == 3 and all(HANGUL.search(l) and "→" not in l for l in body)
    assert body[1] == body[2]  # the same picture in two formats says the same
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == sorted([src[0].stem + ".json", "photo.png.json", "photo.webp.json"])


def test_bad_inputs_fail_one_line_each_and_the_rest_still_captioned(videos, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.mp4").write_bytes(b"")
    (bad / "notes.mp4").write_text("not a video")
    (bad / "half.mp4").write_bytes((videos / "cockatoo.mp4").read_bytes()[:40000])
    make_audio_only(bad / "tone.m4a")
    inputs = [bad / "missing.mp4", bad / "empty.mp4", bad / "notes.mp4", bad / "half.mp4", bad / "tone.m4a",
              videos / "carphone_tiny.mp4"]
    before = {p: p.read_bytes() for p in inputs if p.exists()}
    r = kvcap("caption", *inputs, "--out", tmp_path / "o", "--format", "srt", "--quiet")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 5
    for path, line in zip(inputs[:5], errors):
        assert line.startswith(f"kvcap: {path}: ")
    assert (tmp_path / "o" / "carphone_tiny.srt").exists()
    assert all(p.read_bytes() == data for p, data in before.items())  # inputs never modified


def test_existing_outputs_need_force(videos, tmp_path):
    (tmp_path / "carphone_tiny.srt").write_text("mine")
    r = kvcap("caption", videos / "carphone_tiny.mp4", "--out", tmp_path, "--format", "srt,json", "--quiet")
    assert r.returncode == 2 and "--force" in r.stderr
    assert (tmp_path / "carphone_tiny.srt").read_text() == "mine"
    assert not (tmp_path / "carphone_tiny.json").exists()  # nothing half-done either
    r = kvcap("caption", videos / "carphone_tiny.mp4", "--out", tmp_path, "--format", "srt,json", "--quiet", "--force")
    assert r.returncode == 0 and "mine" not in (tmp_path / "carphone_tiny.srt").read_text()


def test_unwritable_output_folder(videos, tmp_path):
    (tmp_path / "file").write_text("x")
    r = kvcap("caption", videos / "carphone_tiny.mp4", "--out", tmp_path / "file" / "sub", "--quiet")
    assert r.returncode == 2 and "output folder" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_missing_font_is_a_clear_error(videos, tmp_path):
    r = kvcap("caption", videos / "carphone_tiny.mp4", "--out", tmp_path, "--quiet", env={"KVCAP_FONT": "/no/font.ttf"})
    assert r.returncode == 2 and "font not found" in r.stderr and "Traceback" not in r.stderr


def test_ctrl_c_leaves_no_half_written_file(videos, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "kvcap", "caption", str(videos / "cockatoo.mp4"), "--out",
                             str(tmp_path), "--format", "srt,mp4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.endswith(".mp4") for p in tmp_path.iterdir()):
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["cockatoo.srt"], names  # the finished output stays, the unfinished one is gone


def test_every_shared_video_captions(captioner, videos):
    from kvcap.shots import SegmentSpec

    paths = sorted(p for p in videos.iterdir() if p.is_file() and p.suffix in (".mp4", ".avi", ".gif"))
    assert len(paths) >= 14
    for path in paths:
        result = captioner.caption_video(path, SegmentSpec())
        segs = result.segments
        assert segs, path
        frames, end = decodable_end(path)  # counted apart from kvcap
        assert segs[0].start == 0.0 and segs[-1].end == pytest.approx(end, abs=0.05), path
        assert result.warnings == [], path  # none of them is damaged
        assert all(HANGUL.search(s.text) for s in segs)
        assert all(a.text != b.text for a, b in zip(segs, segs[1:]))
        assert all(b.start == pytest.approx(a.end) for a, b in zip(segs, segs[1:]))


def test_heldout_clips_caption(captioner):
    clips = sorted(need(Path(str(HELDOUT_IMAGES).replace("data/heldout_images", "videos/heldout_clips"))).iterdir())
    picked = [next(p for p in clips if p.suffix == ext) for ext in (".avi", ".gif", ".mp4")]
    for path in picked:
        segs = captioner.caption_video(path).segments
        assert segs and all(HANGUL.search(s.text) for s in segs), path


def test_python_api(captioner, videos):
    from kvcap import Captioner

    assert isinstance(captioner, Captioner)
    result = captioner.caption_video(videos / "cockatoo.mp4")
    assert result.to_dict()["segments"][0]["start"] == 0.0
    image = Image.fromarray(np.full((300, 400, 3), 120, np.uint8))
    cap = captioner.caption_image(image)
    assert HANGUL.search(cap.text) and 0 < cap.score <= 1


@pytest.mark.parametrize("args, message", [
    (["--max-segment", "0"], "--max-segment"),
    (["--max-segment", "-3"], "--max-segment"),
    (["--min-shot", "-1"], "--min-shot"),
    (["--keyframes", "0"], "--keyframes"),
    (["--beam", "0"], "--beam"),
    (["--segments", "fixed:0"], "fixed:N"),
])
def test_bad_numeric_options_are_one_line_and_exit_2(synthetic_video, tmp_path, args, message):
    r = subprocess.run([sys.executable, "-m", "kvcap", "caption", str(synthetic_video), "--out", str(tmp_path / "o"),
                        "--quiet", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_an_unchanging_shot_reads_as_one_caption(captioner, videos):
    """campus_people_walking.mp4: 80 s of one fixed camera, cut into 8-second windows, says one thing."""
    from kvcap.shots import SegmentSpec

    result = captioner.caption_video(videos / "campus_people_walking.mp4", SegmentSpec(max_segment=8.0))
    assert len(result.shots) == 10  # ten windows ...
    assert len(result.segments) == 1  # ... one story
    assert result.segments[0].start == 0.0 and result.segments[0].end == pytest.approx(79.5, abs=0.2)


# ----------------------------------------------------------------------------- options that shape the work


def test_shot_detectors_and_segment_lengths(captioner, videos):
    from kvcap.shots import SegmentSpec

    multishot = videos / "multishot_4cuts.mp4"
    from scenedetect import AdaptiveDetector, HashDetector, detect

    # the same cuts as PySceneDetect's own API finds on full-size frames (both also cut at
    # 8.04 s inside the street shot, where the camera pans, and so lose the cut at 10 s)
    for method, detector in (("adaptive", AdaptiveDetector), ("hash", HashDetector)):
        shots = captioner.caption_video(multishot, SegmentSpec.parse(method)).shots
        reference = [round(a.seconds, 2) for a, _ in detect(str(multishot), detector(min_scene_len=50))]
        assert [round(s.start, 2) for s in shots] == reference, method
        assert {0, 5, 15} <= {round(s.start) for s in shots}
    merged = captioner.caption_video(multishot, SegmentSpec(min_shot=6.0)).shots  # 5-second shots are too short
    assert len(merged) < 4 and all(s.end - s.start >= 6.0 - 1e-6 for s in merged[:-1])
    windows = captioner.caption_video(videos / "street_bikes.mp4", SegmentSpec(max_segment=3.0)).shots
    assert len(windows) >= 4 and all(s.end - s.start <= 3.0 + 1e-6 for s in windows)


def test_beam_and_keyframes_reach_the_model(captioner, videos, monkeypatch):
    from kvcap import confidence
    from kvcap.captioner import Captioner

    seen: dict[str, list] = {"frames": [], "beam": []}
    encode, generate = Captioner._encode_keyframes, confidence.Calibration.generate

    def spy_encode(self, batch):
        seen["frames"] += [len(b) for b in batch]
        return encode(self, batch)

    def spy_generate(self, model, vocab, segments, **kw):
        seen["beam"].append(kw["beam"])
        return generate(self, model, vocab, segments, **kw)

    monkeypatch.setattr(Captioner, "_encode_keyframes", spy_encode)
    monkeypatch.setattr(confidence.Calibration, "generate", spy_generate)
    monkeypatch.setattr(Captioner, "from_pretrained", classmethod(lambda cls, path=None, **kw: Captioner(
        captioner.loaded, **kw)))
    from typer.testing import CliRunner

    from kvcap.cli import app

    r = CliRunner().invoke(app, ["caption", str(videos / "multishot_4cuts.mp4"), "--beam", "1", "--keyframes", "2",
                                 "--format", "srt", "--out", str(Path(os.environ["KVCAP_CACHE"]) / "o"), "--quiet",
                                 "--force"])
    assert r.exit_code == 0, r.output
    assert seen["frames"] == [2, 2, 2, 2] and set(seen["beam"]) == {1}
    greedy = Captioner(captioner.loaded, beam=1, keyframes=2).caption_video(videos / "multishot_4cuts.mp4")
    assert [s.text for s in greedy.segments] == [l.split("  ", 1)[1] for l in r.output.strip().splitlines()]


def test_folder_and_glob_inputs(captioner, videos, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from kvcap.captioner import Captioner
    from kvcap.cli import app

    monkeypatch.setattr(Captioner, "from_pretrained", classmethod(lambda cls, path=None, **kw: captioner))
    library = tmp_path / "library" / "deep"
    library.mkdir(parents=True)
    for name in ("carphone_tiny.mp4", "desk_window_short.mp4"):
        (library / name).symlink_to(videos / name)
    (library / "notes.txt").write_text("not media")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["caption", str(tmp_path / "library"), "--format", "srt", "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["carphone_tiny.srt", "desk_window_short.srt"]
    r = CliRunner().invoke(app, ["caption", str(library / "desk*.mp4"), "--format", "json", "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.glob("*.json")) == ["desk_window_short.json"]
    r = CliRunner().invoke(app, ["caption", str(library / "none*.mp4"), "--format", "json", "--out", str(out), "-q"])
    assert r.exit_code == 2 and "no such file" in r.output
