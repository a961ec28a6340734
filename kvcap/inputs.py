"""What the user named on the command line: files, globs and folders, as a list of media files."""
from __future__ import annotations

import glob
import hashlib
from pathlib import Path
from typing import Iterable

VIDEO_EXTS = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".gif", ".mpg", ".mpeg", ".ts"}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
MEDIA_EXTS = VIDEO_EXTS | IMAGE_EXTS


def expand_inputs(items: Iterable[str]) -> list[Path]:
    """Files as given, globs expanded, folders searched recursively for media files; no repeats."""
    out: list[Path] = []
    for item in items:
        item = str(item)
        # an existing path is taken as it is: 'clip[1].mp4' is a file's name, not a pattern
        literal = Path(item).exists() or not glob.has_magic(item)
        matches = [item] if literal else sorted(glob.glob(item, recursive=True))
        if not matches:
            out.append(Path(item))  # reported as missing later
        for m in matches:
            p = Path(m)
            if p.is_dir():
                out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in MEDIA_EXTS))
            else:
                out.append(p)
    seen: set[Path] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def is_image(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTS


def file_hash(path: str | Path) -> str:
    """SHA-1 of a file's content: what the feature cache and the batch manifest key on."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_list(path: str | Path) -> list[str]:
    """Inputs listed in a text file, one per line; blank lines and '#' comments skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
