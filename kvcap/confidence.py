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
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .captions import Caption, generate


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


@dataclass
class Calibration:
    tables: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)  # style -> (score, precision)
    threshold: float = 0.0  # below this confidence, the general caption is used

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
            return cls(tables, float(data.get("threshold", 0.0)))
        except (KeyError, TypeError, ValueError, AttributeError):
            return cls()

    def to_meta(self) -> dict:
        return {"tables": {k: {"score": [round(x, 5) for x in a], "precision": [round(y, 5) for y in b]}
                           for k, (a, b) in self.tables.items()},
                "threshold": round(self.threshold, 5)}

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
        caps = generate(model, vocab, segments, beam=beam, length_penalty=length_penalty)
        return self.say_less(caps, lambda idx, style: generate(
            model, vocab, [segments[i] for i in idx], beam=beam, length_penalty=length_penalty, style=style))


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
        gain_auto = np.array(right["auto"]) * 2 - np.array(named["auto"])  # right - wrong
        gain_gen = np.array(right["general"]) * 2 - np.array(named["general"])
        best, best_t = gain_auto.sum(), 0.0
        for t in np.unique(np.quantile(conf, np.linspace(0.02, 0.98, 49))):
            total = np.where(conf < t, gain_gen, gain_auto).sum()
            if total > best:
                best, best_t = total, float(t)
        cal.threshold = best_t
    return cal


def per_caption_nouns(texts: Sequence[str], refs: Sequence[Sequence[str]]) -> tuple[list[int], list[int]]:
    """(right, named) noun counts per caption against its references."""
    from .metrics import noun_sets

    hyp, ref_nouns = noun_sets(texts, refs)
    right = [len(h & set().union(*rs)) for h, rs in zip(hyp, ref_nouns)]
    return right, [len(h) for h in hyp]


def calibrate_folder(folder, loaded, feats: Sequence[np.ndarray], refs: Sequence[Sequence[str]]) -> dict:
    """Fit a model folder's calibration on validation segments (decoded as the model decodes)
    and store it in its config.json; returns what was stored."""
    from .modelfile import update_meta

    decoding = loaded.meta.get("decoding", {})
    cal = calibrate(loaded.model, loaded.vocab, feats, refs, beam=int(decoding.get("beam", 5)),
                    length_penalty=float(decoding.get("length_penalty", 0.7)))
    meta = {**cal.to_meta(), "fitted_on": f"validation, {len(feats)} examples"}
    update_meta(folder, {"confidence": meta})
    return meta


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
