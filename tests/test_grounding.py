"""Grounding: the noun score on hand-made cases with known answers, the sentence checks that
pass over broken beam hypotheses, calibrated confidence, and one story per unchanging shot."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import ROOT, VIDEOS, need

from kvcap import confidence, korean, metrics
from kvcap.captions import Caption
from kvcap.shots import Segment
from kvcap.stories import group_frames, group_windows

HYPS = {1: "고양이가 소파 위에 누워 있다.", 2: "남자가 자전거를 타고 있다.", 3: "개가 공을 물고 있다."}
REFS = {
    1: ["고양이가 소파에 누워 있다.", "회색 고양이가 소파 위에서 자고 있다.", "소파 위에 고양이가 있다."],
    2: ["여자가 말을 타고 있다.", "여자가 갈색 말을 타고 있다.", "말을 탄 여자가 있다."],
    3: ["개가 풀밭을 달리고 있다.", "강아지가 풀밭 위를 뛰고 있다.", "개 한 마리가 달린다."],
}


def test_nouns_are_things_named_with_variants_folded():
    assert korean.nouns_many(["회색 고양이가 소파 위에서 자고 있다."])[0] == {"회색", "고양이", "소파"}  # '위' places, names nothing
    assert korean.nouns_many(["강아지 한 마리가 달린다."])[0] == {"개"}  # 강아지 = 개; '마리' is a counter


def test_noun_precision_recall_and_hit_on_known_cases():
    g = metrics.grounding(HYPS, REFS)
    # named: {고양이, 소파} both right; {남자, 자전거} both wrong; {개, 공}: 개 right -> 3 of 6
    assert g["noun_precision"] == pytest.approx(3 / 6)
    # agreed by 2+ references: {고양이, 소파}, {여자, 말}, {개, 풀밭}; named 2 + 0 + 1 of 6
    assert g["noun_recall"] == pytest.approx(3 / 6)
    assert g["noun_hit"] == pytest.approx(2 / 3)  # item 2 names none of its agreed nouns


def test_a_caption_of_the_picture_beats_one_of_another_picture():
    right = metrics.grounding({k: REFS[k][0] for k in REFS}, REFS)
    swapped = metrics.grounding({1: REFS[2][0], 2: REFS[3][0], 3: REFS[1][0]}, REFS)
    assert right["noun_precision"] == 1.0 and right["noun_hit"] == 1.0
    assert swapped["noun_precision"] == 0.0 and swapped["noun_recall"] == 0.0


def test_captions_without_nouns_add_nothing_to_precision():
    g = metrics.grounding({1: "누워 있다.", 2: "여자가 있다."}, {1: REFS[1], 2: REFS[2]})
    assert g["noun_precision"] == 1.0  # only item 2 names a noun, and it is right
    assert g["noun_hit"] == pytest.approx(1 / 2)


def test_human_agreement_holds_each_reference_against_the_others():
    h = metrics.human_grounding(REFS)
    # item 1: 2/2, 2/3 (회색 is in no other), 2/2; item 2: 2/2, 2/3, 2/2; item 3: 2/2, 2/2, 1/1
    assert h["noun_precision"] == pytest.approx(17 / 19)
    assert metrics.human_grounding({1: REFS[1][:2]}) == {"noun_precision": 0.0, "noun_recall": 0.0,
                                                          "noun_hit": 0.0}  # needs 3+ references


@pytest.mark.parametrize("text, problem", [
    ("한 남자가 탁자 위에 놓여 있다.", "thing verb with a living subject"),
    ("검은 옷을 입은 남자가 놓여 있다.", "thing verb with a living subject"),
    ("강아지가 주차장에 주차되어 있다.", "thing verb with a living subject"),
    ("흰 바탕 위에 앉아 있다.", "no subject"),
    ("나무 탁자 위에 나무 탁자가 놓여 있다.", "subject on or in itself"),
    ("상자 안에 상자가 있다.", "subject on or in itself"),
    ("흰 벽에 흰 벽이 있다.", "subject on or in itself"),
    ("나무 탁자가 놓인 나무 탁자 위에 나무 탁자와 화분이 놓여 있다.", "subject on or in itself"),
    ("거리에서 거리가 보인다.", "subject on or in itself"),
    ("자전거를 탄 남자가 자전거를 타고 있다.", "said twice"),
    ("모자 쓴 남자가 모자를 쓰고 있다.", "said twice"),
    ("흰 옷을 입은 여자가 검은 옷을 입고 서 있다.", "said twice"),
    ("흰 벽 앞에서 흰 셔츠를 입은 남자가 흰 벽 앞에 서 있다.", "said twice"),
    ("남자가 전시되어 있다.", "thing verb with a living subject"),
])
def test_broken_mixed_sentences_are_found(text, problem):
    assert problem in korean.sentence_problems(text)


@pytest.mark.parametrize("text", [
    "접시 위에 음식이 놓여 있다.", "두 남자가 길을 걷고 있다.", "고양이는 소파에 누워 있다.",
    "차들이 주차되어 있다.", "한 남자가 물건이 놓인 탁자 옆에 서 있다.", "사람들이 거리를 걷고 있다.",
    "개 옆에 개가 앉아 있다.", "나무 탁자 위에 화분이 놓여 있다.", "탁자 위에 컵과 접시가 놓여 있다.",
    "개 옆에 개와 고양이가 앉아 있다.", "남자가 의자 위에 서 있다.",
    "흰 벽에 그림이 걸려 있다.", "벽 앞에 벽돌이 쌓여 있다.", "부엌에서 여자가 요리를 하고 있다.",
    "아이의 손바닥이 인형의 손바닥에 맞닿아 있다.",
    "자전거를 탄 남자가 서 있다.", "갈색 셔츠를 입은 남자가 흰 셔츠를 입은 남자와 이야기하고 있다.",
    "모자를 쓴 남자가 파란 모자를 쓴 스키어 옆에서 그림들을 전시하고 있다.", "남자가 차를 주차하고 있다.",
    "한 소녀가 트램펄린 위에서 물구나무를 서고 있고, 다른 소녀는 트램펄린 위에 서 있다.",
])
def test_sound_sentences_pass(text):
    assert korean.sentence_problems(text) == []


def test_koscenes_and_koflickr_references_mostly_pass(koflickr, koscenes):
    """The checks are narrow: human captions almost never trip the living-subject or said-twice rules."""
    import json

    caps = [c for f in (koflickr, koscenes) for r in json.loads(f.read_text(encoding="utf-8"))[:1500]
            for c in r["caption_ko"]]
    problems = [korean.sentence_problems(c) for c in caps]
    for problem in ("thing verb with a living subject", "said twice", "subject on or in itself"):
        flagged = [c for c, p in zip(caps, problems) if problem in p]
        assert len(flagged) / len(caps) < 0.003, (problem, flagged[:10])


def test_generate_passes_over_a_hypothesis_with_problems():
    from kvcap.captions import _choose

    bad = Caption("한 남자가 탁자 위에 놓여 있다.", 0.6, [], ["thing verb with a living subject"])
    good = Caption("탁자 위에 컵이 놓여 있다.", 0.5, [], [])
    assert _choose(iter([bad, good])) is good
    assert _choose(iter([bad])) is bad  # nothing better: the best is kept, its problem listed


def test_hypotheses_written_again_get_the_same_checks_and_their_own_copies():
    """The Korean work of a hypothesis is cached (both styles and the second decoding write
    many of the same): a repeat gets what the first got, the broken form repaired, and its
    own nouns and problems to change."""
    from kvcap.captions import _caption, _korean
    from kvcap.decoding import Hypothesis

    tokens = korean.tokenize("한 남자가 탁자 위에서 있다.")  # repaired to '…위에 서 있다.'
    vocab = korean.Vocab(list(korean.SPECIALS) + sorted(set(tokens)))
    h = Hypothesis(vocab.encode(tokens) + [vocab.eos_id], -1.0, -1.0)
    _korean.cache_clear()
    first, again = _caption(h, vocab, True, True), _caption(h, vocab, True, True)
    assert _korean.cache_info().hits == 1
    assert first.text == again.text == "한 남자가 탁자 위에 서 있다."
    assert first.nouns == again.nouns == {"남자", "탁자"} and first.problems == again.problems == []
    first.nouns.add("개")
    first.problems.append("said twice")
    assert _caption(h, vocab, True, True).nouns == {"남자", "탁자"} and again.problems == []
    bad = korean.tokenize("한 남자가 탁자 위에 놓여 있다.")
    vocab = korean.Vocab(list(korean.SPECIALS) + sorted(set(bad)))
    c = _caption(Hypothesis(vocab.encode(bad), -1.0, -1.0), vocab, True, True)
    assert c.problems == ["thing verb with a living subject"]


# ----------------------------------------------------------------------------- confidence


def test_isotonic_fit_is_monotone_and_pools_violators():
    kx, ky = confidence.isotonic([0.1, 0.2, 0.3, 0.4], [0.2, 0.6, 0.4, 0.9], [1, 1, 1, 1])
    assert list(ky) == sorted(ky)
    assert ky[2] == pytest.approx(0.5) and ky[3] == pytest.approx(0.5)  # 0.6 and 0.4 pooled


def test_threshold_uses_the_general_caption_only_where_it_pays():
    # low scores: specific captions name 3 nouns, 1 right; general ones name 1, right
    # high scores: specific captions name 3, all right; general ones 1, right
    scores = {"auto": [0.1, 0.15, 0.2, 0.7, 0.8, 0.9], "general": [0.5] * 6}
    right = {"auto": [1, 1, 1, 3, 3, 3], "general": [1] * 6}
    named = {"auto": [3, 3, 3, 3, 3, 3], "general": [1] * 6}
    cal = confidence.fit(scores, right, named)
    assert cal.value(0.1) < 0.5 < cal.value(0.9)
    low = [Caption("a", 0.12, []), Caption("b", 0.85, [])]
    said = cal.say_less(low, lambda idx, style: [Caption(f"general{i}", 0.5, []) for i in idx])
    assert [c.text for c, _ in said] == ["general0", "b"]
    never = confidence.fit({"auto": scores["auto"], "general": scores["general"]}, {"auto": [3] * 6, "general": [0] * 6},
                           named)
    assert never.threshold == 0.0  # a general style that names wrong things is never used


def test_calibration_from_a_damaged_config_is_ignored():
    assert confidence.Calibration.from_meta({"confidence": {"tables": {"auto": {"score": [0.1], "precision": []}}}}
                                            ).tables == {}
    assert confidence.Calibration.from_meta({"confidence": "high"}).value(0.5) is None


# ----------------------------------------------------------------------------- stories


def _feat(direction: int, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    f = np.zeros((4, 49, 1280), np.float32)
    f[:, :, direction] = 1.0
    f += noise * np.random.default_rng(seed).random(f.shape).astype(np.float32)
    return f


def test_windows_of_an_unchanging_shot_are_one_story():
    segs = [Segment(0, 8, 0), Segment(8, 16, 0), Segment(16, 24, 0), Segment(24, 30, 1)]
    feats = [_feat(0, 0.01, 0), _feat(0, 0.01, 1), _feat(0, 0.01, 2), _feat(0, 0.01, 3)]
    assert group_windows(segs, feats) == [[0, 1, 2], [3]]  # a cut always starts a new story


def test_content_change_inside_a_shot_starts_a_new_story():
    segs = [Segment(0, 8, 0), Segment(8, 16, 0), Segment(16, 24, 0)]
    assert group_windows(segs, [_feat(0), _feat(0), _feat(5)]) == [[0, 1], [2]]


def test_group_frames_spreads_keyframes_over_the_whole_group():
    feats = [np.full((4, 2, 3), i, np.float32) for i in range(4)]  # 16 keyframes, window i holds value i
    picked = group_frames(feats, max_frames=8)
    assert len(picked) == 8 and picked[0, 0, 0] == 0 and picked[-1, 0, 0] == 3


def test_a_named_animal_the_classifier_does_not_see_is_a_problem():
    """sight: '개' over a picture the ImageNet head calls a cockatoo (class 89) is flagged,
    over a picture it calls a beagle (162) it is not; sentences naming no animal never are."""
    import numpy as np

    from kvcap import sight

    bird, dog = np.full(1000, 0.1 / 999), np.full(1000, 0.1 / 999)
    bird[89], dog[162] = 0.9, 0.9
    assert sight.problems("검은 개가 바위 위에 앉아 있다.", bird) == ["names 개 the picture does not show"]
    assert sight.problems("검은 개가 바위 위에 앉아 있다.", dog) == []
    assert sight.problems("강아지가 뛰고 있다.", bird) == ["names 개 the picture does not show"]  # folded to 개
    assert sight.problems("새 한 마리가 앉아 있다.", bird) == []
    assert sight.problems("새 한 마리가 앉아 있다.", dog) == ["names 새 the picture does not show"]
    assert sight.problems("한 남자가 길을 걷고 있다.", bird) == []
    assert sight.problems("검은 개가 앉아 있다.", None) == []  # a model without the classifier head


def _video_grounding():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "video_grounding.py"
    spec = importlib.util.spec_from_file_location("video_grounding", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_video_noun_labels_fit_the_shared_videos():
    """scripts/video_grounding.py scores captions of real video against hand labels: every
    labelled frame must lie inside its video, and every label word must be a noun the score
    can match (a word Kiwi does not read as a noun would silently never count)."""
    from kvcap.video import probe

    vg = _video_grounding()
    labels = vg.read_labels(ROOT / "data" / "shared_video_nouns.json", need(VIDEOS))
    assert sum(len(f) for f in labels.values()) >= 30
    for video, frames in labels.items():
        duration = probe(need(video)).duration
        assert all(0 <= f["time"] <= duration for f in frames), video.name
        words = [w for f in frames for w in f["nouns"].split()]
        assert all(korean.nouns_many(words)), (video.name, [w for w, n in zip(words, korean.nouns_many(words)) if not n])


def test_video_grounding_scores_the_entry_showing_at_each_time():
    vg = _video_grounding()
    entries = [SimpleNamespace(start=0.0, end=4.0, text="방 안에 탁자가 있다."),
               SimpleNamespace(start=4.0, end=8.0, text="여자가 서 있다.")]
    assert vg.caption_at(entries, 3.9) == "방 안에 탁자가 있다."
    assert vg.caption_at(entries, 4.0) == "여자가 서 있다."
    assert vg.caption_at(entries, 8.0) == "여자가 서 있다."  # the end of the last entry still shows it
    assert vg.caption_at(entries, 9.0) == ""
