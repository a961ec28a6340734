"""Stages 2 (segment) and 3 (keyframes)."""
from __future__ import annotations

import pytest

from conftest import make_video
from kvcap.errors import KvcapError
from kvcap.frames import KeyframePool
from kvcap.shots import Segment, SegmentSpec, ShotDetector, detect_size, segments_from_cuts, windows
from kvcap.video import frames, probe


def detect(path, spec: SegmentSpec) -> tuple[list[float], float]:
    info = probe(path)
    det = ShotDetector(spec, info.fps)
    small = detect_size(info.width, info.height)
    cuts, end = [], 0.0
    for f in frames(info):
        cuts += det.push(f.time, f.bgr(*small))
        end = f.time + 1 / info.fps
    return cuts + det.finish(), end


def test_multishot_cuts_at_5_10_15_and_nowhere_else(videos):
    cuts, end = detect(videos / "multishot_4cuts.mp4", SegmentSpec())
    assert len(cuts) == 3
    for found, want in zip(sorted(cuts), (5.0, 10.0, 15.0)):
        assert found == pytest.approx(want, abs=0.2)
    segs = segments_from_cuts(cuts, end, SegmentSpec())
    assert [round(s.start) for s in segs] == [0, 5, 10, 15] and segs[-1].end == pytest.approx(20.0, abs=0.05)


def test_synthetic_scene_changes_are_found(synthetic_video):
    cuts, _ = detect(synthetic_video, SegmentSpec())
    assert [round(c) for c in cuts] == [3, 6]


def test_quick_cuts_merge_below_min_shot(videos):
    # street_bikes is itself edited: cuts 1.2 s to 2.4 s apart; with a 2 s minimum fewer survive
    few, _ = detect(videos / "street_bikes.mp4", SegmentSpec(min_shot=2.0))
    many, _ = detect(videos / "street_bikes.mp4", SegmentSpec(min_shot=0.5))
    assert len(many) > len(few)
    assert all(b - a >= 2.0 - 1e-6 for a, b in zip(few, few[1:]))


def test_long_shot_is_split_into_bounded_windows(videos):
    cuts, end = detect(videos / "campus_people_walking.mp4", SegmentSpec())
    segs = segments_from_cuts(cuts, end, SegmentSpec(max_segment=8.0))
    assert cuts == []
    assert all(s.duration <= 8.0 + 1e-6 for s in segs)
    assert segs[0].start == 0.0 and segs[-1].end == pytest.approx(end)
    assert all(a.end == pytest.approx(b.start) for a, b in zip(segs, segs[1:]))


def test_windows_rule():
    assert windows(0, 5, 8) == [Segment(0, 5)]
    assert [round(s.duration, 3) for s in windows(0, 10, 8)] == [5.0, 5.0]
    assert [s.end for s in windows(0, 30, 8)] == [8, 16, 24, 30]


@pytest.mark.parametrize("end", [3.0, 12.5, 13.0, 20.0, 25.0, 41.0])
def test_streamed_segments_match_the_final_ones(end):
    """Segments closed while decoding are never changed by what comes later."""
    spec = SegmentSpec()
    early = segments_from_cuts([], end, spec, final=False)
    for later in (end + 0.5, end + 7, end + 30):
        assert segments_from_cuts([], later, spec)[: len(early)] == early


def test_fixed_windows_and_spec_parsing():
    spec = SegmentSpec.parse("fixed:3")
    segs = segments_from_cuts([5.0], 10.0, spec)
    assert [(s.start, s.end) for s in segs] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    for bad in ("fixed:0", "fixed:x", "scenes"):
        with pytest.raises(KvcapError):
            SegmentSpec.parse(bad)


def test_keyframes_are_spread_over_the_segment(tmp_path):
    path = make_video(tmp_path / "v.mp4", [(10, 10, 10), (250, 250, 250)], seconds_each=4.0, fps=10)
    pool = KeyframePool(rate=4.0)
    for f in frames(probe(path)):
        if pool.wants(f.time):
            pool.add(f)
    assert len(pool.times) == pytest.approx(32, abs=1)
    first = pool.take(0.0, 4.0, 4)
    assert first.shape == (4, 224, 224, 3)  # resized whole to the encoder's input
    assert first.mean() < 100  # all from the dark scene
    second = pool.take(4.0, 8.0, 4)
    assert second.mean() > 150
    pool.drop_before(4.0)
    assert sorted(pool.times)[1] >= 4.0 - 1e-6  # only the last candidate before 4 s is kept
    short = pool.take(5.0, 5.05, 4)  # shorter than the sampling period: nearest frame
    assert short.shape[0] == 1
    pool.drop_before(7.9)
    tail = pool.take(7.95, 8.0, 4)  # a last sliver after the last candidate still gets a frame
    assert tail.shape[0] == 1 and tail.mean() > 150
