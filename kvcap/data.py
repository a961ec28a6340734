"""Training data: the AI Hub layouts and a plain JSONL layout, read into `Example`s.

Formats
- ``aihub-coco``: AI Hub '한국어 이미지 설명' — a JSON list of
  ``{"file_path": "images/x.jpg", "caption_ko": [...], "id": ...}``; paths are relative
  to ``--root`` (default: the JSON's folder).
- ``aihub-multimodal``: AI Hub '멀티모달' (KETI) label files — one JSON per clip, frames
  under ``<root>/<image_folder>/<image_id>`` with five ``image_descs`` per frame. Pass
  a label file or a folder of them.
- ``jsonl``: one ``{"media": path | [paths], "captions": [...]}`` per line; media are
  images, frames of one shot, or a video.

A bad record is reported with its id and skipped; it never stops a run.

Several datasets train one model (`kvcap train a.json b.json`, or a manifest listing
them, see `read_manifest`): each `Example` keeps the name of the dataset it came from
(`source`), splits are carved per dataset, and scores are reported per dataset.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .errors import KvcapError

FORMATS = ("aihub-coco", "aihub-multimodal", "jsonl")


@dataclass
class Example:
    id: str
    media: list[Path]  # one image, the frames of one shot, or one video
    captions: list[str] = field(default_factory=list)
    source: str = ""  # the dataset's name (DatasetSpec.name)
    general_first: bool = False  # captions[0] is a short, general description (koscenes)


@dataclass
class DatasetSpec:
    """One dataset of a training run: where it is, its layout, and how it is named in scores."""
    path: str
    format: str = "aihub-coco"
    root: str | None = None
    name: str = ""  # default: the folder holding the file ('koflickr', 'koscenes')
    general_first: bool = False  # each record's first caption is a short, general one

    def __post_init__(self):
        if not self.name:
            p = Path(self.path)
            self.name = (p.parent.name if p.is_file() or p.suffix else p.name) or p.stem


def read_manifest(path: str | Path) -> list[DatasetSpec]:
    """A JSON manifest: ``{"datasets": [{"path", "format"?, "root"?, "name"?, "general_first"?}]}``.

    Relative paths are taken from the manifest's folder.
    """
    path = Path(path)
    data = _read_json(path)
    items = data.get("datasets") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise KvcapError('expected {"datasets": [{"path": ..., "format": ...}, ...]}', path)
    known = {"path", "format", "root", "name", "general_first"}
    specs = []
    for n, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("path"), str) or set(item) - known:
            raise KvcapError(f"dataset #{n + 1}: needs \"path\" and only {sorted(known)}", path)
        fmt = item.get("format", "aihub-coco")
        if fmt not in FORMATS:
            raise KvcapError(f"dataset #{n + 1}: unknown format {fmt!r}; choose from {', '.join(FORMATS)}", path)
        rel = lambda v: str(path.parent / v) if v and not Path(v).is_absolute() else v  # noqa: E731
        specs.append(DatasetSpec(rel(item["path"]), fmt, rel(item.get("root")), str(item.get("name", "")),
                                 bool(item.get("general_first", False))))
    return specs


def dataset_specs(paths: list[str], fmt: str = "aihub-coco", root: str | None = None) -> list[DatasetSpec]:
    """What `kvcap train DATA...` was given: manifest files (*.manifest.json) or datasets of one format."""
    specs: list[DatasetSpec] = []
    for p in paths:
        if str(p).endswith(".manifest.json"):
            specs.extend(read_manifest(p))
        else:
            specs.append(DatasetSpec(str(p), fmt, root))
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise KvcapError(f"two datasets are named {dup[0]!r}: give them names in a manifest")
    return specs


def load_specs(specs: list[DatasetSpec], report: Report | None = None) -> list[Example]:
    """Every dataset's examples, each tagged with its dataset's name."""
    out: list[Example] = []
    for spec in specs:
        for ex in load(spec.path, spec.format, spec.root, report):
            ex.source, ex.general_first = spec.name, spec.general_first
            out.append(ex)
    return out


Report = Callable[[str], None]


def load(path: str | Path, fmt: str, root: str | Path | None = None, report: Report | None = None) -> list[Example]:
    """Read a dataset; `report(message)` receives one line per skipped record."""
    path = Path(path)
    if not path.exists():
        raise KvcapError("no such file or folder", path)
    report = report or (lambda msg: None)
    if fmt == "aihub-coco":
        items = _aihub_coco(path, Path(root) if root else path.parent, report)
    elif fmt == "aihub-multimodal":
        items = _aihub_multimodal(path, Path(root) if root else None, report)
    elif fmt == "jsonl":
        items = _jsonl(path, Path(root) if root else path.parent, report)
    else:
        raise KvcapError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    examples = []
    for ex in items:
        missing = [m for m in ex.media if not m.is_file()]
        if missing:
            report(f"record {ex.id}: media file not found: {missing[0]}")
            continue
        examples.append(ex)
    if not examples:
        raise KvcapError("no usable records", path)
    return examples


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise KvcapError("not UTF-8 text", path) from None
    except json.JSONDecodeError as exc:
        raise KvcapError(f"not valid JSON (line {exc.lineno}: {exc.msg})", path) from None


def _captions(value) -> list[str] | None:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return None
    caps = [c.strip() for c in value if isinstance(c, str) and c.strip()]
    return caps or None


def _aihub_coco(path: Path, root: Path, report: Report) -> Iterator[Example]:
    data = _read_json(path)
    if not isinstance(data, list):
        raise KvcapError("expected a JSON list of {file_path, caption_ko, id} records", path)
    for n, rec in enumerate(data):
        rid = rec.get("id", f"#{n}") if isinstance(rec, dict) else f"#{n}"
        if not isinstance(rec, dict) or not isinstance(rec.get("file_path"), str):
            report(f"record {rid}: no file_path")
            continue
        caps = _captions(rec.get("caption_ko"))
        if not caps:
            report(f"record {rid}: no Korean captions (caption_ko)")
            continue
        yield Example(str(rid), [root / rec["file_path"]], caps)


def _aihub_multimodal(path: Path, root: Path | None, report: Report) -> Iterator[Example]:
    files = sorted(path.rglob("*.json")) if path.is_dir() else [path]
    for f in files:
        try:
            data = _read_json(f)
        except KvcapError as exc:
            report(str(exc))
            continue
        shots = data.get("shot_infos") if isinstance(data, dict) else None
        if not isinstance(shots, list):
            report(f"{f}: no shot_infos (not a KETI multimodal label file)")
            continue
        base = root or f.parent
        clip = (data.get("common_info") or {}).get("shot_folder", "")
        for shot in shots:
            folder = shot.get("image_folder", "") if isinstance(shot, dict) else ""
            for info in (shot.get("visual_infos") or []) if isinstance(shot, dict) else []:
                rid = f"{f.stem}/{folder}/{info.get('image_id', '?')}"
                caps = _captions(info.get("image_descs"))
                if not isinstance(info.get("image_id"), str) or not caps:
                    report(f"record {rid}: no image_id or image_descs")
                    continue
                frame = base / folder / info["image_id"]
                if not frame.exists() and clip:  # the download nests shots under the clip folder
                    frame = base / clip / folder / info["image_id"]
                yield Example(rid, [frame], caps)


def _jsonl(path: Path, root: Path, report: Report) -> Iterator[Example]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise KvcapError("not UTF-8 text", path) from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            report(f"line {n}: not valid JSON ({exc.msg})")
            continue
        media = rec.get("media") if isinstance(rec, dict) else None
        media = [media] if isinstance(media, str) else media
        caps = _captions(rec.get("captions")) if isinstance(rec, dict) else None
        if not media or not all(isinstance(m, str) for m in media) or not caps:
            report(f"line {n}: needs \"media\" (path or list of paths) and \"captions\" (list of text)")
            continue
        yield Example(str(rec.get("id", n)), [root / m for m in media], caps)


def split_per_source(examples: list[Example], val: float = 0.05, test: float = 0.05, seed: int = 0):
    """`split` inside each dataset, so every dataset has its own validation and test part."""
    train, valid, tests = [], [], []
    for name in dict.fromkeys(e.source for e in examples):
        a, b, c = split([e for e in examples if e.source == name], val, test, seed)
        train += a
        valid += b
        tests += c
    return train, valid, tests


def split(examples: list[Example], val: float = 0.05, test: float = 0.05, seed: int = 0):
    """Train / validation / test by example (never by caption).

    Examples with the most reference captions go to test and validation first, so the
    scores there are computed against as many references as the data has.
    """
    order = list(examples)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda e: -len(e.captions))  # stable: shuffled within equal counts
    n_test = round(len(order) * test)
    n_val = round(len(order) * val)
    return order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test]
