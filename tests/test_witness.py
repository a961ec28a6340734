"""The noun witness: what it learns, how decoding weighs it, how it is stored and refused."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from kvcap import modelfile, witness
from kvcap.captions import Caption
from kvcap.confidence import Calibration
from kvcap.errors import KvcapError
from kvcap.witness import NounWitness


def clusters(n: int, seed: int) -> tuple[np.ndarray, list[set[str]]]:
    """Pooled features of two kinds of picture: cats on sofas near one direction, cars on roads near another."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2, 64)) * 2
    kinds = rng.integers(0, 2, n)
    x = centres[kinds] + rng.standard_normal((n, 64))
    nouns = [{"고양이", "소파"} if k == 0 else {"자동차", "도로"} for k in kinds]
    return x.astype(np.float32) + 5.0, nouns  # offset: features are post-ReLU, all positive


def witness_of(probs: dict[str, float]) -> tuple[NounWitness, np.ndarray]:
    w = NounWitness(sorted(probs), feature_dim=8, hidden=4)
    return w, np.array([probs[n] for n in w.nouns])


def cap(text: str, rank: float) -> Caption:
    return Caption(text, 0.5, [], [], rank)


def test_fit_learns_which_things_each_kind_of_picture_shows():
    x, nouns = clusters(400, seed=0)
    w = witness.fit(x[:300], nouns[:300], epochs=20)
    assert set(w.nouns) == {"고양이", "소파", "자동차", "도로"}
    p = w.probs(torch.from_numpy(x[300:]))
    cat = np.array(["고양이" in s for s in nouns[300:]])
    k = w.index["고양이"]
    assert p[cat, k].min() > 0.5 and p[~cat, k].max() < 0.5  # held-out pictures of both kinds told apart
    assert w.support({"고양이", "소파"}, p[np.argmax(cat)]) > 0.8
    assert w.support({"자동차"}, p[np.argmax(cat)]) < 0.2
    assert w.support(set(), p[0]) == 1.0  # naming nothing names nothing wrong


def test_fit_refuses_data_with_no_noun_named_often_enough():
    x, _ = clusters(10, seed=1)
    with pytest.raises(KvcapError, match="too little data"):
        witness.fit(x, [{f"명사{i}"} for i in range(10)])


def test_a_hypothesis_naming_a_doubted_thing_loses_to_one_that_does_not():
    w, p = witness_of({"고양이": 0.9, "개": 0.02, "소파": 0.7})
    cal = Calibration(tables={"support": ([0.0, 1.0], [0.1, 0.9])}, weight=1.0, bonus=0.0, witness=w)
    own = [[cap("개가 소파 위에 누워 있다.", -1.0), cap("고양이가 소파 위에 누워 있다.", -2.0)]]
    (best, confidence), = cal.choose(own, [[]], p[None])
    # log 0.02 costs 3.9, log 0.9 only 0.1: the second-ranked, true sentence wins
    assert best.text == "고양이가 소파 위에 누워 있다."
    assert confidence == pytest.approx(0.1 + 0.8 * (0.9 + 0.7) / 2)  # support table at the mean witness p
    plain = Calibration(tables=cal.tables, weight=0.0, witness=w)
    assert plain.choose(own, [[]], p[None])[0][0].text == "개가 소파 위에 누워 있다."  # without the witness: rank only


def test_the_general_style_wins_where_every_specific_sentence_names_doubted_things():
    w, p = witness_of({"남자": 0.05, "스케이트보드": 0.01, "사람": 0.8, "거리": 0.6})
    own = [[cap("남자가 스케이트보드를 타고 있다.", -1.0)]]
    general = [[cap("사람들이 거리를 걷고 있다.", -3.0)]]
    tables = {"support": ([0.0, 1.0], [0.0, 1.0])}
    doubting = Calibration(tables=tables, weight=1.0, bonus=2.0, witness=w)
    assert doubting.choose(own, general, p[None])[0][0].text == "사람들이 거리를 걷고 있다."
    # a bonus for the model's own style large enough to outweigh the doubt keeps it
    trusting = Calibration(tables=tables, weight=1.0, bonus=20.0, witness=w)
    assert trusting.choose(own, general, p[None])[0][0].text == "남자가 스케이트보드를 타고 있다."


def test_hypotheses_with_sentence_problems_are_not_chosen():
    w, p = witness_of({"남자": 0.9, "탁자": 0.9})
    broken = Caption("남자가 탁자 위에 놓여 있다.", 0.6, [], ["a living subject with a thing's verb"], -0.5)
    cal = Calibration(tables={"support": ([0.0, 1.0], [0.0, 1.0])}, weight=1.0, witness=w)
    assert cal.choose([[broken, cap("남자가 탁자 앞에 앉아 있다.", -2.0)]], [[]], p[None])[0][0].problems == []


def test_witness_file_round_trips_and_a_damaged_one_is_refused(tmp_path):
    x, nouns = clusters(100, seed=2)
    w = witness.fit(x, nouns, epochs=2, hidden=16)
    w.save(tmp_path)
    again = NounWitness.load(tmp_path)
    assert again.nouns == w.nouns
    # stored in float16: the same probabilities to within its rounding
    assert np.abs(again.probs(torch.from_numpy(x[:20])) - w.probs(torch.from_numpy(x[:20]))).max() < 5e-3
    assert NounWitness.load(tmp_path / "elsewhere") is None  # no witness: decoding goes without

    state = {k: v.clone() for k, v in w.state_dict().items()}
    for meta, tensors in (({"nouns": json.dumps(w.nouns[:-1]), "hidden": "16"}, state),  # a noun fewer than rows
                          ({"nouns": "not json", "hidden": "16"}, state),
                          ({"hidden": "16"}, state),
                          ({"nouns": json.dumps(w.nouns), "hidden": "16"}, {**state, "mean": torch.zeros(3)})):
        save_file(tensors, str(tmp_path / witness.FILE), metadata=meta)
        with pytest.raises(KvcapError, match="damaged noun witness"):
            NounWitness.load(tmp_path)
    (tmp_path / witness.FILE).write_bytes(b"\x00" * 40)
    with pytest.raises(KvcapError, match="damaged noun witness"):
        NounWitness.load(tmp_path)


def test_shipped_model_decodes_with_its_witness():
    loaded = modelfile.load()
    assert loaded.witness is not None and len(loaded.witness.nouns) > 1000
    cal = Calibration.for_model(loaded)
    assert cal.witness is loaded.witness and cal.weight > 0 and "support" in cal.tables


def test_a_noun_the_witness_all_but_rules_out_is_written_around(captioner, videos):
    """The campus seen from above, in real footage: the general style wrote '눈 덮인 길에
    사람들이 서 있다' (no snow) and the own style a skateboarder. Snow is what the witness all
    but rules out there, so it is banned and the sentence written again without it."""
    from kvcap import confidence
    from kvcap.korean import nouns_many

    segs = []
    original = captioner.caption_features
    captioner.caption_features = lambda s: segs.extend(s) or original(s)
    try:
        said = captioner.caption_video(videos / "campus_people_walking.mp4").segments
    finally:
        captioner.caption_features = original
    cal = captioner.confidence
    probs = cal.witness.probs(witness.pooled(segs))
    texts = [s.text for s in said]
    assert len(said) == len(segs) == 1
    assert not cal.witness.doubted(nouns_many(texts)[0], probs[0], confidence.DOUBT), texts
    assert not {"눈", "스케이트", "보드"} & nouns_many(texts)[0], texts
    assert "사람" in nouns_many(texts)[0], texts  # people are there: it still says so
    # without writing around, the same segment names the doubted snow
    own, general = confidence.both_styles(captioner.model, captioner.vocab, segs, beam=captioner.beam)
    before = cal.choose(own, general, probs)[0][0]
    assert "눈" in nouns_many([before.text])[0], before.text


def test_writing_around_bans_only_that_segments_doubted_nouns(monkeypatch):
    from kvcap import confidence

    w, p = witness_of({"개": 0.02, "고양이": 0.9, "소파": 0.7})
    cal = Calibration(tables={"support": ([0.0, 1.0], [0.0, 1.0])}, weight=1.0, witness=w)
    calls = []

    class Model:  # what write_around_doubts needs of a model: its config, via both_styles
        config = type("C", (), {"general": False})()

    def fake_candidates(model, vocab, segments, ban=None, **kw):
        calls.append(ban)
        return [[cap("고양이가 소파 위에 누워 있다.", -1.0)] for _ in segments]

    monkeypatch.setattr(confidence, "candidates", fake_candidates)
    vocab = type("V", (), {"noun_ids": staticmethod(lambda names: sorted(names))})()
    chosen = [(cap("개가 소파 위에 누워 있다.", -1.0), 0.3), (cap("고양이가 소파 위에 누워 있다.", -1.0), 0.8)]
    out = cal.write_around_doubts(Model(), vocab, [np.zeros(1)] * 2, chosen, np.stack([p, p]))
    assert [c.text for c, _ in out] == ["고양이가 소파 위에 누워 있다."] * 2
    assert calls == [[["개"]]]  # one new search, for the first segment alone, without 개


def test_tuning_says_less_below_an_even_chance_at_least(monkeypatch):
    from kvcap import confidence

    assert confidence.SAY_LESS_BELOW == 0.5
    monkeypatch.setattr(confidence, "say_less_threshold", lambda *a: 0.1)
    x, nouns = clusters(60, seed=3)
    w = witness.fit(x, nouns, epochs=2, hidden=16)
    own = [[cap("고양이가 소파 위에 있다.", -1.0)] for _ in nouns]
    monkeypatch.setattr(confidence, "both_styles", lambda *a, **k: (own, own))
    monkeypatch.setattr(confidence, "witness_probs", lambda w, model, feats: w.probs(torch.from_numpy(np.stack(feats))))
    cal = confidence.tune(None, None, w, list(x), [["고양이가 소파 위에 있다."] if "고양이" in n else ["자동차가 도로 위에 있다."]
                                                   for n in nouns])
    assert cal.threshold == 0.5
    monkeypatch.setattr(confidence, "say_less_threshold", lambda *a: 0.7)
    assert confidence.tune(None, None, w, list(x), [["고양이가 소파 위에 있다."]] * len(nouns)).threshold == 0.7


def test_animals_are_backed_by_the_imagenet_classifier():
    from kvcap import sight

    w, p = witness_of({"새": 0.02, "개": 0.6, "벽": 0.3})
    classes = np.zeros(1000)
    classes[sight.ANIMALS["새"][:3]] = 0.25  # three bird classes: 0.75 of the mass
    backed = sight.backed(w, np.stack([p, p]), [classes, None])
    row = dict(zip(w.nouns, backed[0]))
    assert row["새"] == pytest.approx(0.75)  # the classifier sees a bird the noun witness doubts
    assert row["개"] == pytest.approx(0.6) and row["벽"] == pytest.approx(0.3)  # never lowered; non-animals as they were
    assert np.array_equal(backed[1], p)  # a model without the classifier head: unchanged


def test_the_cockatoo_caption_is_trusted_as_a_bird(captioner, videos):
    """cockatoo.mp4's second shot is a white cockatoo; the noun witness, trained on photos,
    barely knows such a close-up (confidence 0.27 from it alone), the ImageNet classifier does."""
    said = captioner.caption_video(videos / "cockatoo.mp4").segments
    birds = [s for s in said if "새" in s.text.split()[0]]
    assert birds and all(s.confidence > 0.5 for s in birds), [(s.text, s.confidence) for s in said]
