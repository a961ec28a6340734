"""Caption latency and memory of `kvcap watch`.

    python bench/watch_latency.py ../shared/videos/office_people_entering.mp4 --max-segment 4
    python bench/watch_latency.py ../shared/videos/office_people_entering.mp4 --load 2
    python bench/watch_latency.py ../shared/videos/office_people_entering.mp4 --hour

Latency of a caption: when it was written (wall clock) minus when the end of its segment
was on screen (playback start + the segment's stream end). The target is at most
max-segment + 2 s after the segment *starts*, i.e. at most 2 s after it ends.

`--load N` runs the same playback twice in one go: alone (the baseline), then beside N
processes that keep a core busy each, as a training job would; catching up (keyframes only
while behind) is what keeps the second run's latency near the first's.

`--hour` plays the video looped to an hour of stream time, as fast as it decodes (not at its
own pace: the hour takes minutes), and prints the process's resident memory against stream
time: a watcher that runs for days must not grow.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wall(record: dict) -> float:
    return datetime.datetime.fromisoformat(record["wall"]).timestamp()


def watch(source: str, max_segment: float, realtime: bool) -> tuple[list[dict], list[tuple[float, float]]]:
    """Run `kvcap watch` to the end: its log, and (wall time, RSS MB) sampled every second."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "kvcap", "watch", source, "--max-segment", str(max_segment), "--out", out]
        proc = subprocess.Popen(cmd + (["--realtime"] if realtime else []), stdout=subprocess.DEVNULL)
        memory = []
        while proc.poll() is None:
            with contextlib.suppress(FileNotFoundError):
                mb = rss_mb(proc.pid)
                if mb:  # 0 once the process is exiting
                    memory.append((time.time(), mb))
            time.sleep(1.0)
        if proc.returncode:
            sys.exit(f"kvcap watch failed (exit {proc.returncode})")
        log = [json.loads(line) for line in (Path(out) / "watch.jsonl").read_text(encoding="utf-8").splitlines()]
    return log, memory


def latency(log: list[dict]) -> str:
    playing = wall(next(r for r in log if r.get("event") == "playing"))
    lat = sorted(wall(r) - (playing + r["stream_end"]) for r in log if "text" in r)
    behind = sum(r.get("event") == "behind" for r in log)
    skipped = sum(r.get("skipped_frames", 0) for r in log)
    return (f"{len(lat)} captions, latency median {lat[len(lat) // 2]:.2f} s, worst {lat[-1]:.2f} s; "
            f"fell behind {behind}x, {skipped} frames not decoded")


@contextlib.contextmanager
def busy(n: int):
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for h in hogs:
            h.kill()


def looped(video: Path, seconds: float, folder: Path) -> str:
    """An FFmpeg concat list that plays `video` over and over for about `seconds`."""
    import av

    with av.open(str(video)) as c:
        s = c.streams.video[0]
        length = float(s.duration * s.time_base) if s.duration else float(c.duration / 1e6)
    (folder / f"v{video.suffix}").symlink_to(video.resolve())
    times = math.ceil(seconds / length)
    listing = folder / "loop.ffconcat"
    listing.write_text("ffconcat version 1.0\n" + f"file v{video.suffix}\n" * times)
    return str(listing)


def memory_over_stream_time(log: list[dict], memory: list[tuple[float, float]]) -> None:
    caps = [(wall(r), r["stream_end"]) for r in log if "text" in r]
    print(f"  {'stream time':>12} {'RSS MB':>8}")
    for i in range(1, 11):
        t, mb = memory[min(len(memory) - 1, i * len(memory) // 10 - 1)]
        reached = max((s for w, s in caps if w <= t), default=0.0)
        print(f"  {reached / 60:9.1f} min {mb:8.0f}")
    first = [mb for _, mb in memory[len(memory) // 10: len(memory) // 5]]
    last = [mb for _, mb in memory[-len(memory) // 10:]]
    print(f"  growth from the second tenth to the last: {max(last) - max(first):+.0f} MB "
          f"(peak {max(mb for _, mb in memory):.0f} MB over {len(memory)} s of wall time)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("video", type=Path)
    ap.add_argument("--max-segment", type=float, default=4.0)
    ap.add_argument("--load", type=int, default=0, help="also run beside N busy processes")
    ap.add_argument("--hour", action="store_true", help="memory over an hour of stream time")
    args = ap.parse_args()
    print(f"{args.video.name}, max-segment {args.max_segment} s, {os.cpu_count()} cores")
    if args.hour:
        with tempfile.TemporaryDirectory() as folder:
            log, memory = watch(looped(args.video, 3600, Path(folder)), args.max_segment, realtime=False)
        caps = [r for r in log if "text" in r]
        print(f"an hour of stream time ({caps[-1]['stream_end'] / 60:.1f} min, {len(caps)} captions):")
        memory_over_stream_time(log, memory)
        return
    log, memory = watch(str(args.video), args.max_segment, realtime=True)
    print(f"  alone:        {latency(log)}; RSS {memory[len(memory) // 3][1]:.0f} → {memory[-1][1]:.0f} MB")
    if args.load:
        with busy(args.load):
            log, _ = watch(str(args.video), args.max_segment, realtime=True)
        print(f"  {args.load} busy cores: {latency(log)}")
    print("  (target: at most 2 s after a segment's end, i.e. max-segment + 2 s from its start)")


if __name__ == "__main__":
    main()
