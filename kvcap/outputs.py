"""Text outputs: SRT (the `srt` library), WebVTT (`webvtt-py`) and JSON.

Every output is written to a temporary file beside its target and renamed into place,
so an interrupted run never leaves a half-written file; an existing file is only
replaced when the caller allows it (`--force`).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
from pathlib import Path
from typing import Callable, Iterator, Sequence

import srt
import webvtt

from .errors import KvcapError

TEXT_FORMATS = ("srt", "vtt", "json")
MEDIA_FORMATS = ("mp4", "gif", "ad")  # ad: audio description (describe.py), three files
ALL_FORMATS = TEXT_FORMATS + MEDIA_FORMATS


def timestamp(seconds: float, sep: str = ".") -> str:
    ms = int(round(max(0.0, seconds) * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def output_path(out_dir: Path, source: Path, fmt: str, stem: str | None = None) -> Path:
    suffix = {"mp4": ".captioned.mp4", "gif": ".captioned.gif"}.get(fmt, f".{fmt}")
    return out_dir / f"{stem or source.stem}{suffix}"


def output_stems(sources: Sequence[Path]) -> dict[Path, str]:
    """Output names per input: the file stem, or the whole file name where stems collide
    ('a.png' and 'a.webp' in one call write 'a.png.json' and 'a.webp.json')."""
    counts: dict[str, int] = {}
    for s in sources:
        counts[s.stem] = counts.get(s.stem, 0) + 1
    return {s: s.stem if counts[s.stem] == 1 else s.name for s in sources}


@contextlib.contextmanager
def atomic_path(target: Path, force: bool) -> Iterator[Path]:
    """Yields a temporary path to write; on success it replaces `target`."""
    if target.exists() and not force:
        raise KvcapError("output exists (use --force to overwrite)", target)
    tmp = target.with_name(f".{target.name}.part{os.getpid()}{target.suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


PART = re.compile(r"^\.(?P<name>.+)\.part(?P<pid>\d+)(\.[^.]*)?$")  # atomic_path's temporary names


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_parts(folder: Path, recursive: bool = False) -> list[Path]:
    """Remove temporary outputs that a killed kvcap left in `folder` (their writer is gone)."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.rglob(".*.part*") if recursive else folder.glob(".*.part*"):
        m = PART.match(p.name)
        if m and p.is_file() and not pid_alive(int(m["pid"])):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def write_text(target: Path, text: str, force: bool) -> Path:
    """One text output, written atomically."""
    with atomic_path(target, force) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target


def srt_text(segments: Sequence) -> str:
    subs = [srt.Subtitle(i, datetime.timedelta(seconds=s.start), datetime.timedelta(seconds=s.end), s.text)
            for i, s in enumerate(segments, 1)]
    return srt.compose(subs)


def vtt_text(segments: Sequence) -> str:
    doc = webvtt.WebVTT()
    for s in segments:
        doc.captions.append(webvtt.Caption(timestamp(s.start), timestamp(s.end), s.text))
    return doc.content


def json_text(result) -> str:
    return json.dumps(result.to_dict(), ensure_ascii=False, indent=2) + "\n"


WRITERS: dict[str, Callable] = {
    "srt": lambda result: srt_text(result.segments),
    "vtt": lambda result: vtt_text(result.segments),
    "json": json_text,
}


def write_text_outputs(result, out_dir: Path, formats: Sequence[str], force: bool = False,
                       stem: str | None = None) -> list[Path]:
    written = []
    for fmt in formats:
        if fmt in WRITERS:
            written.append(write_text(output_path(out_dir, result.path, fmt, stem), WRITERS[fmt](result), force))
    return written
