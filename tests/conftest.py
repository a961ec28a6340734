"""Shared fixtures: the ../shared data (skipped with a reason where absent), the shipped
model loaded once, and small media files the tests make themselves with PyAV."""
from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KVCAP_SHARED", ROOT.parent / "shared"))
VIDEOS = SHARED / "videos"
KOFLICKR = SHARED / "data" / "koflickr" / "MSCOCO_style_Korean.json"
KOSCENES = SHARED / "data" / "koscenes" / "MSCOCO_style_Korean.json"
MULTIMODAL = SHARED / "data" / "aihub_multimodal_sample" / "KETI_MULTIMODAL_0000000012_interpolation.json"
HELDOUT_IMAGES = SHARED / "data" / "heldout_images"


def need(path: Path) -> Path:
    if not path.exists():
        message = f"needs {path} (the project's shared data, not in the repository)"
        if os.environ.get("CI"):  # in CI a missing ../shared is a broken setup, not a reason to skip
            pytest.fail(message + "; CI must have ../shared beside the clone")
        pytest.skip(message)
    return path


def need_command(name: str) -> str:
    """A Debian package's command (scripts/install-debian.sh installs it); skipped without, failed in CI."""
    import shutil

    found = shutil.which(name)
    if found is None:
        message = f"needs {name} (sh scripts/install-debian.sh {name})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def decodable_end(path: Path) -> tuple[int, float]:
    """Frames that decode (bad packets skipped) and where the last one ends: counted with PyAV
    alone, apart from kvcap's own decoder, so tests can hold kvcap's durations against it."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        rate = float(stream.average_rate or 25)
        n, end = 0, 0.0
        for packet in c.demux(stream):
            try:
                for frame in packet.decode():
                    n += 1
                    end = max(end, float(frame.time) + 1 / rate if frame.time is not None else n / rate)
            except av.error.FFmpegError:
                pass
    return n, end


def stream_seconds(path: Path) -> dict[str, float]:
    """Length of each stream of a file ("video", "audio"), from the stream, not the container
    (whose duration follows the longest stream)."""
    with av.open(str(path)) as c:
        return {s.type: float(s.duration * s.time_base) for s in (*c.streams.video[:1], *c.streams.audio[:1])}


@pytest.fixture(scope="session")
def videos() -> Path:
    return need(VIDEOS)


@pytest.fixture(scope="session")
def koflickr() -> Path:
    return need(KOFLICKR)


@pytest.fixture(scope="session")
def koscenes() -> Path:
    return need(KOSCENES)


def both_datasets(folder: Path, koflickr: Path, koscenes: Path, pick) -> Path:
    """A manifest of a part of koflickr and of koscenes (as the default model was trained on):
    `pick(name, records)` chooses each dataset's records (sorted by id)."""
    for name, source in (("koflickr", koflickr), ("koscenes", koscenes)):
        records = sorted(json.loads(source.read_text(encoding="utf-8")), key=lambda r: str(r["id"]))
        (folder / f"{name}.json").write_text(json.dumps(pick(name, records), ensure_ascii=False), encoding="utf-8")
    manifest = folder / "both.manifest.json"
    manifest.write_text(json.dumps({"datasets": [
        {"path": "koflickr.json", "root": str(koflickr.parent), "name": "koflickr"},
        {"path": "koscenes.json", "root": str(koscenes.parent), "name": "koscenes", "general_first": True},
    ]}), encoding="utf-8")
    return manifest


@pytest.fixture(scope="session")
def koflickr_captions(koflickr) -> list[str]:
    data = json.loads(koflickr.read_text(encoding="utf-8"))
    return [c for r in data for c in r["caption_ko"]]


@pytest.fixture(scope="session")
def captioner():
    from kvcap import Captioner

    return Captioner.from_pretrained()


@pytest.fixture(autouse=True, scope="session")
def _cache(tmp_path_factory):
    # features and the exported ONNX encoder go to a cache shared by the whole session,
    # unless the caller points KVCAP_CACHE somewhere (CI reuses it between steps)
    if "KVCAP_CACHE" not in os.environ:
        os.environ["KVCAP_CACHE"] = str(tmp_path_factory.mktemp("kvcap-cache"))
    yield


def make_video(path: Path, scenes: list[tuple[int, int, int]], seconds_each: float = 2.0, fps: int = 10,
               size: tuple[int, int] = (160, 120), audio: bool = False, codec: str = "libx264",
               pix_fmt: str = "yuv420p") -> Path:
    """A video of flat-coloured scenes with moving stripes (hard cuts between scenes)."""
    w, h = size
    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
        if audio:
            aus = out.add_stream("aac", rate=22050)
        n = 0
        for k, colour in enumerate(scenes):
            # each scene: its colour over its own texture, so scenes differ in hue, light and edges
            texture = np.random.default_rng(k).integers(0, 2, (h // 8 + 1, w // 8 + 1))
            texture = np.kron(texture, np.ones((8, 8)))[:h, :w, None]
            base = (np.array(colour) * (0.6 + 0.4 * texture)).astype(np.uint8)
            for i in range(int(seconds_each * fps)):
                img = base.copy()
                x = (i * 4) % w
                img[:, x : x + 6] = 255 - np.array(colour, np.uint8)
                for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(p)
                n += 1
        for p in vs.encode():
            out.mux(p)
        if audio:
            _write_tone(out, aus, n / fps)
    return path


def _write_tone(out, stream, seconds: float) -> None:
    rate = stream.codec_context.sample_rate
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    pts = 0
    for s in range(0, len(samples), 1024):
        chunk = samples[s : s + 1024]
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        frame.pts = pts
        frame.time_base = Fraction(1, rate)
        pts += len(chunk)
        for p in stream.encode(frame):
            out.mux(p)
    for p in stream.encode():
        out.mux(p)


def make_audio_only(path: Path, seconds: float = 1.0) -> Path:
    with av.open(str(path), "w", format="mp4") as out:
        _write_tone(out, out.add_stream("aac", rate=22050), seconds)
    return path


@pytest.fixture
def synthetic_video(tmp_path) -> Path:
    return make_video(tmp_path / "three_scenes.mp4", [(200, 30, 30), (30, 200, 30), (30, 30, 200)],
                      seconds_each=3.0, audio=True)


# ----------------------------------------------------------------------------- web app

def Server(data: Path, *args: str):
    """`kvcap serve` on a free loopback port, its output logged beside its data folder."""
    from kvcap.webapp import LocalServer

    return LocalServer(data, *args, log=data.parent / f"{data.name}-server.log")


def upload(url: str, path: Path, name: str | None = None):
    import httpx

    with open(path, "rb") as f:
        return httpx.post(f"{url}/api/jobs", files={"file": (name or path.name, f, "application/octet-stream")},
                          timeout=60)


def wait_job(url: str, job_id: str, until=("done", "failed"), timeout: float = 240.0) -> dict:
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{url}/api/jobs/{job_id}", timeout=10).json()
        if job["status"] in until:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']}/{job['stage']} after {timeout} s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def web(tmp_path_factory, videos):
    """A server shared by a test module: uploads up to 4 MB, finished jobs kept an hour."""
    server = Server(tmp_path_factory.mktemp("web") / "data", "--max-upload", "4", "--keep", "1")
    yield server
    server.stop()
