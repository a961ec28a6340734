"""Captioning jobs for the web app: a store that survives restarts, and one worker.

A job is a folder `DATA/jobs/<id>/` (the upload saved as `input`, outputs written
atomically beside it) and a row in `DATA/jobs.sqlite`. Ids are random (128 bits), so a
job's files can only be reached by whoever was given its id; a user's file name is kept
for display and download names, never used as a path.

One worker thread runs the jobs one at a time with the model loaded once for the
process; the queue is bounded, so a flood of uploads is refused rather than buffered.
Progress lives in memory (status requests never touch the disk); state changes are
written to SQLite. A job that was queued or running when the process died is marked
failed at the next start, and its partial files are removed; finished jobs keep theirs.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import queue
import secrets
import shutil
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .errors import KvcapError
from .outputs import TEXT_FORMATS, write_text_outputs
from .video import VideoInfo, probe

log = logging.getLogger("kvcap.jobs")

# what a job can hand out, and the file behind each: nothing else in a job folder is served
OUTPUT_STEM = "captions"  # text outputs are named as `kvcap caption` names them, after this stem
OUTPUTS = {**{fmt: f"{OUTPUT_STEM}.{fmt}" for fmt in TEXT_FORMATS}, "mp4": "captioned.mp4",
           # audio description (describe.py names them after the stem), and the player's copy of it
           "descriptions": f"{OUTPUT_STEM}.descriptions.vtt", "described": f"{OUTPUT_STEM}.described.mp4",
           "described-video": "described-player.mp4"}
PREVIEW = "preview.mp4"  # a plain H.264 copy, made only when browsers cannot play the upload
INPUT = "input"
STAGES = ("queued", "decode", "shots", "captions", "render", "done")
STALE_UPLOAD = 3600.0  # seconds without a byte after which an upload is given up
RESTARTED = "서버가 다시 시작되어 작업이 중단되었습니다. 다시 올려 주세요."

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, name TEXT, status TEXT, stage TEXT, created REAL, finished REAL,
    error TEXT, error_kind TEXT, duration REAL, segments TEXT, model TEXT, video TEXT, video_type TEXT,
    warnings TEXT, described INTEGER);
"""
COLUMNS = ("id", "name", "status", "stage", "created", "finished", "error", "error_kind", "duration", "segments",
           "model", "video", "video_type", "warnings", "described")
JSON_COLUMNS = ("segments", "warnings")


def new_id() -> str:
    return secrets.token_urlsafe(16)


def is_job_id(text: str) -> bool:
    return len(text) == 22 and all(c.isascii() and (c.isalnum() or c in "-_") for c in text)


@dataclass
class Job:
    id: str
    name: str  # the uploaded file's name, for people; never a path
    status: str = "queued"  # queued | running | done | failed
    stage: str = "queued"  # one of STAGES, or "failed"
    progress: float = 0.0  # within the stage, 0..1
    created: float = field(default_factory=time.time)
    finished: float | None = None
    error: str | None = None
    error_kind: str | None = None
    duration: float | None = None
    segments: list[dict] | None = None
    model: str | None = None
    video: str | None = None  # file the player gets: INPUT or PREVIEW
    video_type: str | None = None  # its media type
    warnings: list[str] | None = None  # done, but parts of the video could not be decoded
    described: bool | None = None  # done with an audio description (the server has a voice)

    def to_dict(self) -> dict:
        return asdict(self)


def browser_playable(info: VideoInfo) -> bool:
    """Whether Chromium, Firefox and Safari play the file as it is (else a preview is made)."""
    demuxers = set(info.container.split(","))
    audio = (info.audio_codec or "").removesuffix("float")  # FFmpeg's decoder "mp3float" is mp3
    if "mp4" in demuxers:
        return info.codec == "h264" and info.pix_fmt in ("yuv420p", "yuvj420p") and audio in ("", "aac", "mp3")
    if "webm" in demuxers:
        return info.codec in ("vp8", "vp9", "av1") and audio in ("", "opus", "vorbis")
    return False


class JobStore:
    """Jobs on disk (SQLite + one folder each) with their live progress in memory."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.jobs_dir = self.root / "jobs"
        self.uploads_dir = self.root / "uploads"  # uploads in flight; a job folder only holds checked files
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.root / "jobs.sqlite"), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        have = {r[1] for r in self._db.execute("PRAGMA table_info(jobs)")}
        for column, kind in (("warnings", "TEXT"), ("described", "INTEGER")):  # a store from an earlier kvcap
            if column not in have:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
        self._jobs: dict[str, Job] = {}
        self._recover()

    # ------------------------------------------------------------------ state

    def _recover(self) -> None:
        """Load every job; what was queued or running when the last process died has failed."""
        for row in self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs"):
            values = {k: json.loads(v) if k in JSON_COLUMNS and v else v for k, v in zip(COLUMNS, row)}
            if values["described"] is not None:
                values["described"] = bool(values["described"])  # SQLite keeps it as 0/1
            job = Job(**values, progress=1.0 if values["status"] == "done" else 0.0)
            if job.status in ("queued", "running"):
                job.status, job.stage, job.error, job.error_kind = "failed", "failed", RESTARTED, "restarted"
                job.finished = time.time()
                self._remove_partial(job.id)
                self._save(job)
            self._jobs[job.id] = job
        for stale in self.uploads_dir.iterdir():  # uploads cut off by the restart
            _remove(stale)

    def _remove_partial(self, job_id: str) -> None:
        folder = self.folder(job_id)
        if folder.is_dir():
            for p in folder.iterdir():
                _remove(p)

    def _save(self, job: Job) -> None:
        values = [getattr(job, k) for k in COLUMNS]
        values = [json.dumps(v, ensure_ascii=False) if k in JSON_COLUMNS and v is not None else v
                  for k, v in zip(COLUMNS, values)]
        self._db.execute(f"INSERT OR REPLACE INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                         values)

    def folder(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else Job(**asdict(job))  # a copy: the worker goes on changing it

    def list(self) -> list[Job]:
        with self._lock:
            return [Job(**asdict(j)) for j in sorted(self._jobs.values(), key=lambda j: -j.created)]

    def create(self, name: str, upload: Path) -> Job:
        """A new queued job owning `upload` (moved into its folder)."""
        job = Job(new_id(), name)
        folder = self.folder(job.id)
        folder.mkdir()
        upload.replace(folder / INPUT)
        with self._lock:
            self._jobs[job.id] = job
            self._save(job)
        return job

    def update(self, job_id: str, *, persist: bool = True, **changes) -> None:
        with self._lock:
            job = self._jobs[job_id]
            for k, v in changes.items():
                setattr(job, k, v)
            if persist:
                self._save(job)

    def progress(self, job_id: str, stage: str, progress: float) -> None:
        """Live progress: memory only, so it costs nothing to report often."""
        self.update(job_id, persist=False, stage=stage, progress=max(0.0, min(1.0, progress)))

    def output(self, job: Job, kind: str) -> Path | None:
        """The file behind one of a finished job's outputs (`OUTPUTS` or "video"), if it exists."""
        if job.status != "done":
            return None
        name = job.video if kind == "video" else OUTPUTS.get(kind)
        if name is None:
            return None
        path = self.folder(job.id) / name
        return path if path.is_file() else None

    def new_upload(self) -> Path:
        return self.uploads_dir / new_id()

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        _remove(self.folder(job_id))

    # ------------------------------------------------------------------ cleanup

    def cleanup(self, max_age: float, now: float | None = None) -> list[str]:
        """Remove finished jobs (files and row) older than `max_age` seconds; returns their ids."""
        now = time.time() if now is None else now
        with self._lock:
            old = [j.id for j in self._jobs.values()
                   if j.status in ("done", "failed") and (j.finished or j.created) < now - max_age]
        for job_id in old:
            self.delete(job_id)
        with self._lock:
            known = set(self._jobs)
        for folder in self.jobs_dir.iterdir():  # folders whose row is gone (a crash between the two)
            if folder.is_dir() and folder.name not in known and folder.stat().st_mtime < now - max_age:
                _remove(folder)
        for upload in self.uploads_dir.iterdir():  # an upload still arriving is written to all the time
            if _mtime(upload) < now - min(max_age, STALE_UPLOAD):
                _remove(upload)
        return old

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # taken by a job meanwhile
        return float("inf")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class QueueFull(Exception):
    pass


class JobRunner:
    """A bounded queue of jobs and the worker thread that captions them."""

    def __init__(self, store: JobStore, captioner, *, queue_size: int = 8, spec=None,
                 on_done: Callable[[Job], None] | None = None):
        self.store = store
        self.captioner = captioner  # loaded once; only this runner's thread uses it
        self.spec = spec
        self.on_done = on_done
        self._queue: queue.Queue[str] = queue.Queue(maxsize=queue_size)
        self._waiting: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="kvcap-jobs", daemon=True)
        self._stop = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        try:
            self._queue.put_nowait("")  # wake the worker
        except queue.Full:
            pass
        self._thread.join(timeout)

    def full(self) -> bool:
        return self._queue.full()

    def submit(self, job: Job) -> None:
        with self._lock:
            try:
                self._queue.put_nowait(job.id)
            except queue.Full:
                raise QueueFull from None
            self._waiting.append(job.id)

    def position(self, job_id: str) -> int | None:
        """1 for the next job to run; None when it is not waiting."""
        with self._lock:
            return self._waiting.index(job_id) + 1 if job_id in self._waiting else None

    def _work(self) -> None:
        while not self._stop.is_set():
            job_id = self._queue.get()
            if not job_id:
                continue
            with self._lock:
                self._waiting.remove(job_id)
            try:
                self.run(job_id)
            except Exception:  # a bug: the job fails, the worker lives on
                log.exception("job %s failed", job_id)
                self.store.update(job_id, status="failed", stage="failed", finished=time.time(),
                                  error="처리 중 내부 오류가 났습니다.", error_kind="internal")

    def run(self, job_id: str) -> None:
        store = self.store
        folder = store.folder(job_id)
        store.update(job_id, status="running", stage="decode", progress=0.0)

        def on_stage(stage: str, done: float, total: float | None) -> None:
            store.progress(job_id, stage, done / total if total else 0.0)

        try:
            result = self.captioner.caption_video(folder / INPUT, self.spec, on_stage=on_stage)
            info = result.info
            # the JSON names the user's file, not the server's copy of it
            shown = dataclasses.replace(result, path=Path(store.get(job_id).name))
            write_text_outputs(shown, folder, TEXT_FORMATS, force=True, stem=OUTPUT_STEM)
            self._render(job_id, info, result.segments)
            described = self._describe(folder, info, result.segments)
        except KvcapError as exc:
            store.update(job_id, status="failed", stage="failed", finished=time.time(), error=exc.message,
                         error_kind=exc.kind)
            return
        store.update(job_id, status="done", stage="done", progress=1.0, finished=time.time(),
                     duration=round(info.duration, 3), segments=[s.to_dict() for s in result.segments],
                     model=result.model, warnings=result.warnings or None, described=described,
                     **self._player_file(info))
        if self.on_done:
            try:
                self.on_done(store.get(job_id))
            except Exception:  # e.g. the search index: the job itself is done and stays so
                log.exception("after job %s", job_id)

    @staticmethod
    def _player_file(info: VideoInfo) -> dict:
        if not browser_playable(info):
            return {"video": PREVIEW, "video_type": "video/mp4"}
        return {"video": INPUT, "video_type": "video/webm" if "webm" in info.container.split(",") else "video/mp4"}

    def _render(self, job_id: str, info: VideoInfo, segments) -> None:
        from .render import render_mp4

        folder = self.store.folder(job_id)
        preview = not browser_playable(info)
        parts = 2 if preview else 1
        total = max(info.duration, 1e-6) * parts

        def report(offset: float) -> Callable[[float], None]:
            return lambda t: self.store.progress(job_id, "render", (offset + t) / total)

        render_mp4(info, segments, folder / OUTPUTS["mp4"], force=True, on_progress=report(0.0))
        if preview:  # the player shows captions as a track it can hide, so it needs them unburned
            render_mp4(info, [], folder / PREVIEW, force=True, on_progress=report(info.duration))

    @staticmethod
    def _describe(folder: Path, info: VideoInfo, segments) -> bool:
        """Audio description beside the captions; a server without a voice (espeak-ng) still
        captions, and its jobs just have no description."""
        from .describe import describe

        try:
            describe(info, segments, folder, OUTPUT_STEM, force=True, player=folder / OUTPUTS["described-video"])
        except KvcapError as exc:
            log.warning("no audio description: %s", exc)
            return False
        return True


def check_upload(path: Path) -> VideoInfo:
    """Decode the start of an upload: its content decides, not its name. Raises KvcapError."""
    from .video import frames

    info = probe(path)
    for _ in frames(info):
        break
    return info
