"""How `kvcap serve` answers status requests while it captions: 50 concurrent GETs of a
job's status, idle (the baseline) and with a job running, over several rounds; and how long
a job takes from upload to done, against the video's length.

    python bench/web_load.py [VIDEO]   (default ../shared/videos/office_people_entering.mp4)
"""
from __future__ import annotations

import http.client
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from kvcap.webapp import LocalServer

ROOT = Path(__file__).resolve().parents[1]
CONCURRENT, ROUNDS = 50, 5


def burst(host: str, port: int, job_id: str) -> list[float]:
    """Seconds each of CONCURRENT simultaneous status requests took (connections opened first)."""
    cons = [http.client.HTTPConnection(host, port, timeout=10) for _ in range(CONCURRENT)]
    for c in cons:
        c.connect()
    barrier = threading.Barrier(CONCURRENT)

    def one(con: http.client.HTTPConnection) -> float:
        barrier.wait()
        t = time.perf_counter()
        con.request("GET", f"/api/jobs/{job_id}")
        json.loads(con.getresponse().read())
        return time.perf_counter() - t

    with ThreadPoolExecutor(CONCURRENT) as pool:
        times = list(pool.map(one, cons))
    for c in cons:
        c.close()
    return times


def summary(times: list[float]) -> str:
    times = sorted(times)
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))] * 1000  # noqa: E731
    return f"p50 {pick(0.5):6.1f} ms   p99 {pick(0.99):6.1f} ms   max {times[-1] * 1000:6.1f} ms"


def main() -> None:
    video = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT.parent / "shared" / "videos" / "office_people_entering.mp4")
    with tempfile.TemporaryDirectory() as data, LocalServer(Path(data)) as server:
        def submit() -> str:
            with open(video, "rb") as f:
                return httpx.post(f"{server.url}/api/jobs", files={"file": (video.name, f)}, timeout=120).json()["id"]

        def status(job_id: str) -> dict:
            return httpx.get(f"{server.url}/api/jobs/{job_id}").json()

        warm = submit()  # a finished job to ask about while idle (and the first run's warm-up)
        while status(warm)["status"] not in ("done", "failed"):
            time.sleep(0.2)
        time.sleep(2.0)  # let the search index take in the finished job first
        burst("127.0.0.1", server.port, warm)  # warm-up, not counted
        idle = [t for _ in range(ROUNDS) for t in burst("127.0.0.1", server.port, warm)]

        t0 = time.perf_counter()
        job = submit()
        busy: list[float] = []
        while (st := status(job))["status"] not in ("done", "failed"):
            if st["status"] == "running" and len(busy) < ROUNDS * CONCURRENT:
                busy += burst("127.0.0.1", server.port, job)
            time.sleep(0.2)
        took = time.perf_counter() - t0
    print(f"{CONCURRENT} concurrent status requests x {ROUNDS} rounds ({video.name}):")
    print(f"  idle        {summary(idle)}")
    print(f"  job running {summary(busy)}   (p99 {sorted(busy)[int(0.99 * len(busy))] / sorted(idle)[int(0.99 * len(idle))]:.1f}x idle)")
    print(f"upload to done (captions + captioned MP4): {took:.1f} s for {st.get('duration', 0):.1f} s of video "
          f"({st.get('duration', 0) / took:.1f}x real time), {len(st.get('segments') or [])} segments")


if __name__ == "__main__":
    main()
