"""Stage 6 (merge) and the drawing half of stage 7."""
from __future__ import annotations

import numpy as np
import pytest

from kvcap.captioner import CaptionedSegment, merge_repeats
from kvcap.errors import KvcapError
from kvcap.outputs import output_stems, srt_text, timestamp, vtt_text
from kvcap.render import CaptionStrip, Timeline, _font, font_path, wrap


def seg(a, b, text, score=0.5):
    return CaptionedSegment(a, b, text, score)


def test_same_sentence_never_twice_in_a_row():
    segs = [seg(0, 5, "개가 달리고 있다."), seg(5, 10, "개가 달리고 있다 ."), seg(10, 15, "남자가 서 있다."),
            seg(15, 20, "개가 달리고 있다.", 0.9)]
    merged = merge_repeats(segs)
    assert [(s.start, s.end) for s in merged] == [(0, 10), (10, 15), (15, 20)]
    assert [s.text for s in merged] == ["개가 달리고 있다.", "남자가 서 있다.", "개가 달리고 있다."]


def test_timestamps_and_text_formats():
    assert timestamp(3723.4567) == "01:02:03.457"
    segs = [seg(0, 1.5, "첫 문장."), seg(1.5, 3, "둘째 문장.")]
    assert "00:00:01,500 --> 00:00:03,000" in srt_text(segs)
    assert vtt_text(segs).startswith("WEBVTT") and "00:00:01.500 --> 00:00:03.000" in vtt_text(segs)


def test_output_names_do_not_collide(tmp_path):
    from pathlib import Path

    stems = output_stems([Path("a/x.mp4"), Path("b/x.png"), Path("y.gif")])
    assert stems == {Path("a/x.mp4"): "x.mp4", Path("b/x.png"): "x.png", Path("y.gif"): "y"}


def test_shipped_font_draws_hangul():
    assert font_path().name == "NanumGothicBold.ttf"
    font = _font(24)
    box = font.getmask("한글 자막").getbbox()
    assert box is not None and box[2] - box[0] > 40  # real glyphs, not an empty or one-box string


def _derived_font(tmp_path, name: str, *, latin_only: bool = False, wider: float = 1.0):
    """A font made from the shipped one with fontTools: Latin letters only, or every advance
    width stretched (the same glyphs, visibly spaced apart), so tests need no system font."""
    from fontTools import subset
    from fontTools.ttLib import TTFont

    font = TTFont(str(font_path()))
    if latin_only:
        sub = subset.Subsetter()
        sub.populate(unicodes=range(0x20, 0x7F))
        sub.subset(font)
    for glyph, (advance, lsb) in font["hmtx"].metrics.items():
        font["hmtx"].metrics[glyph] = (round(advance * wider), lsb)
    path = tmp_path / name
    font.save(str(path))
    return path


def test_font_without_hangul_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("KVCAP_FONT", str(_derived_font(tmp_path, "latin.ttf", latin_only=True)))
    _font.cache_clear()
    try:
        with pytest.raises(KvcapError, match="no Hangul"):
            _font(20)
    finally:
        _font.cache_clear()


def test_kvcap_font_with_hangul_is_used(tmp_path, monkeypatch):
    shipped = CaptionStrip("두 남자가 길을 걷고 있다.", 640, 360)
    custom = _derived_font(tmp_path, "wide.ttf", wider=1.4)
    monkeypatch.setenv("KVCAP_FONT", str(custom))
    _font.cache_clear()
    try:
        assert font_path() == custom
        strip = CaptionStrip("두 남자가 길을 걷고 있다.", 640, 360)
    finally:
        _font.cache_clear()
    inked = lambda s: np.flatnonzero(s.alpha[..., 0].max(axis=0) > 0.5)  # noqa: E731 - columns with text
    assert np.ptp(inked(strip)) > 1.25 * np.ptp(inked(shipped))  # drawn with the wider font


def test_long_captions_wrap_inside_the_frame():
    font = _font(20)
    text = "빨간 셔츠를 입은 남자가 사람들이 많은 거리에서 자전거를 타고 빠르게 지나가고 있다."
    lines = wrap(text, font, 200)
    assert len(lines) >= 3 and all(font.getlength(l) <= 200 for l in lines)
    assert " ".join(lines) == text


def test_strip_is_legible_on_white_and_black():
    strip = CaptionStrip("흰 바탕에도 보인다.", 320, 180)
    for bg in (0, 255):
        frame = np.full((180, 320, 3), bg, np.uint8)
        out = strip.draw(frame.copy())
        band = out[strip.top : strip.bottom]
        assert band.min() < 60 and band.max() > 200  # dark outline and light fill on any background
        assert (out[: strip.top] == bg).all()


def test_timeline_picks_the_caption_on_screen():
    tl = Timeline([seg(0, 2, "하나."), seg(2, 4, "둘.")], 160, 90)
    assert tl.at(-0.1) is None and tl.at(4.0) is None
    assert tl.at(1.0) is not tl.at(3.0)
