"""Evaluation metrics: agreement with pycocoevalcap, and sanity on real Korean captions."""
from __future__ import annotations

import json

import pytest

from kvcap import metrics


@pytest.fixture(scope="module")
def korean_set(koflickr):
    """Real koflickr images with 5 captions: one caption plays the hypothesis, the rest references."""
    data = [r for r in json.loads(koflickr.read_text(encoding="utf-8")) if len(r["caption_ko"]) == 5][:150]
    hyps = {r["id"]: r["caption_ko"][0] for r in data}
    refs = {r["id"]: r["caption_ko"][1:] for r in data}
    return hyps, refs


def test_bleu_and_cider_match_pycocoevalcap(korean_set):
    pytest.importorskip("pycocoevalcap", reason="pycocoevalcap is a test dependency (pip install .[test])")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    hyps, refs = korean_set
    keys = list(hyps)
    th = dict(zip(keys, metrics.korean_tokens([hyps[k] for k in keys])))
    tr = {k: metrics.korean_tokens(refs[k]) for k in keys}
    ours_bleu = metrics.bleu(th, tr)
    theirs_bleu, _ = Bleu(4).compute_score(tr, {k: [v] for k, v in th.items()}, verbose=0)
    assert ours_bleu == pytest.approx(theirs_bleu, abs=1e-6)
    ours_cider, _ = metrics.cider_d(th, tr)
    theirs_cider, _ = Cider().compute_score(tr, {k: [v] for k, v in th.items()})
    assert ours_cider == pytest.approx(theirs_cider, abs=1e-6)


def test_scores_order_good_bad_and_constant(korean_set):
    hyps, refs = korean_set
    good = metrics.evaluate(hyps, refs)
    keys = list(hyps)
    shuffled = {k: hyps[keys[(i + 1) % len(keys)]] for i, k in enumerate(keys)}  # someone else's caption
    bad = metrics.evaluate(shuffled, refs)
    constant = metrics.evaluate({k: "한 남자가 서 있다." for k in keys}, refs)
    for name in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"):
        assert good[name] > bad[name], name
    assert constant["distinct"] < 0.01 < good["distinct"]
    assert constant["CIDEr-D"] < 0.5 * good["CIDEr-D"]


def test_meteor_matches_inflected_forms_through_morphemes():
    refs = {1: [metrics.korean_tokens(["남자가 길을 걷고 있다."])[0]]}
    inflected = {1: metrics.korean_tokens(["남자가 길을 걷는다."])[0]}
    unrelated = {1: metrics.korean_tokens(["고양이가 소파에 누워 있다."])[0]}
    assert metrics.meteor(inflected, refs) > metrics.meteor(unrelated, refs)
    assert metrics.meteor({1: refs[1][0]}, refs) > 0.99  # identical: one chunk, tiny penalty
