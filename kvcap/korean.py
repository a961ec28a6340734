"""Korean text: morpheme tokens with word boundaries, the vocabulary, and the repair pass.

Captions are modelled as Kiwi morphemes. A token is ``form/TAG`` with a leading ``▁``
when a space precedes it in the sentence, so the model also decides the spacing and
``Kiwi.join`` rebuilds the exact surface form ('놀이집' stays one word, '서 있다' gets
its space, 을/를 agree with the noun before them).

The repair pass fixes known broken surface forms in generated text (the student
project's '…에서 있다' for '…에 서 있다', glued auxiliaries '앉아있다', mismatched
particles '사람를') by editing the string at the exact places Kiwi points to, so the rest
of a correct sentence is never touched.
"""
from __future__ import annotations

import functools
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

SPACE = "▁"
PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)


@functools.lru_cache(maxsize=1)
def kiwi():
    """The process-wide Kiwi analyser (it holds ~0.5 GB: load it once)."""
    from kiwipiepy import Kiwi

    k = Kiwi()
    k.join([("가", "VV", False), ("다", "EF", False)])  # its first join builds tables (~2 s): pay it at load
    return k


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _tokens_of(text: str, analysed) -> list[str]:
    out = []
    prev_start = -1
    for t in analysed:
        # a morpheme sharing its first character with the one before ('된' = 되 + ᆫ) is no new word
        space = t.start > 0 and text[t.start - 1] == " " and t.start > prev_start
        prev_start = t.start
        out.append(f"{SPACE if space else ''}{t.form}/{t.tag}")
    return out


def tokenize(text: str) -> list[str]:
    """'어린 소녀가 …' -> ['어리/VA', 'ᆫ/ETM', '▁소녀/NNG', '가/JKS', …]."""
    text = normalize(text)
    return _tokens_of(text, kiwi().tokenize(text))


def tokenize_many(texts: Sequence[str]) -> list[list[str]]:
    """Batch tokenisation (Kiwi analyses a list faster than one call per sentence)."""
    norm = [normalize(t) for t in texts]
    return [_tokens_of(t, a) for t, a in zip(norm, kiwi().tokenize(norm))]


def split_token(token: str) -> tuple[str, str, bool]:
    space = token.startswith(SPACE)
    body = token[1:] if space else token
    form, _, tag = body.rpartition("/")
    return form, tag, space


def detokenize(tokens: Iterable[str]) -> str:
    """Morpheme tokens back to a sentence with Kiwi.join; special tokens are dropped."""
    morphs = [split_token(t) for t in tokens if t not in SPECIALS]
    morphs = [m for m in morphs if m[0] and m[1]]
    if not morphs:
        return ""
    first = morphs[0]
    morphs[0] = (first[0], first[1], False)
    try:
        text = kiwi().join(morphs)
    except Exception:  # join rejects a few impossible tag sequences; never lose the caption
        text = "".join((" " if s else "") + f for f, _, s in morphs)
    return normalize(text)


STOP_LEMMAS = {"있다", "하다", "되다", "없다", "이다", "않다"}


def lemmas(text: str) -> list[str]:
    """Content-word lemmas for search: '걷는', '걸어가고', '걷고 있다' all give '걷다'.

    Compound verbs are split ('걸어가다' = 걷다 + auxiliary 가다), auxiliaries and light verbs
    (있다, 하다) are dropped: they match every caption and find nothing.
    """
    return _lemmas_of(kiwi().tokenize(normalize(text), split_complex=True))


def lemmas_many(texts: Sequence[str]) -> list[list[str]]:
    analysed = kiwi().tokenize([normalize(t) for t in texts], split_complex=True)
    return [_lemmas_of(a) for a in analysed]


def _lemmas_of(tokens) -> list[str]:
    out = []
    for t in tokens:
        if t.tag.startswith(("NN", "NP", "NR", "SL", "SN", "XR")):
            out.append(t.form)
        elif t.tag.startswith(("VV", "VA")):
            lemma = t.form + "다"
            if lemma not in STOP_LEMMAS:
                out.append(lemma)
    return out


# nouns that place or frame a thing rather than name one: '위', '앞', '배경' are true of any picture
RELATIONAL_NOUNS = {
    "위", "아래", "앞", "뒤", "옆", "안", "속", "밖", "가운데", "한가운데", "사이", "근처", "주변", "주위", "쪽", "곳",
    "중", "모습", "사진", "장면", "배경", "바탕", "한쪽", "맞은편", "건너편", "너머", "가장자리", "부분", "정면", "모양",
    "위쪽", "아래쪽", "앞쪽", "뒤쪽", "안쪽", "바깥", "바깥쪽", "하나", "무언가", "뭔가", "화면", "카메라", "이쪽",
}
SELF_PLACES = {"위", "아래", "안", "속"}  # 'X 위에 X가': nothing is on, under or in itself
BARE_PLACES = {"에", "에서"}  # 'X에 X가' ('흰 벽에 흰 벽이 있다'): nor at itself
# surface variants of one thing, counted as one noun when grounding is scored
NOUN_SYNONYMS = {
    "남성": "남자", "여성": "여자", "사내": "남자", "아이": "어린이", "꼬마": "어린이", "애": "어린이", "아기": "어린이",
    "강아지": "개", "자동차": "차", "승용차": "차", "차량": "차", "자전거": "자전거", "휴대폰": "전화기",
    "스마트폰": "전화기", "핸드폰": "전화기", "건물": "건물", "빌딩": "건물", "바닷가": "해변", "사람들": "사람",
}


def nouns_many(texts: Sequence[str]) -> list[set[str]]:
    """The things each sentence names: Kiwi's common and proper nouns (NNG, NNP), variants
    folded (NOUN_SYNONYMS), relational nouns ('위', '옆', '배경') left out."""
    return [nouns_of(toks) for toks in kiwi().tokenize([normalize(t) for t in texts])]


def analyse(text: str) -> list:
    """Kiwi's tokens of one sentence, for `nouns_of` and `sentence_problems` to share."""
    return kiwi().tokenize(normalize(text))


def nouns_of(toks) -> set[str]:
    """`nouns_many` of one sentence already analysed (`analyse`)."""
    return {n for t in toks if (n := noun_name(t.form, t.tag))}


def noun_name(form: str, tag: str) -> str | None:
    """The thing a morpheme names for grounding (variants folded), or None: not a noun, or
    a relational one."""
    name = NOUN_SYNONYMS.get(form, form)
    return name if tag in ("NNG", "NNP") and name not in RELATIONAL_NOUNS else None


# ----------------------------------------------------------------------------- vocabulary


@dataclass
class Vocab:
    tokens: list[str]

    def __post_init__(self):
        self.index = {t: i for i, t in enumerate(self.tokens)}

    pad_id = 0
    bos_id = 1
    eos_id = 2
    unk_id = 3

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def build(cls, tokenized: Iterable[Sequence[str]], min_count: int = 3) -> "Vocab":
        counts = Counter(t for sent in tokenized for t in sent)
        kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
        return cls(list(SPECIALS) + kept)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.index.get(t, self.unk_id) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        out = []
        for i in ids:
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            out.append(self.tokens[i])
        return out

    def noun_ids(self, names: Iterable[str]) -> list[int]:
        """Ids of the noun tokens ('▁눈/NNG', '눈/NNG') that name one of `names` (as
        `noun_name` folds them: '자동차' names 차)."""
        names = set(names)
        out = []
        for i, t in enumerate(self.tokens):
            form, _, tag = t.rpartition("/")
            if form and noun_name(form.lstrip("▁"), tag) in names:
                out.append(i)
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"tokens": self.tokens}, ensure_ascii=False, indent=0), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        tokens = data["tokens"]
        if list(tokens[:4]) != list(SPECIALS) or not all(isinstance(t, str) for t in tokens):
            raise ValueError(f"{path}: not a kvcap vocabulary")
        return cls(list(tokens))


# ----------------------------------------------------------------------------- repair

_HANGUL_BASE, _HANGUL_END = 0xAC00, 0xD7A3


def _final_consonant(ch: str) -> int | None:
    """Index of the final consonant of a Hangul syllable (0 = none); None for non-Hangul."""
    code = ord(ch)
    if not _HANGUL_BASE <= code <= _HANGUL_END:
        return None
    return (code - _HANGUL_BASE) % 28


# particle pairs: (after a final consonant, after a vowel)
_PARTICLES = {"JKO": ("을", "를"), "JKS": ("이", "가"), "JX": ("은", "는"), "JC": ("과", "와"), "JKB": ("과", "와")}


def repair(text: str) -> str:
    """Fix known broken surface forms; a correct sentence comes back unchanged."""
    text = normalize(text)
    if not text:
        return text
    toks = kiwi().tokenize(text)
    inserts: set[int] = set()  # char offsets where a space goes
    replace: dict[int, str] = {}  # char offset -> corrected particle
    for i, t in enumerate(toks):
        nxt = toks[i + 1 : i + 4]
        # '…에서 있다' -> '…에 서 있다': Kiwi reads it as 에 + 서(다) + 어 + 있(auxiliary)
        if (t.tag == "JKB" and t.form == "에" and len(nxt) == 3
                and (nxt[0].form, nxt[0].tag) == ("서", "VV") and nxt[1].tag == "EC"
                and (nxt[2].form, nxt[2].tag) == ("있", "VX")
                and nxt[0].start == t.start + t.len):
            inserts.add(nxt[0].start)
            inserts.add(nxt[2].start)
        # auxiliary 있다 glued to its verb: '앉아있다', '보고있다' -> '앉아 있다', '보고 있다'
        if (t.form == "있" and t.tag == "VX" and i > 0 and toks[i - 1].tag == "EC"
                and t.start > 0 and text[t.start - 1] != " "):
            inserts.add(t.start)
        # particle that does not agree with the syllable before it: '사람를' -> '사람을'
        pair = _PARTICLES.get(t.tag)
        if pair and t.form in pair and t.len == 1 and t.start > 0 and text[t.start - 1] != " ":
            final = _final_consonant(text[t.start - 1])
            if final is not None:
                want = pair[1] if final == 0 else pair[0]
                if t.tag == "JKB" and t.form not in ("과", "와"):
                    continue
                if want != t.form and text[t.start] == t.form:
                    replace[t.start] = want
    if not inserts and not replace:
        return text
    out = []
    for i, ch in enumerate(text):
        if i in inserts and (i == 0 or text[i - 1] != " "):
            out.append(" ")
        out.append(replace.get(i, ch))
    return normalize("".join(out))


# subjects that are alive, and predicates only things take ('…이 놓여 있다', '…이 주차되어 있다'):
# mixing Flickr8k's people with koscenes' object scenes makes '남자가 탁자 위에 놓여 있다'
ANIMATE = {
    "남자", "여자", "사람", "소년", "소녀", "아이", "어린이", "아기", "남성", "여성", "노인", "할머니", "할아버지",
    "학생", "선수", "개", "강아지", "고양이", "새", "말", "소", "양", "원숭이", "곰", "사자", "호랑이", "코끼리",
    "기린", "얼룩말", "오리", "닭", "앵무새", "엄마", "아빠", "가족", "커플", "군인", "경찰", "요리사", "남녀",
}
THING_VERBS = {"놓이", "쌓이", "꽂히", "담기", "진열", "주차", "전시", "펼쳐지", "세워지"}


def sentence_problems(text: str, toks: list | None = None) -> list[str]:
    """What is wrong with a generated sentence as a description, by Kiwi's analysis.

    - "no subject": nothing marked as subject ('흰 바탕 위에 앉아 있다.');
    - "thing verb with a living subject": '남자가 … 놓여 있다', '강아지가 … 주차되어 있다';
    - "subject on or in itself": '탁자 위에 탁자가 놓여 있다', '흰 벽에 흰 벽이 있다', also as part
      of a joined subject ('탁자 위에 탁자와 화분이 놓여 있다'); beside or in front of one of its
      own kind is possible: '개 옆에 개가 있다' passes;
    - "said twice": '자전거를 탄 남자가 자전거를 타고 있다', '흰 옷을 입은 여자가 검은 옷을 입고
      있다' (see `_said_twice`).
    An empty list means none was found. Used to pass over such beam hypotheses. `toks`:
    `analyse(text)`, where the caller has it already.
    """
    toks = analyse(text) if toks is None else toks
    problems = []
    subjects = []
    subject_at = 0  # where the last subject stands
    for i, t in enumerate(toks):
        if t.tag == "JKS" or (t.tag == "JX" and t.form in ("은", "는")):
            j = i - 1
            while j >= 0 and toks[j].tag in ("XSN",):  # '사람들이'
                j -= 1
            if j >= 0 and toks[j].tag.startswith(("NN", "NP")):
                subjects.append(toks[j].form)
                subject_at = j
                group = {toks[j].form}  # with what it is joined to: '탁자와 화분이'
                while j >= 2 and toks[j - 1].tag == "JC" and toks[j - 2].tag.startswith("NN"):
                    j -= 2
                    group.add(toks[j].form)
    if not subjects:
        problems.append("no subject")
    places = {toks[i - 1].form for i, t in enumerate(toks)
              if i and t.form in SELF_PLACES and t.tag == "NNG" and toks[i - 1].tag.startswith("NN")}
    # only before the subject: '손바닥이 인형의 손바닥에 맞닿아 있다' is sound
    places |= {toks[i - 1].form for i, t in enumerate(toks[:subject_at])
               if i and t.form in BARE_PLACES and t.tag == "JKB" and toks[i - 1].tag.startswith("NN")
               and toks[i - 1].form not in RELATIONAL_NOUNS}
    if subjects and group & places:
        problems.append("subject on or in itself")
    # the main predicate is the last verb ('서 있다' in '물건이 놓인 탁자 옆에 남자가 서 있다')
    verbs = []
    for i, t in enumerate(toks):
        if t.tag.startswith("VV"):
            verbs.append(t.form)
        elif t.tag == "NNG" and i + 1 < len(toks) and toks[i + 1].tag == "XSV":
            # a noun verb is a thing's only in the passive: '전시되어 있다', but '남자가 전시하고 있다'
            verbs.append(t.form if toks[i + 1].form == "되" else t.form + toks[i + 1].form)
    if subjects and verbs and subjects[-1] in ANIMATE and verbs[-1] in THING_VERBS:
        problems.append("thing verb with a living subject")
    if subjects and _said_twice(toks, subject_at, len(subjects)):
        problems.append("said twice")
    return problems


def _said_twice(toks, subject_at: int, n_subjects: int) -> bool:
    """The subject's own modifier repeated as its predicate ('자전거를 탄 남자가 자전거를 타고
    있다'; with another colour it contradicts itself: '흰 옷을 입은 여자가 검은 옷을 입고 있다'),
    or one place named twice for a lone subject ('벽 앞에서 … 남자가 벽 앞에 서 있다').

    Two people may each wear a shirt ('흰 셔츠를 입은 남자가 검은 셔츠를 입은 남자와 …'): the
    second must be a predicate after the subject, not another modifier, and places count
    only with one subject. Human captions trip this 3 times in 17,396.
    """
    modifiers, predicates, places = set(), set(), Counter()
    for i, t in enumerate(toks):
        if not t.tag.startswith("NN") or t.form in RELATIONAL_NOUNS:
            continue
        v = i + 1 + (i + 1 < len(toks) and toks[i + 1].tag == "JKO")  # '모자를 쓴' or '모자 쓴'
        if v + 1 < len(toks) and toks[v].tag.startswith("VV"):
            said = (t.form, toks[v].form)
            if toks[v + 1].tag == "ETM" and i < subject_at:
                modifiers.add(said)
            elif toks[v + 1].tag != "ETM" and i > subject_at:
                predicates.add(said)
        if (i + 2 < len(toks) and toks[i + 1].tag == "NNG" and toks[i + 1].form in RELATIONAL_NOUNS
                and toks[i + 2].tag == "JKB"):  # '벽 앞에'
            places[t.form, toks[i + 1].form] += 1
    return bool(modifiers & predicates) or (n_subjects == 1 and max(places.values(), default=0) > 1)


def finish_sentence(text: str) -> str:
    """Generated captions end with a full stop, like the training captions."""
    text = normalize(text)
    if text and text[-1] not in ".!?":
        text += "."
    return text
