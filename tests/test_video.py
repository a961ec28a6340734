"""Stage 1 (decode) and bad input at the decoding boundary."""
from __future__ import annotations

import av
import numpy as np
import pytest

from conftest import make_audio_only
from kvcap.errors import KvcapError
from kvcap.video import MAX_PIXELS, frames, probe


def test_probe_and_decode_real_video(videos):
    info = probe(videos / "multishot_4cuts.mp4")
    assert (info.width, info.height) == (640, 360)
    assert info.fps == pytest.approx(25.0)
    assert info.has_audio
    decoded = list(frames(info))
    assert len(decoded) == 500
    times = [f.time for f in decoded]
    assert times == sorted(times) and times[-1] == pytest.approx(19.96, abs=0.05)
    # frames are converted only at the size asked for
    assert decoded[0].rgb(224, 224).shape == (224, 224, 3)


def test_header_that_lies_about_frame_count(videos):
    info = probe(videos / "plaza_crowd_broken_count.avi")
    assert sum(1 for _ in frames(info)) == 341  # the header claims 682


def test_gif_decodes(videos):
    info = probe(videos / "classroom.gif")
    assert sum(1 for _ in frames(info)) > 10


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("maker, message", [
    (lambda d: d / "missing.mp4", "no such file"),
    (lambda d: _write(d / "empty.mp4", b""), "empty file"),
    (lambda d: _write(d / "notes.mp4", "이건 동영상이 아니다\n".encode() * 50), "not a video"),
    (lambda d: make_audio_only(d / "tone.m4a"), "audio-only"),
    (lambda d: d, "folder"),
])
def test_bad_inputs_raise_one_clear_error(tmp_path, maker, message):
    path = maker(tmp_path)
    with pytest.raises(KvcapError) as err:
        info = probe(path)
        list(frames(info))
    assert message in str(err.value)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_truncated_video_keeps_its_start_or_fails_cleanly(tmp_path, videos):
    data = (videos / "street_bikes.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])
    try:
        n = sum(1 for _ in frames(probe(cut)))
    except KvcapError as exc:  # moov atom at the end: nothing to decode, said in one line
        assert "\n" not in str(exc)
    else:
        assert 0 < n < 250


def test_corrupt_middle_still_decodes(tmp_path, videos):
    data = bytearray((videos / "multishot_4cuts.mp4").read_bytes())
    rng = np.random.default_rng(0)
    mid = len(data) // 2
    data[mid : mid + 20000] = rng.integers(0, 256, 20000, dtype=np.uint8).tobytes()
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(bytes(data))
    assert sum(1 for _ in frames(probe(bad))) > 100


def test_zero_frame_video(tmp_path):
    path = tmp_path / "noframes.mkv"
    with av.open(str(path), "w") as out:  # a header with a video track, and no frame
        s = out.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        out.start_encoding()
    with pytest.raises(KvcapError, match="zero-length"):
        list(frames(probe(path)))


def test_huge_frame_size_is_refused(tmp_path):
    path = tmp_path / "huge.mkv"
    w, h = 8704, 4352  # just over 8K: refused before any frame is converted
    assert w * h > MAX_PIXELS
    with av.open(str(path), "w") as out:
        s = out.add_stream("ffv1", rate=1)
        s.width, s.height, s.pix_fmt = w, h, "gray"
        for p in s.encode(av.VideoFrame.from_ndarray(np.zeros((h, w), np.uint8), format="gray")):
            out.mux(p)
        for p in s.encode():
            out.mux(p)
    with pytest.raises(KvcapError, match="beyond the limit"):
        probe(path)


def test_synthetic_video_has_audio(synthetic_video):
    info = probe(synthetic_video)
    assert info.has_audio and info.duration == pytest.approx(9.0, abs=0.2)
