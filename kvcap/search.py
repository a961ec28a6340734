"""Caption search: a SQLite FTS5 index of every caption, by Kiwi lemma, ranked with bm25.

`kvcap index DIR` reads the `*.json` results under DIR (what `kvcap caption` and
`kvcap batch` write) into `DIR/kvcap_index.sqlite`, incrementally: unchanged files are
skipped, changed ones re-read, deleted ones dropped.

Captions and queries are both reduced to lemmas ('걷는', '걸어가고', '걷고 있다' -> '걷다'),
so inflection and spacing do not matter ('검은고양이가걷다' is analysed like '검은 고양이가
걷다'). A query lemma that is not in the index is matched to the closest indexed lemma by
edit distance over Hangul jamo, so one mistyped letter still finds '고양이'.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from . import korean
from .errors import KvcapError

INDEX_NAME = "kvcap_index.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, mtime REAL, size INTEGER, video TEXT);
CREATE TABLE IF NOT EXISTS captions (id INTEGER PRIMARY KEY, file TEXT, video TEXT, start REAL, end REAL,
                                     text TEXT);
CREATE INDEX IF NOT EXISTS captions_file ON captions(file);
CREATE VIRTUAL TABLE IF NOT EXISTS captions_fts USING fts5(lemmas);
CREATE TABLE IF NOT EXISTS terms (term TEXT PRIMARY KEY, jamo TEXT, n INTEGER);
"""


@dataclass
class Hit:
    video: str
    start: float
    end: float
    text: str
    score: float
    result: str = ""  # the result file it came from, relative to the indexed folder

    def to_dict(self) -> dict:
        return asdict(self)


def index_path(folder: str | Path) -> Path:
    folder = Path(folder)
    return folder if folder.suffix == ".sqlite" else folder / INDEX_NAME


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(str(path))
    con.executescript(SCHEMA)
    return con


def _results(folder: Path) -> Iterable[Path]:
    for p in sorted(folder.rglob("*.json")):
        if p.name != "manifest.json" and not p.name.startswith("."):
            yield p


def _read_result(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("segments"), list) or "input" not in data:
        return None
    return data


def update_index(folder: str | Path, progress: bool = False) -> dict:
    """Bring the index in `folder` up to date with the results in it; returns counts."""
    from .progress import progress_bar

    folder = Path(folder)
    if not folder.is_dir():
        raise KvcapError("not a folder", folder)
    con = _connect(index_path(folder))
    known = {row[0]: (row[1], row[2]) for row in con.execute("SELECT path, mtime, size FROM files")}
    present = list(_results(folder))
    stats = {"added": 0, "updated": 0, "removed": 0, "unchanged": 0, "captions": 0}
    with con, progress_bar("색인 (index)", total=len(present), enabled=progress) as advance:
        for path in present:
            advance(1)
            key = str(path.relative_to(folder))
            st = path.stat()
            if known.get(key) == (st.st_mtime, st.st_size):
                stats["unchanged"] += 1
                continue
            data = _read_result(path)
            _remove(con, key)
            if data is None:
                continue
            stats["updated" if key in known else "added"] += 1
            con.execute("INSERT INTO files VALUES (?, ?, ?, ?)", (key, st.st_mtime, st.st_size, str(data["input"])))
            segs = [s for s in data["segments"] if isinstance(s, dict) and isinstance(s.get("text"), str)]
            for seg, terms in zip(segs, korean.lemmas_many([s["text"] for s in segs])):
                cur = con.execute("INSERT INTO captions (file, video, start, end, text) VALUES (?, ?, ?, ?, ?)",
                                  (key, str(data["input"]), float(seg.get("start", 0)), float(seg.get("end", 0)),
                                   seg["text"]))
                con.execute("INSERT INTO captions_fts (rowid, lemmas) VALUES (?, ?)", (cur.lastrowid, " ".join(terms)))
                _count_terms(con, terms, +1)
        for key in set(known) - {str(p.relative_to(folder)) for p in present}:
            _remove(con, key)
            stats["removed"] += 1
    stats["captions"] = con.execute("SELECT COUNT(*) FROM captions").fetchone()[0]
    con.close()
    return stats


def _remove(con: sqlite3.Connection, key: str) -> None:
    rows = con.execute("SELECT id, text FROM captions WHERE file = ?", (key,)).fetchall()
    for rowid, text in rows:
        con.execute("DELETE FROM captions_fts WHERE rowid = ?", (rowid,))
        _count_terms(con, korean.lemmas(text), -1)
    con.execute("DELETE FROM captions WHERE file = ?", (key,))
    con.execute("DELETE FROM files WHERE path = ?", (key,))


def _count_terms(con: sqlite3.Connection, terms: list[str], delta: int) -> None:
    for t in set(terms):
        con.execute("INSERT INTO terms VALUES (?, ?, ?) ON CONFLICT(term) DO UPDATE SET n = n + ?",
                    (t, jamo(t), max(delta, 0), delta))
    con.execute("DELETE FROM terms WHERE n <= 0")


# ----------------------------------------------------------------------------- query

_LEADS = "ㄱㄲㄴㄷㄸㄹㅁㅂㅃㅅㅆㅇㅈㅉㅊㅋㅌㅍㅎ"
_VOWELS = "ㅏㅐㅑㅒㅓㅔㅕㅖㅗㅘㅙㅚㅛㅜㅝㅞㅟㅠㅡㅢㅣ"
_TAILS = ["", "ㄱ", "ㄲ", "ㄳ", "ㄴ", "ㄵ", "ㄶ", "ㄷ", "ㄹ", "ㄺ", "ㄻ", "ㄼ", "ㄽ", "ㄾ", "ㄿ", "ㅀ", "ㅁ", "ㅂ", "ㅄ",
          "ㅅ", "ㅆ", "ㅇ", "ㅈ", "ㅊ", "ㅋ", "ㅌ", "ㅍ", "ㅎ"]


def jamo(text: str) -> str:
    """'고양이' -> 'ㄱㅗㅇㅑㅇㅇㅣ': typos are usually one letter, not one syllable."""
    out = []
    for ch in text:
        code = ord(ch) - 0xAC00
        if 0 <= code < 11172:
            out += [_LEADS[code // 588], _VOWELS[(code % 588) // 28], _TAILS[code % 28]]
        else:
            out.append(ch)
    return "".join(out)


def _distance(a: str, b: str, limit: int) -> int:
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        if min(cur) > limit:
            return limit + 1
        prev = cur
    return prev[-1]


def _closest_term(con: sqlite3.Connection, term: str, most: int = 2) -> str | None:
    """`term` if indexed, else the indexed term within 1-2 (at `most`) jamo edits (the most frequent)."""
    if con.execute("SELECT 1 FROM terms WHERE term = ?", (term,)).fetchone():
        return term
    target = jamo(term)
    if len(target) < 3:
        return None
    limit = min(most, 1 if len(target) <= 6 else 2)
    best, best_key = None, (limit + 1, 0)
    for cand, cand_jamo, n in con.execute("SELECT term, jamo, n FROM terms"):
        d = _distance(target, cand_jamo, limit)
        if d <= limit and (d, -n) < best_key:
            best, best_key = cand, (d, -n)
    return best


def query_terms(con: sqlite3.Connection, query: str) -> list[str]:
    """Lemmas of the query that the index knows, typos mapped to the closest known term."""
    out: list[str] = []
    for word in korean.normalize(query).split():
        lemmas = korean.lemmas(word)
        known = [t for t in lemmas if _closest_term(con, t) == t]
        if known and len(known) == len(lemmas):
            out += known
            continue
        # a word with unknown parts may be a typo of an indexed word ('고양리' for '고양이'):
        # try it whole and without a final particle before its pieces
        # a piece of a split compound gets one edit at most: '정거장' of '우주정거장' is no typo of '정장'
        for k, cand in enumerate((word, word[:-1], *lemmas)):
            t = _closest_term(con, cand, 2 if k < 2 or len(lemmas) == 1 else 1) if cand else None
            if t:
                out.append(t)
                break
        out += [t for t in known if t not in out]
    return list(dict.fromkeys(out))


def search(query: str, folder: str | Path, limit: int = 10) -> list[Hit]:
    """Captions ranked by how many query terms they contain, then by bm25."""
    path = index_path(folder)
    if not path.exists():
        raise KvcapError("no index here (run `kvcap index` on the folder first)", path)
    con = _connect(path)
    try:
        terms = query_terms(con, query)
        if not terms:
            return []
        quoted = ['"' + t.replace('"', '""') + '"' for t in terms]
        sql = ("SELECT c.video, c.start, c.end, c.text, captions_fts.lemmas, bm25(captions_fts), c.file "
               "FROM captions_fts "
               "JOIN captions c ON c.id = captions_fts.rowid WHERE captions_fts MATCH ? "
               "ORDER BY bm25(captions_fts) LIMIT ?")
        # captions with every word first (few rows to rank), then, if too few, with any word
        rows = con.execute(sql, (" AND ".join(quoted), max(200, 20 * limit))).fetchall()
        if len(rows) < limit and len(quoted) > 1:
            rows += con.execute(sql, (" OR ".join(quoted), max(200, 20 * limit))).fetchall()
    finally:
        con.close()
    wanted = set(terms)
    rows = list({(r[6], r[1], r[3]): r for r in reversed(rows)}.values())  # AND hits also come back from OR
    ranked = sorted(rows, key=lambda r: (-len(wanted & set(r[4].split())), r[5], r[0], r[1]))
    return [Hit(v, s, e, t, round(len(wanted & set(lem.split())) - bm / 100, 4), f)
            for v, s, e, t, lem, bm, f in ranked[:limit]]
