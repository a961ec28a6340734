"""Stage 1 (decode) and bad input at the decoding boundary."""
from __future__ import annotations

import av
import numpy as np
import pytest

from conftest import decodable_end, make_audio_only
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
    assert info.warnings == []  # an AVI's count is not trusted: this is not called truncated


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


def test_truncated_mp4_without_its_index_is_called_truncated(tmp_path, videos):
    data = (videos / "street_bikes.mp4").read_bytes()  # its index (moov) is written last
    cut = _write(tmp_path / "cut.mp4", data[: len(data) // 3])
    with pytest.raises(KvcapError) as err:
        probe(cut)
    assert err.value.kind == "truncated" and "truncated MP4" in str(err.value) and "\n" not in str(err.value)


def test_truncated_mp4_keeps_its_start_and_says_where_it_ends(tmp_path, videos):
    data = (videos / "office_people_entering.mp4").read_bytes()  # index first: the start decodes
    cut = _write(tmp_path / "cut.mp4", data[: int(len(data) * 0.3)])
    info = probe(cut)
    decoded = list(frames(info))
    n, end = decodable_end(cut)
    # all that decodes, of the 1394 frames its index lists (threaded decoding may drop the one
    # frame in flight when the cut-off packet fails)
    assert n - 1 <= len(decoded) <= n and 300 < n < 1394
    ends = decoded[-1].time + 1 / info.fps
    assert ends == pytest.approx(end, abs=0.11)
    assert info.warnings == [f"truncated: the video ends at {ends:.1f} s of 139.4 s, captioned up to there"]


def _damage(path, start: float, size: int, out, random: bool = True):
    data = bytearray(path.read_bytes())
    at = int(len(data) * start)
    noise = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes() if random else bytes(size)
    data[at : at + size] = noise
    return _write(out, bytes(data))


def test_corrupt_middle_skips_the_bad_packets(tmp_path, videos):
    bad = _damage(videos / "multishot_4cuts.mp4", 0.5, 20000, tmp_path / "corrupt.mp4")
    info = probe(bad)
    decoded = list(frames(info))
    n, end = decodable_end(bad)
    assert n - 1 <= len(decoded) <= n and n >= 490  # of 500: only the frames of the bad packets are lost
    assert decoded[-1].time == pytest.approx(19.96, abs=0.05)  # decoding went on to the end
    assert len(info.warnings) == 1 and info.warnings[0].startswith("damaged at 10.")


def test_zeroed_middle_is_skipped_and_reported(tmp_path, videos):
    data = (videos / "cockatoo.mp4").read_bytes()
    bad = _damage(videos / "cockatoo.mp4", 1 / 3, len(data) // 2 - len(data) // 3, tmp_path / "zeroed.mp4",
                  random=False)
    info = probe(bad)
    times = [f.time for f in frames(info)]
    assert times[-1] == pytest.approx(13.95, abs=0.05)  # not 3.35 s: the rest after the damage decodes
    assert info.warnings == ["damaged at 4.5–7.0 s, captioned the rest"]
    assert not any(4.6 < t < 6.9 for t in times)


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
