"""Features -> Korean sentences: pad segments, search, rebuild the text, repair it."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from . import korean, sight
from .decoding import beam_search_nbest
from .korean import Vocab
from .models import CaptionModel


@dataclass
class Caption:
    text: str
    score: float
    tokens: list[str]
    problems: list[str] = field(default_factory=list)  # korean.sentence_problems of the text kept
    rank: float = 0.0  # the beam's length-penalised log probability (for choosing among hypotheses)
    nouns: set[str] | None = None  # korean.nouns_many of the text, where the checks found them


def pad_segments(feats: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of (T_i, R, D) arrays -> (B, T_max, R, D) float32 and a (B, T_max) frame mask."""
    t_max = max(f.shape[0] for f in feats)
    r, d = feats[0].shape[1:]
    out = np.zeros((len(feats), t_max, r, d), np.float32)
    mask = np.zeros((len(feats), t_max), bool)
    for i, f in enumerate(feats):
        out[i, : f.shape[0]] = f
        mask[i, : f.shape[0]] = True
    return torch.from_numpy(out), torch.from_numpy(mask)


def generate(model: CaptionModel, vocab: Vocab, feats: Sequence[np.ndarray], *, beam: int = 3,
             length_penalty: float = 0.7, no_repeat_ngram: int = 4, batch_size: int = 32,
             repair: bool = True, check: bool = True, style: str | Sequence | None = None) -> list[Caption]:
    """One caption per segment; each segment is a (T, R, D) array of frame features.

    With `check`, the best beam hypothesis that `korean.sentence_problems` finds nothing
    wrong with is kept (no subject, a living subject with a thing's verb); if every
    hypothesis has a problem, the best one is kept with its problems listed. `style`
    names a caption style of the model ("general": short and general), else the model
    picks one per segment; a list gives one per segment (None: the model's pick).
    """
    return [_choose(pool) for pool in _pools(model, vocab, feats, beam=beam, length_penalty=length_penalty,
                                             no_repeat_ngram=no_repeat_ngram, batch_size=batch_size,
                                             repair=repair, check=check, style=style)]


def candidates(model: CaptionModel, vocab: Vocab, feats: Sequence[np.ndarray], **kw) -> list[list[Caption]]:
    """Every finished beam hypothesis of each segment, best rank first, problems listed
    (the arguments of `generate`)."""
    return [list(pool) for pool in _pools(model, vocab, feats, **kw)]


def _pools(model: CaptionModel, vocab: Vocab, feats: Sequence[np.ndarray], *, beam: int = 3,
           length_penalty: float = 0.7, no_repeat_ngram: int = 4, batch_size: int = 32,
           repair: bool = True, check: bool = True, style: str | Sequence | None = None,
           ban: Sequence[Sequence[int]] | None = None):
    """Per segment, a generator of its hypotheses as Captions (made lazily: most often only
    the first is needed). `ban`: per segment, token ids never to write there."""
    banned = (vocab.pad_id, vocab.bos_id, vocab.unk_id)
    for s in range(0, len(feats), batch_size):
        x, mask = pad_segments(feats[s : s + batch_size])
        styles = _style_ids(model, style, s, x.size(0))
        pools = beam_search_nbest(model, x, mask, bos_id=vocab.bos_id, eos_id=vocab.eos_id, banned_ids=banned,
                                  beam=beam, max_len=model.config.max_len, length_penalty=length_penalty,
                                  no_repeat_ngram=no_repeat_ngram, style=styles,
                                  item_banned=ban[s : s + batch_size] if ban else None)
        probs = _class_probs(model, x, mask) if check else [None] * len(pools)  # for sight.problems
        for pool, p in zip(pools, probs):
            yield (_caption(h, vocab, repair, check, p) for h in pool)


def _style_ids(model: CaptionModel, style, start: int, n: int) -> torch.Tensor | None:
    """Style ids of segments start..start+n: `style` is one name for all, or a name (None: the
    model's own choice, -1) per segment; None if every segment is the model's choice."""
    if style is None:
        return None
    names = [style] * n if isinstance(style, str) else list(style[start : start + n])
    if all(name is None for name in names):
        return None
    return torch.tensor([-1 if name is None else model.config.style_id(name) for name in names], dtype=torch.long)


def class_probs(model: CaptionModel, feats: Sequence[np.ndarray], batch_size: int = 32) -> list:
    """The ImageNet class probabilities (1000,) of each segment (None each for a model without
    the classifier head)."""
    out: list = []
    for s in range(0, len(feats), batch_size):
        out += _class_probs(model, *pad_segments(feats[s : s + batch_size]))
    return out


def _class_probs(model: CaptionModel, x: torch.Tensor, mask: torch.Tensor) -> list:
    if not getattr(model.config, "classes", 0):
        return [None] * x.size(0)
    with torch.no_grad():
        return list(model.class_probs(x, mask).numpy())


def _caption(h, vocab: Vocab, repair: bool, check: bool, probs=None) -> Caption:
    tokens = vocab.decode(h.ids)
    text, nouns, checked = _korean(tuple(tokens), repair, check)
    problems = list(checked)  # the caption's own copies: the cache keeps frozen ones
    if nouns is not None:
        nouns = set(nouns)
        problems += sight.problems(text, probs, nouns)
    return Caption(text, h.score, tokens, problems, h.rank, nouns)


@functools.lru_cache(maxsize=8192)
def _korean(tokens: tuple[str, ...], repair: bool, check: bool) -> tuple[str, frozenset | None, tuple[str, ...]]:
    """The sentence of some morphemes, its nouns and its sentence problems (None and () without
    `check`). Cached: the beams of both styles, and a segment decoded again around a doubted
    noun, write many of the same hypotheses, and the Korean work is a quarter of captioning."""
    text = korean.detokenize(tokens)
    if repair:
        text = korean.repair(text)
    text = korean.finish_sentence(text)
    if not (check and text):
        return text, None, ()
    toks = korean.analyse(text)
    return text, frozenset(korean.nouns_of(toks)), tuple(korean.sentence_problems(text, toks))


def _choose(candidates) -> Caption:
    """The first candidate without problems (made lazily: most often the first), else the first."""
    first = None
    for c in candidates:
        if not c.problems:
            return c
        first = first or c
    return first
