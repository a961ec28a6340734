"""`kvcap serve`: a local web app (FastAPI) over the job store and worker in `jobs.py`.

The page (`kvcap/web/`) and everything it needs (script, styles, the Hangul font, the
API docs' Swagger UI) ship with the package: nothing is fetched from another host.

Uploads are streamed to disk part by part and cut off at the size limit, so a huge or
endless upload never fills memory or disk; then the start of the file is decoded: its
content decides whether it is a video, not its name or extension.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Path as PathParam, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header

from . import __version__
from . import search as caption_search
from .errors import KvcapError
from .jobs import OUTPUTS, Job, JobRunner, JobStore, QueueFull, check_upload

log = logging.getLogger("kvcap.web")

ID_PATTERN = r"^[A-Za-z0-9_-]{22}$"
MESSAGES = {  # what a person is told, by KvcapError.kind
    "not_video": "이 파일은 동영상이 아닙니다.",
    "audio_only": "이 파일은 동영상이 아닙니다 (소리만 들어 있습니다).",
    "no_video": "이 파일은 동영상이 아닙니다 (영상이 들어 있지 않습니다).",
    "empty": "빈 파일이거나 길이가 0인 동영상입니다.",
    "damaged": "동영상이 손상되어 읽을 수 없습니다.",
    "truncated": "동영상 파일이 끝까지 저장되지 않아 읽을 수 없습니다 (잘린 파일).",
    "too_large": "화면 크기가 너무 큽니다 (최대 8K).",
    "internal": "처리 중 내부 오류가 났습니다.",
}
STATUS_CODES = {"not_video": 415, "audio_only": 415, "no_video": 415}  # the rest: 422
CAPTION_OUTPUTS = ("srt", "vtt", "json", "mp4")  # every finished job has these
DOWNLOAD_NAMES = {"srt": ".srt", "vtt": ".vtt", "json": ".json", "mp4": ".captioned.mp4",
                  "descriptions": ".descriptions.vtt", "described": ".described.mp4", "described-video": ".described.mp4"}


@dataclass
class Settings:
    data: Path
    max_upload: int = 1 << 30  # bytes
    keep: float = 24 * 3600.0  # seconds a finished job is kept
    queue_size: int = 8
    segments: str = "shots"
    max_segment: float = 8.0
    min_shot: float = 2.0
    live: Path | None = None  # the --out folder of a running `kvcap watch`, shown on the page


def live_lines(path: Path, after: int, most: int = 200) -> tuple[list[dict], int]:
    """Whole JSON lines of a growing log from byte `after`; returns them and where to go on."""
    try:
        with open(path, "rb") as f:
            f.seek(after)
            data = f.read(1 << 20)
    except FileNotFoundError:
        return [], 0
    whole = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next call
    rows = []
    for line in whole.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows[-most:], after + len(whole)


def size_text(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


def display_name(raw: str | None) -> str:
    """The user's file name for display: last path component, no control characters."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    return name[:200] or "video"


def problem(status: int, kind: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": message, "kind": kind}, status_code=status, headers=headers)


RETRY_AFTER = 30  # seconds a client is asked to wait when the queue is full


def busy() -> JSONResponse:
    return problem(503, "busy", "대기 중인 작업이 많습니다. 잠시 뒤 다시 올려 주세요.",
                   {"Retry-After": str(RETRY_AFTER)})


class UploadTooLarge(Exception):
    pass


class _Upload:
    """Receives a multipart body: the part named `file` goes to `target`, at most `limit` bytes."""

    def __init__(self, target: Path, limit: int):
        self.target, self.limit = target, limit
        self.name: str | None = None
        self.size = 0
        self._out = None
        self._field, self._value, self._headers = b"", b"", {}
        self._writing = False
        self.complete = False  # the file part arrived whole (its closing boundary was seen)

    def callbacks(self) -> dict:
        return {"on_header_field": self._on_field, "on_header_value": self._on_value,
                "on_header_end": self._on_header_end, "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_data, "on_part_end": self._on_part_end}

    def _on_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _on_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._headers = {}
        if params.get(b"name") == b"file" and self._out is None and not self.complete:
            raw = params.get(b"filename", b"")
            self.name = display_name(raw.decode("utf-8", "replace"))
            self._out = open(self.target, "wb")

    def _on_data(self, data: bytes, start: int, end: int) -> None:
        if self._out is None:
            return
        self.size += end - start
        if self.size > self.limit:
            raise UploadTooLarge
        self._out.write(data[start:end])

    def _on_part_end(self) -> None:
        if self._out is not None:
            self.complete = True
        self.close()

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


class NoSniff:
    """Adds `X-Content-Type-Options: nosniff` to every response (plain ASGI: no per-request
    overhead): uploads are served back as video, and a browser must never guess another type."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_header(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]
            await send(message)

        await self.app(scope, receive, send_with_header)


class SearchIndex:
    """The caption index over finished jobs (`kvcap index` on the jobs folder), kept current."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._lock = threading.Lock()

    def refresh(self) -> None:
        with self._lock:
            caption_search.update_index(self.folder)

    def search(self, query: str, limit: int) -> list[caption_search.Hit]:
        if not caption_search.index_path(self.folder).exists():
            return []
        return caption_search.search(query, self.folder, limit)


# --------------------------------------------------------------------------- API shapes (for /docs)

class Problem(BaseModel):
    detail: str = Field(description="What went wrong, in Korean, for people")
    kind: str = Field(description="A stable name for programs: not_video, audio_only, too_big, busy, …")


class Created(BaseModel):
    id: str
    status: str
    url: str


class SegmentOut(BaseModel):
    start: float
    end: float
    text: str
    score: float = Field(description="Geometric-mean token probability of the caption")
    confidence: float | None = Field(None, description="Calibrated: expected share of the caption's nouns "
                                     "that are in the picture (0..1); absent for an uncalibrated model")


class JobError(BaseModel):
    kind: str | None
    message: str | None = Field(description="In Korean, for people")
    detail: str | None = Field(description="The technical cause")


class JobStatus(BaseModel):
    id: str
    name: str = Field(description="The uploaded file's name")
    status: Literal["queued", "running", "done", "failed"]
    stage: Literal["queued", "decode", "shots", "captions", "render", "done", "failed"]
    progress: float = Field(description="Within the stage, 0 to 1")
    created: float
    finished: float | None = None
    queue_position: int | None = Field(None, description="While queued: 1 = next to run")
    error: JobError | None = None
    duration: float | None = None
    model: str | None = None
    segments: list[SegmentOut] | None = Field(None, description="When done: the captions, merged where "
                                                                   "neighbouring shots got the same sentence")
    video: str | None = Field(None, description="When done: what a player should play")
    downloads: dict[str, str] | None = Field(None, description="When done: srt, vtt, json, mp4; with a voice "
                                             "on the server also descriptions (WebVTT) and described (MP4 with a "
                                             "second audio track 화면해설)")
    described_video: str | None = Field(None, description="When done: the player's copy whose sound is the "
                                        "audio description (browsers play only a file's first audio track)")
    warnings: list[str] | None = Field(None, description="When done: parts of the video that could not be "
                                       "decoded and were skipped (the rest is captioned)")


class SearchHit(BaseModel):
    job: str
    name: str
    start: float
    end: float
    text: str
    score: float


class SearchResult(BaseModel):
    query: str
    hits: list[SearchHit]


def job_status(job: Job, runner: JobRunner) -> dict:
    base = f"/api/jobs/{job.id}"
    out = {"id": job.id, "name": job.name, "status": job.status, "stage": job.stage,
           "progress": round(job.progress, 3), "created": job.created, "finished": job.finished}
    if job.status == "queued":
        out["queue_position"] = runner.position(job.id)
    if job.status == "failed":
        out["error"] = {"kind": job.error_kind, "message": MESSAGES.get(job.error_kind or "", job.error),
                        "detail": job.error}
    if job.status == "done":
        out.update(duration=job.duration, model=job.model, segments=job.segments, video=f"{base}/video",
                   downloads={k: f"{base}/{k}" for k in OUTPUTS if k in CAPTION_OUTPUTS or
                              (job.described and k != "described-video")}, warnings=job.warnings)
        if job.described:
            out["described_video"] = f"{base}/described-video"
    return out


def create_app(settings: Settings, captioner) -> FastAPI:
    """The app; `captioner` (a loaded `Captioner`) is used by the one worker thread only."""
    from .shots import SegmentSpec

    store = JobStore(settings.data)
    index = SearchIndex(store.jobs_dir)
    spec = SegmentSpec.parse(settings.segments, settings.max_segment, settings.min_shot)
    runner = JobRunner(store, captioner, queue_size=settings.queue_size, spec=spec,
                       on_done=lambda job: index.refresh())
    web = Path(str(resources.files("kvcap") / "web"))
    fonts = Path(str(resources.files("kvcap") / "fonts"))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        runner.start()
        stop = threading.Event()
        sweeper = threading.Thread(target=_sweep, args=(store, index, settings.keep, stop), daemon=True,
                                   name="kvcap-cleanup")
        sweeper.start()
        try:
            yield
        finally:
            stop.set()
            runner.stop(timeout=1.0)

    app = FastAPI(title="kvcap", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="한국어 동영상 자막: 동영상을 올리면 장면마다 한국어 자막을 답니다. "
                              "Upload a video, follow its job, fetch SRT / WebVTT / JSON / captioned MP4.")
    app.state.store, app.state.runner, app.state.index = store, runner, index

    app.add_middleware(NoSniff)
    app.mount("/static", StaticFiles(directory=web), name="static")
    app.mount("/fonts", StaticFiles(directory=fonts), name="fonts")
    try:
        from swagger_ui_bundle import swagger_ui_path

        app.mount("/docs-assets", StaticFiles(directory=Path(str(swagger_ui_path))), name="docs-assets")
        have_swagger = True
    except ImportError:  # the API still works; only its interactive docs page is missing
        have_swagger = False

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(web / "index.html", media_type="text/html; charset=utf-8")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        if not have_swagger:
            return HTMLResponse("<p>Swagger UI is not installed; the API is described at "
                                "<a href='/openapi.json'>/openapi.json</a>.</p>")
        return get_swagger_ui_html(openapi_url="/openapi.json", title="kvcap API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")

    @app.get("/api/config", summary="Limits the page shows before an upload")
    def config() -> dict:
        return {"max_upload_bytes": settings.max_upload, "max_upload": size_text(settings.max_upload),
                "keep_seconds": settings.keep, "model": captioner.name, "live": settings.live is not None}

    @app.get("/api/live", summary="New lines of the running `kvcap watch` (serve --live DIR)",
             description="Captions and alerts since the offsets given (start with 0, then pass back "
                         "the `next` ones): polling, one request every second or two.",
             responses={404: {"model": Problem, "description": "This server shows no live watch"}})
    async def live(captions: int = Query(0, ge=0), alerts: int = Query(0, ge=0)):
        if settings.live is None:
            return problem(404, "not_found", "실시간 자막을 보여 주도록 시작된 서버가 아닙니다.")
        caps, next_caps = await run_in_threadpool(live_lines, settings.live / "watch.jsonl", captions)
        alarms, next_alerts = await run_in_threadpool(live_lines, settings.live / "alerts.jsonl", alerts)
        return {"captions": caps, "alerts": alarms, "next": {"captions": next_caps, "alerts": next_alerts}}

    @app.post("/api/jobs", status_code=201, summary="Upload a video and start captioning it",
              openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                  "type": "object", "required": ["file"],
                  "properties": {"file": {"type": "string", "format": "binary",
                                          "description": "The video (any container FFmpeg reads)"}}}}}}},
              response_model=Created,
              responses={400: {"model": Problem, "description": "Not a multipart upload with a whole `file` part"},
                         413: {"model": Problem, "description": "Larger than the upload limit"},
                         415: {"model": Problem, "description": "Not a video (decided by decoding, not by the name)"},
                         422: {"model": Problem, "description": "A damaged or empty video, or a frame beyond 8K"},
                         503: {"model": Problem, "description": "The queue is full; try again later"}})
    async def create_job(request: Request):
        if runner.full():
            return busy()
        too_big = f"파일이 너무 큽니다 (최대 {size_text(settings.max_upload)})."
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_upload + 64 * 1024:
            return problem(413, "too_big", too_big)
        ctype, params = parse_options_header(request.headers.get("content-type", ""))
        if ctype != b"multipart/form-data" or not params.get(b"boundary"):
            return problem(400, "bad_request", "multipart/form-data 형식으로 'file'을 보내 주세요.")
        target = store.new_upload()
        try:
            return await accept_upload(request, target, params[b"boundary"], too_big)
        finally:  # an upload that became a job was moved into its folder; any other is removed now
            target.unlink(missing_ok=True)

    async def accept_upload(request: Request, target: Path, boundary: bytes, too_big: str):
        upload = _Upload(target, settings.max_upload)
        try:
            parser = MultipartParser(boundary, upload.callbacks())
            async for chunk in request.stream():
                parser.write(chunk)
            parser.finalize()
        except UploadTooLarge:
            return problem(413, "too_big", too_big)
        except Exception:  # a malformed body or a client that went away
            return problem(400, "bad_request", "업로드가 중간에 끊겼거나 형식이 잘못되었습니다.")
        finally:
            upload.close()
        if not upload.complete:
            return problem(400, "bad_request", "'file' 항목이 없거나 중간에 끊겼습니다.")
        try:
            await run_in_threadpool(check_upload, target)
        except KvcapError as exc:
            return problem(STATUS_CODES.get(exc.kind, 422), exc.kind, MESSAGES.get(exc.kind, exc.message))
        job = store.create(upload.name or "video", target)
        try:
            runner.submit(job)
        except QueueFull:
            store.delete(job.id)
            return busy()
        return JSONResponse({"id": job.id, "status": job.status, "url": f"/api/jobs/{job.id}"}, status_code=201,
                            headers={"Location": f"/api/jobs/{job.id}"})

    JobId = PathParam(pattern=ID_PATTERN, description="The id `POST /api/jobs` returned")

    @app.get("/api/jobs/{job_id}", summary="A job's status, progress and (when done) its segments",
             response_model=JobStatus, response_model_exclude_none=True,
             responses={404: {"model": Problem, "description": "No such job"}})
    async def get_job(job_id: str = JobId):
        job = store.get(job_id)
        if job is None:
            return problem(404, "not_found", "작업을 찾을 수 없습니다.")
        return job_status(job, runner)

    @app.delete("/api/jobs/{job_id}", status_code=204, summary="Delete a finished job and its files",
                responses={404: {"model": Problem, "description": "No such job"},
                           409: {"model": Problem, "description": "Still queued or running"}})
    async def delete_job(job_id: str = JobId):
        job = store.get(job_id)
        if job is None:
            return problem(404, "not_found", "작업을 찾을 수 없습니다.")
        if job.status in ("queued", "running"):
            return problem(409, "busy", "아직 처리 중인 작업은 지울 수 없습니다.")
        store.delete(job_id)
        await run_in_threadpool(index.refresh)
        return JSONResponse(None, status_code=204)

    @app.get("/api/jobs/{job_id}/{kind}", summary="A finished job's output file", response_class=FileResponse,
             description="`srt`, `vtt`, `json`, `mp4` (captions burned in) or `video` (what the page's "
                         "player plays: the upload, or an H.264 copy where browsers cannot play it); "
                         "`descriptions`, `described`, `described-video` (audio description). "
                         "`?download=1` asks the browser to save it.",
             responses={200: {"description": "The file (ranges are supported for seeking)"},
                        404: {"model": Problem, "description": "No such job, or not finished"}})
    async def get_output(kind: Literal["srt", "vtt", "json", "mp4", "video", "descriptions", "described",
                                       "described-video"], job_id: str = JobId,
                         download: bool = Query(False)):
        job = store.get(job_id)
        path = store.output(job, kind) if job else None
        if path is None:
            return problem(404, "not_found", "결과 파일이 없습니다.")
        media = {"srt": "application/x-subrip; charset=utf-8", "vtt": "text/vtt; charset=utf-8",
                 "descriptions": "text/vtt; charset=utf-8", "json": "application/json", "mp4": "video/mp4",
                 "described": "video/mp4", "described-video": "video/mp4"}.get(kind, job.video_type or "video/mp4")
        stem = Path(job.name).stem or "video"
        filename = stem + DOWNLOAD_NAMES.get(kind, ".mp4" if media == "video/mp4" else ".webm")
        return FileResponse(path, media_type=media, filename=filename,
                            content_disposition_type="attachment" if download else "inline")

    # HEAD for players and download managers that ask for the size first (not repeated in /docs)
    app.add_api_route("/api/jobs/{job_id}/{kind}", get_output, methods=["HEAD"], include_in_schema=False)

    @app.get("/api/search", summary="Find moments in finished jobs by their captions", response_model=SearchResult,
             description="Korean-aware: inflected forms, spacing and small typos still match (see `kvcap search`).")
    async def search(q: str = Query(..., min_length=1, max_length=200), limit: int = Query(10, ge=1, le=50)):
        hits = await run_in_threadpool(index.search, q, limit)
        out = []
        for h in hits:
            job_id = Path(h.result).parent.name
            job = store.get(job_id)
            if job is None or job.status != "done":
                continue
            out.append({"job": job_id, "name": job.name, "start": h.start, "end": h.end, "text": h.text,
                        "score": h.score})
        return {"query": q, "hits": out}

    return app


def _sweep(store: JobStore, index: SearchIndex, keep: float, stop: threading.Event) -> None:
    """Remove old jobs now and then (and drop them from the search index)."""
    while True:
        try:
            if store.cleanup(keep):
                index.refresh()
        except Exception:
            log.exception("cleanup failed")
        if stop.wait(min(max(keep / 4, 1.0), 300.0)):
            return


def listen(host: str, port: int) -> socket.socket:
    """Bind the port before anything slow happens, so a taken port is reported at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def serve(settings: Settings, captioner, sock: socket.socket) -> None:
    import uvicorn

    app = create_app(settings, captioner)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"kvcap: http://{shown}:{port}/ 에서 열려 있습니다 (Ctrl+C로 끝내기); API 문서: /docs", flush=True)
    asyncio.run(server.serve(sockets=[sock]))


class LocalServer:
    """`kvcap serve` in a child process on a free loopback port, for scripts, benchmarks
    and tests: `with LocalServer(data_dir) as server: ... server.url ...`."""

    def __init__(self, data: Path, *args: str, log: Path | None = None, timeout: float = 120.0):
        import subprocess
        import sys
        import time
        import urllib.request

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = Path(data)
        self.log = log
        out = open(log, "ab") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "kvcap", "serve", "--port", str(self.port),
                                      "--data", str(data), *args], stdout=out, stderr=out)
        if log:
            out.close()  # the child has its own copy
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kvcap serve exited with {self.proc.returncode}{self._log_tail()}")
            try:
                urllib.request.urlopen(f"{self.url}/api/config", timeout=2).close()
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"kvcap serve did not start in {timeout:.0f} s{self._log_tail()}")
            time.sleep(0.3)

    def _log_tail(self) -> str:
        return f": {Path(self.log).read_text(errors='replace')[-3000:]}" if self.log else ""

    def stop(self, kill: bool = False) -> None:
        if self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            self.proc.wait(30)

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
