"""Calibrated confidence, and saying less when unsure.

A caption's `score` (geometric mean of its token probabilities) ranks captions but is no
probability of being right. On the validation split each caption's noun precision (the
share of the nouns it names that a reference names, metrics.grounding) is regressed on
its score with isotonic regression (pool-adjacent-violators, weighted by noun count):
`confidence` is then the expected share of a caption's nouns that are in the picture.

Say less: a model trained with a "general" style (koscenes' short first captions) can
describe a picture in fewer, safer words ('회색 승용차가 산길을 달리고 있다' rather than a
sentence about a sedan, cliffs and a mountain pass). Below a confidence threshold the
general caption is used. The threshold is the one that, on validation, maximises right
nouns minus wrong nouns (a wrong noun costs as much as a right one gains); it is 0 (never)
when the general style does not pay.

With a noun witness (witness.py) in the model folder, both replace the above: every beam
hypothesis of both styles is ranked with the witness's doubt about the things it names
(`weight`, and `bonus` for the model's own style, chosen on validation by `tune`), and
confidence is regressed on the caption's witness support rather than its score (a better
predictor of noun precision on validation: Spearman 0.53 against 0.34). The general style
is then said below a confidence of at least SAY_LESS_BELOW (0.5: where a caption is expected
to be more wrong than right), and a chosen caption that names a thing the witness all but
rules out (p < DOUBT) is decoded again with that noun banned, so the sentence is written
around it (`write_around_doubts`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import sight
from .captions import Caption, candidates, class_probs, generate
from .errors import KvcapError
from . import witness as noun_witness


def isotonic(x: Sequence[float], y: Sequence[float], w: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Non-decreasing fit of y on x (pool adjacent violators); returns knots (x, fitted y)."""
    order = np.argsort(x, kind="stable")
    xs, ys, ws = (np.asarray(a, float)[order] for a in (x, y, w))
    blocks: list[list[float]] = []  # [sum w*y, sum w, x_min, x_max]
    for xi, yi, wi in zip(xs, ys, ws):
        blocks.append([wi * yi, wi, xi, xi])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            b = blocks.pop()
            blocks[-1] = [blocks[-1][0] + b[0], blocks[-1][1] + b[1], blocks[-1][2], b[3]]
    kx, ky = [], []
    for sy, sw, lo, hi in blocks:
        kx += [lo, hi]
        ky += [sy / sw, sy / sw]
    return np.asarray(kx), np.asarray(ky)


# say less (the general style) where a caption is expected to name more wrong things than right
# ones: photos alone put the threshold lower (0.097 for the shipped model), but on real video
# frames, which are unlike every training photo, the photo-tuned value said too much (README of
# the shipped model: 55 labelled frames)
SAY_LESS_BELOW = 0.5
# a noun the witness gives less than this is written around (`write_around_doubts`): on the
# validation photos such nouns of the shipped model's captions were right 6 times in 73
DOUBT = 0.1


@dataclass
class Calibration:
    tables: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)  # style -> (score, precision)
    threshold: float = 0.0  # below this confidence, the general caption is used
    weight: float = 0.0  # with a witness: weight of the named nouns' log witness probability
    bonus: float = 0.0  # with a witness: added to the rank of the model's own style's hypotheses
    witness: object = None  # witness.NounWitness of the model folder, or None

    @classmethod
    def for_model(cls, loaded) -> "Calibration":
        """A loaded model's calibration, with its noun witness where it has one and was tuned."""
        cal = cls.from_meta(loaded.meta)
        if loaded.witness is not None and cal.weight > 0 and "support" in cal.tables:
            cal.witness = loaded.witness
        return cal

    @classmethod
    def from_meta(cls, meta: dict) -> "Calibration":
        """From a model's config.json ("confidence"); an uncalibrated model gives no confidence."""
        data = meta.get("confidence")
        if not isinstance(data, dict):
            return cls()
        try:
            tables = {k: (list(map(float, v["score"])), list(map(float, v["precision"])))
                      for k, v in data["tables"].items()}
            if any(len(a) != len(b) or not a for a, b in tables.values()):
                raise ValueError("score and precision differ in length")
            weight, bonus = float(data.get("weight", 0.0)), float(data.get("bonus", 0.0))
            if not (0 <= weight <= 100 and -100 <= bonus <= 100):
                raise ValueError("witness weight or bonus out of range")
            return cls(tables, float(data.get("threshold", 0.0)), weight, bonus)
        except (KeyError, TypeError, ValueError, AttributeError):
            return cls()

    def to_meta(self) -> dict:
        return {"tables": {k: {"score": [round(x, 5) for x in a], "precision": [round(y, 5) for y in b]}
                           for k, (a, b) in self.tables.items()},
                "threshold": round(self.threshold, 5), **({"weight": self.weight, "bonus": self.bonus}
                                                          if self.weight > 0 else {})}

    def value(self, score: float, style: str = "auto") -> float | None:
        table = self.tables.get(style)
        if table is None:
            return None
        return float(np.interp(score, table[0], table[1]))

    def say_less(self, caps: list[Caption],
                 regenerate: Callable[[list[int], str], list[Caption]]) -> list[tuple[Caption, float | None]]:
        """(caption, confidence) per caption; those under the threshold said in the general style."""
        out = [(c, self.value(c.score)) for c in caps]
        if self.threshold <= 0 or "general" not in self.tables:
            return out
        low = [i for i, (_, conf) in enumerate(out) if conf is not None and conf < self.threshold]
        if low:
            for i, c in zip(low, regenerate(low, "general")):
                out[i] = (c, self.value(c.score, "general"))
        return out

    def generate(self, model, vocab, segments: Sequence[np.ndarray], *, beam: int,
                 length_penalty: float = 0.7) -> list[tuple[Caption, float | None]]:
        """What kvcap says of each segment: its caption (unsure ones in the general style)
        and the caption's confidence."""
        if self.witness is not None:
            kw = dict(beam=beam, length_penalty=length_penalty)
            own, general = both_styles(model, vocab, segments, **kw)
            probs = witness_probs(self.witness, model, segments)
            return self.write_around_doubts(model, vocab, segments, self.choose(own, general, probs), probs, **kw)
        caps = generate(model, vocab, segments, beam=beam, length_penalty=length_penalty)
        return self.say_less(caps, lambda idx, style: generate(
            model, vocab, [segments[i] for i in idx], beam=beam, length_penalty=length_penalty, style=style))

    def choose(self, own: list[list[Caption]], general: list[list[Caption]],
               probs: np.ndarray) -> list[tuple[Caption, float | None]]:
        """Per segment, the hypothesis (of either style) ranked best with the witness's
        doubt counted (witness.py), and its confidence from its witness support; under the
        threshold, the best of the general style alone."""
        from .korean import nouns_many

        missing = sorted({c.text for pools in (own, general) for pool in pools for c in pool if c.nouns is None})
        nouns = dict(zip(missing, nouns_many(missing)))
        nouns.update({c.text: c.nouns for pools in (own, general) for pool in pools for c in pool
                      if c.nouns is not None})
        out = []
        for mine, gen, p in zip(own, general, probs):
            best = self._best(mine, gen, p, nouns)
            conf = self.value(self.witness.support(nouns[best.text], p), "support")
            if conf < self.threshold and gen:
                best = self._best([], gen, p, nouns)
                conf = self.value(self.witness.support(nouns[best.text], p), "support")
            out.append((best, conf))
        return out

    def write_around_doubts(self, model, vocab, segments: Sequence[np.ndarray], chosen: list[tuple[Caption, float]],
                            probs: np.ndarray, rounds: int = 1, **kw) -> list[tuple[Caption, float]]:
        """Where a chosen caption names a thing the witness gives less than DOUBT, its segment
        is decoded again (both styles) with that noun's tokens banned, and chosen again: the
        sentence is written around it ('눈 덮인 길에 사람들이 서 있다' -> '건물 앞에 사람들이
        서 있다'). Bans add up over at most `rounds` rounds (one by default: on the shared
        videos a second round only swapped one wrong thing for another, at a fifth of the
        captioning time); a segment whose new hypotheses all have problems keeps its caption."""
        from .korean import nouns_many

        out = list(chosen)
        banned: list[set[str]] = [set() for _ in out]
        for _ in range(rounds):
            named = nouns_many([c.text for c, _ in out])
            redo = [i for i, (n, p) in enumerate(zip(named, probs))
                    if self.witness.doubted(n, p, DOUBT) - banned[i]]
            if not redo:
                break
            for i in redo:
                banned[i] |= self.witness.doubted(named[i], probs[i], DOUBT)
            own, general = both_styles(model, vocab, [segments[i] for i in redo],
                                       ban=[vocab.noun_ids(banned[i]) for i in redo], **kw)
            for i, (c, conf) in zip(redo, self.choose(own, general, probs[redo])):
                if not c.problems:
                    out[i] = (c, conf)
        return out

    def _best(self, mine: list[Caption], gen: list[Caption], p: np.ndarray, nouns: dict) -> Caption:
        pool = [(c, self.bonus) for c in mine if not c.problems] + [(c, 0.0) for c in gen if not c.problems]
        if not pool:  # every hypothesis has a problem: the model's best, problems listed
            return (mine or gen)[0]
        return max(pool, key=lambda cb: cb[0].rank + cb[1] + self.weight * self.witness.log_support(
            nouns[cb[0].text], p))[0]


def fit(scores: dict[str, list[float]], right: dict[str, list[int]], named: dict[str, list[int]],
        knots: int = 24) -> Calibration:
    """Calibration from validation captions per style ("auto", and "general" if the model has it).

    `right[style][i]` of `named[style][i]` nouns of caption i are named by a reference; the
    lists are aligned across styles (caption i is the same picture in every style).
    """
    cal = Calibration()
    for style in scores:
        keep = [i for i, n in enumerate(named[style]) if n > 0]
        if not keep:  # no caption names a thing: nothing to calibrate on
            continue
        x = [scores[style][i] for i in keep]
        y = [right[style][i] / named[style][i] for i in keep]
        kx, ky = isotonic(x, y, [named[style][i] for i in keep])
        pick = np.unique(np.linspace(0, len(kx) - 1, min(knots, len(kx))).round().astype(int))
        cal.tables[style] = (kx[pick].tolist(), ky[pick].tolist())
    if "general" in cal.tables and "auto" in cal.tables:
        conf = np.array([cal.value(s) for s in scores["auto"]])
        cal.threshold = say_less_threshold(conf, (right["auto"], named["auto"]), (right["general"], named["general"]))
    return cal


def say_less_threshold(conf: np.ndarray, first: tuple[list[int], list[int]], general: tuple[list[int], list[int]]) -> float:
    """The confidence under which saying the general caption instead of the first maximises
    right nouns minus wrong nouns over validation ((right, named) counts per caption); 0: never."""
    gain_first = np.array(first[0]) * 2 - np.array(first[1])  # right - wrong
    gain_general = np.array(general[0]) * 2 - np.array(general[1])
    best, best_t = gain_first.sum(), 0.0
    for t in np.unique(np.quantile(conf, np.linspace(0.02, 0.98, 49))):
        total = np.where(conf < t, gain_general, gain_first).sum()
        if total > best:
            best, best_t = total, float(t)
    return best_t


def per_caption_nouns(texts: Sequence[str], refs: Sequence[Sequence[str]]) -> tuple[list[int], list[int]]:
    """(right, named) noun counts per caption against its references."""
    from .metrics import noun_sets

    hyp, ref_nouns = noun_sets(texts, refs)
    right = [len(h & set().union(*rs)) for h, rs in zip(hyp, ref_nouns)]
    return right, [len(h) for h in hyp]


def calibrate_folder(folder, loaded, feats: Sequence[np.ndarray], refs: Sequence[Sequence[str]],
                     train: tuple[Sequence[np.ndarray], Sequence[Sequence[str]]] | None = None,
                     report=lambda msg: None) -> dict:
    """Fit a model folder's calibration on validation segments (decoded as the model decodes)
    and store it in its config.json; returns what was stored. With `train` (training
    segments and their references), a noun witness is fitted on them first and saved in
    the folder, and the calibration is the witness's (`tune`)."""
    from .modelfile import update_meta

    decoding = loaded.meta.get("decoding", {})
    kw = dict(beam=int(decoding.get("beam", 5)), length_penalty=float(decoding.get("length_penalty", 0.7)))
    if train is not None:
        train_feats, train_refs = train
        try:
            noun_witness.fit(noun_witness.pooled(train_feats).numpy(), noun_witness.named_nouns(train_refs),
                             report=report).save(folder)
            loaded.witness = noun_witness.NounWitness.load(folder)  # as stored (float16), as decoding will see it
        except KvcapError as exc:  # too little data: decode without one (a stale one would not fit)
            report(str(exc))
            loaded.witness = None
            (Path(folder) / noun_witness.FILE).unlink(missing_ok=True)
    if loaded.witness is not None:
        cal = tune(loaded.model, loaded.vocab, loaded.witness, feats, refs, **kw)
    else:
        cal = calibrate(loaded.model, loaded.vocab, feats, refs, **kw)
    meta = {**cal.to_meta(), "fitted_on": f"validation, {len(feats)} examples"}
    update_meta(folder, {"confidence": meta})
    return meta


WEIGHTS = (0.4, 0.8, 1.6, 3.0)
BONUSES = (1.0, 2.0, 3.0, 4.0, 6.0)


def tune(model, vocab, witness, feats: Sequence[np.ndarray], refs: Sequence[Sequence[str]], *, beam: int = 5,
         length_penalty: float = 0.7) -> Calibration:
    """The witness's weight and own-style bonus that maximise CIDEr-D + 2 x noun precision on
    validation (a true caption matters most: grounding counts double), confidence fitted on
    the chosen captions' witness support, and the say-less threshold."""
    from .korean import nouns_many
    from .metrics import evaluate, grounding

    own, general = both_styles(model, vocab, list(feats), beam=beam, length_penalty=length_penalty)
    probs = witness_probs(witness, model, feats)
    keys = list(range(len(feats)))
    best, best_value = None, -1.0
    for weight in WEIGHTS:
        for bonus in BONUSES:
            cal = Calibration(tables={"support": ([0.0, 1.0], [0.0, 1.0])}, weight=weight, bonus=bonus,
                              witness=witness)
            hyps = {k: c.text for k, (c, _) in zip(keys, cal.choose(own, general, probs))}
            value = (evaluate(hyps, dict(zip(keys, refs)))["CIDEr-D"]
                     + 2 * grounding(hyps, dict(zip(keys, refs)))["noun_precision"])
            if value > best_value:
                best, best_value = cal, value
    texts = [c.text for c, _ in best.choose(own, general, probs)]
    right, named = per_caption_nouns(texts, refs)
    support = [witness.support(n, p) for n, p in zip(nouns_many(texts), probs)]
    best.tables = fit({"support": support}, {"support": right}, {"support": named}).tables
    if any(general):  # say less: under which confidence the general style alone does better
        alone = Calibration(tables=best.tables, weight=best.weight, witness=witness)
        plain = per_caption_nouns([c.text for c, _ in alone.choose(general, [[] for _ in general], probs)], refs)
        tuned = say_less_threshold(np.array([best.value(s, "support") for s in support]), (right, named), plain)
        best.threshold = max(tuned, SAY_LESS_BELOW)
    return best


def calibrate(model, vocab, feats: Sequence[np.ndarray], refs: Sequence[Sequence[str]], *, beam: int = 5,
              length_penalty: float = 0.7) -> Calibration:
    """Fit the calibration (and the say-less threshold) on validation segments and references."""
    styles = ["auto"] + (["general"] if model.config.general else [])
    scores, right, named = {}, {}, {}
    for style in styles:
        caps = generate(model, vocab, list(feats), beam=beam, length_penalty=length_penalty,
                        style=None if style == "auto" else style)
        scores[style] = [c.score for c in caps]
        right[style], named[style] = per_caption_nouns([c.text for c in caps], refs)
    return fit(scores, right, named)


def witness_probs(witness, model, segments: Sequence[np.ndarray]) -> np.ndarray:
    """What the noun witness gives each noun per segment, animals backed by the encoder's own
    ImageNet classifier (sight.backed)."""
    return sight.backed(witness, witness.probs(noun_witness.pooled(segments)), class_probs(model, segments))


def both_styles(model, vocab, segments: Sequence[np.ndarray], ban: Sequence[Sequence[int]] | None = None,
                **kw) -> tuple[list[list[Caption]], list[list[Caption]]]:
    """Every beam hypothesis per segment in the model's own style and in its general style
    (empty pools for a model without one), searched side by side in one batch; `ban`: per
    segment, tokens never to write there."""
    if not model.config.general:
        return candidates(model, vocab, segments, ban=ban, **kw), [[] for _ in segments]
    own, general = [], []
    for s in range(0, len(segments), 16):  # 16 segments twice: one batch of 32
        part = list(segments[s : s + 16])
        part_ban = list(ban[s : s + 16]) * 2 if ban else None
        pools = candidates(model, vocab, part + part, style=[None] * len(part) + ["general"] * len(part),
                           ban=part_ban, **kw)
        own += pools[: len(part)]
        general += pools[len(part) :]
    return own, general

