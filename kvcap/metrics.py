"""Caption metrics on Kiwi morphemes, in pure Python (no Java).

Every metric takes `hyps: {id: str}` and `refs: {id: [str, ...]}` of texts already
tokenised into space-separated morphemes (see `korean_tokens`), the same input
pycocoevalcap's scorers take; BLEU and CIDEr-D agree with those scorers to 1e-6.

- BLEU-1..4: corpus BLEU, "closest" reference length (as pycocoevalcap).
- CIDEr-D: sigma 6, clipped counts, idf from the references of the evaluated set, x10.
- ROUGE-L: LCS F-measure, beta 1.2, best reference per segment (as pycocoevalcap).
- METEOR: exact matching on morphemes. Korean has no WordNet synonyms or English
  stemmer; matching on morphemes already matches inflected forms ('걷는' and '걷고'
  share '걷'), so the stem stage is implicit. Parameters alpha 0.9, beta 3, gamma 0.5
  (Lavie & Agarwal 2007); fragmentation from the fewest-chunks greedy alignment.
- distinct: share of distinct captions; a model that says one sentence everywhere
  scores near 0 here and poorly on CIDEr-D.

Grounding (`grounding`, CHAIR-style, Rohrbach et al. 2018, on Kiwi nouns rather than
COCO's 80 object words): does a caption name things that are in the picture?
- noun_precision: of the nouns the captions name, the share that some reference of the
  same item names (1 - the hallucination rate, counted per noun over the whole set);
- noun_recall: of the nouns at least two references of an item agree on, the share the
  caption names;
- noun_hit: the share of items whose caption names at least one such agreed noun.
Nouns are sets per sentence (`korean.nouns_many`: NNG/NNP, a few variants folded,
relational nouns such as '위', '옆', '배경' left out). Items whose caption names no noun add
nothing to precision; items with no agreed noun add nothing to recall or hit.
`human_grounding` scores each reference against the other references of its item, the
agreement people reach.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Mapping, Sequence

Hyps = Mapping[object, str]
Refs = Mapping[object, Sequence[str]]


def korean_tokens(texts: Sequence[str]) -> list[str]:
    """Sentences -> space-joined morpheme forms, punctuation dropped."""
    from .korean import kiwi, normalize

    out = []
    for toks in kiwi().tokenize([normalize(t) for t in texts]):
        out.append(" ".join(t.form for t in toks if not t.tag.startswith(("SF", "SP", "SS", "SE", "SO", "SW"))))
    return out


def _ngrams(words: Sequence[str], n: int) -> Counter:
    c: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            c[tuple(words[i : i + k])] += 1
    return c


def bleu(hyps: Hyps, refs: Refs, n: int = 4) -> list[float]:
    tiny, small = 1e-15, 1e-9
    guess, correct = [0] * n, [0] * n
    testlen = reflen = 0
    for key, hyp in hyps.items():
        h = hyp.split()
        rs = [r.split() for r in refs[key]]
        maxref: Counter = Counter()
        for r in rs:
            for g, c in _ngrams(r, n).items():
                maxref[g] = max(maxref[g], c)
        testlen += len(h)
        reflen += min((abs(len(r) - len(h)), len(r)) for r in rs)[1]
        for g, c in _ngrams(h, n).items():
            correct[len(g) - 1] += min(maxref.get(g, 0), c)
        for k in range(n):
            guess[k] += max(0, len(h) - k)
    scores, prod = [], 1.0
    for k in range(n):
        prod *= (correct[k] + tiny) / (guess[k] + small)
        scores.append(prod ** (1.0 / (k + 1)))
    ratio = (testlen + tiny) / (reflen + small)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


class CiderD:
    """CIDEr-D of hypotheses against fixed references: `refs` holds one list of tokenised
    references per item, and the idf comes from them. Fine-tuning (scst.py) scores many
    samples against the training references with one of these."""

    def __init__(self, refs: Sequence[Sequence[Sequence]], n: int = 4, sigma: float = 6.0):
        self.n, self.sigma = n, sigma
        counts = [[_ngrams(r, n) for r in item] for item in refs]
        self.df: Counter = Counter()
        for item in counts:
            self.df.update({g for c in item for g in c})
        self.log_n = math.log(float(max(1, len(refs))))
        self.refs = [[self._vec(c) for c in item] for item in counts]

    def _vec(self, counts: Counter):
        v = [dict() for _ in range(self.n)]
        norm = [0.0] * self.n
        length = 0
        for g, tf in counts.items():
            i = len(g) - 1
            w = float(tf) * (self.log_n - math.log(max(1.0, self.df[g])))
            v[i][g] = w
            norm[i] += w * w
            if i == 1:  # pycocoevalcap measures length in bigrams; kept for comparability
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    def score(self, item: int, words: Sequence) -> float:
        """CIDEr-D (x10) of one hypothesis (a token sequence) against item `item`'s references."""
        hv, hn, hl = self._vec(_ngrams(words, self.n))
        total = [0.0] * self.n
        for rv, rn, rl in self.refs[item]:
            delta = float(hl - rl)
            for i in range(self.n):
                val = sum(min(w, rv[i].get(g, 0.0)) * rv[i].get(g, 0.0) for g, w in hv[i].items())
                if hn[i] != 0 and rn[i] != 0:
                    val /= hn[i] * rn[i]
                total[i] += val * math.e ** (-(delta**2) / (2 * self.sigma**2))
        return sum(total) / self.n / len(self.refs[item]) * 10.0


def cider_d(hyps: Hyps, refs: Refs, n: int = 4, sigma: float = 6.0) -> tuple[float, dict]:
    keys = list(hyps)
    scorer = CiderD([[r.split() for r in refs[k]] for k in keys], n, sigma)
    per = {k: scorer.score(i, hyps[k].split()) for i, k in enumerate(keys)}
    return (sum(per.values()) / len(per) if per else 0.0), per


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hyps: Hyps, refs: Refs, beta: float = 1.2) -> float:
    scores = []
    for k, hyp in hyps.items():
        h = hyp.split()
        precs, recs = [], []
        for r in refs[k]:
            rw = r.split()
            lcs = _lcs(rw, h)
            precs.append(lcs / len(h) if h else 0.0)
            recs.append(lcs / len(rw) if rw else 0.0)
        p, r = max(precs), max(recs)
        scores.append(((1 + beta**2) * p * r) / (r + beta**2 * p) if p and r else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


def _align(h: Sequence[str], r: Sequence[str]) -> tuple[int, int]:
    """(matches, chunks) of a one-to-one exact alignment that prefers contiguous runs."""
    positions = defaultdict(list)
    for j, w in enumerate(r):
        positions[w].append(j)
    used: set[int] = set()
    matches = chunks = 0
    last = -2
    for w in h:
        free = [j for j in positions.get(w, []) if j not in used]
        if not free:
            last = -2
            continue
        j = last + 1 if last + 1 in free else free[0]
        if j != last + 1:
            chunks += 1
        used.add(j)
        matches += 1
        last = j
    return matches, chunks


def meteor(hyps: Hyps, refs: Refs, alpha: float = 0.9, beta: float = 3.0, gamma: float = 0.5) -> float:
    scores = []
    for k, hyp in hyps.items():
        h = hyp.split()
        best = 0.0
        for ref in refs[k]:
            r = ref.split()
            m, chunks = _align(h, r)
            if m == 0:
                continue
            p, rc = m / len(h), m / len(r)
            fmean = p * rc / (alpha * p + (1 - alpha) * rc)
            best = max(best, fmean * (1 - gamma * (chunks / m) ** beta))
        scores.append(best)
    return sum(scores) / len(scores) if scores else 0.0


def distinct(texts: Sequence[str]) -> float:
    return len(set(texts)) / len(texts) if texts else 0.0


def per_item(analyse, groups: Sequence[Sequence[str]]) -> list[list]:
    """`analyse` (a batch function over sentences) run once over every group's sentences,
    its results handed back group by group."""
    flat = iter(analyse([t for g in groups for t in g]))
    return [[next(flat) for _ in g] for g in groups]


def noun_sets(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> tuple[list[set], list[list[set]]]:
    """Each caption's nouns, and each of its references' (korean.nouns_many)."""
    from .korean import nouns_many

    return nouns_many(list(hyps)), per_item(nouns_many, refs)


def grounding(hyp_texts: Mapping[object, str], ref_texts: Mapping[object, Sequence[str]]) -> dict[str, float]:
    """noun_precision, noun_recall and noun_hit (see the module's docstring)."""
    keys = list(hyp_texts)
    hyp, refs = noun_sets([hyp_texts[k] for k in keys], [ref_texts[k] for k in keys])
    return _grounding(dict(zip(keys, hyp)), dict(zip(keys, refs)))


def _grounding(hyp: Mapping[object, set], refs: Mapping[object, Sequence[set]]) -> dict[str, float]:
    named = right = agreed = recalled = hit = with_agreed = 0
    for k, nouns in hyp.items():
        union = set().union(*refs[k]) if refs[k] else set()
        counts = Counter(n for r in refs[k] for n in r)
        need = min(2, len(refs[k]))
        agree = {n for n, c in counts.items() if c >= need}
        named += len(nouns)
        right += len(nouns & union)
        if agree:
            with_agreed += 1
            agreed += len(agree)
            recalled += len(nouns & agree)
            hit += bool(nouns & agree)
    return {"noun_precision": right / named if named else 0.0,
            "noun_recall": recalled / agreed if agreed else 0.0,
            "noun_hit": hit / with_agreed if with_agreed else 0.0}


def human_grounding(ref_texts: Mapping[object, Sequence[str]]) -> dict[str, float]:
    """Each reference held against the others of its item (items with 3+ references)."""
    keys = [k for k in ref_texts if len(ref_texts[k]) >= 3]
    nouns = dict(zip(keys, noun_sets([], [ref_texts[k] for k in keys])[1]))
    hyp, refs = {}, {}
    for k in keys:
        for j, own in enumerate(nouns[k]):
            hyp[(k, j)] = own
            refs[(k, j)] = nouns[k][:j] + nouns[k][j + 1 :]
    return _grounding(hyp, refs)


def evaluate(hyp_texts: Mapping[object, str], ref_texts: Mapping[object, Sequence[str]]) -> dict[str, float]:
    """All metrics from raw Korean sentences."""
    keys = list(hyp_texts)
    tok_h = dict(zip(keys, korean_tokens([hyp_texts[k] for k in keys])))
    tok_r = dict(zip(keys, per_item(korean_tokens, [ref_texts[k] for k in keys])))
    b = bleu(tok_h, tok_r)
    c, _ = cider_d(tok_h, tok_r)
    return {
        "BLEU-1": b[0], "BLEU-2": b[1], "BLEU-3": b[2], "BLEU-4": b[3],
        "METEOR": meteor(tok_h, tok_r), "ROUGE-L": rouge_l(tok_h, tok_r), "CIDEr-D": c,
        "distinct": distinct([hyp_texts[k] for k in keys]), "n": float(len(keys)),
    }
