"""Caption latency and memory of `kvcap watch` on a video played at its own pace.

    python bench/watch_latency.py ../shared/videos/office_people_entering.mp4 --max-segment 4

Latency of a caption: when it was written (wall clock) minus when the end of its segment
was on screen (playback start + the segment's stream end). The target is at most
max-segment + 2 s after the segment *starts*, i.e. at most 2 s after it ends. Memory: the
process's resident set, sampled every second; a long run should not grow.
"""
from __future__ import annotations

import argparse
import datetime
import json
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("video")
    ap.add_argument("--max-segment", type=float, default=4.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.Popen([sys.executable, "-m", "kvcap", "watch", args.video, "--realtime", "--max-segment",
                                 str(args.max_segment), "--out", out], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        memory = []
        while proc.poll() is None:
            try:
                memory.append(rss_mb(proc.pid))
            except FileNotFoundError:
                break
            time.sleep(1.0)
        log = [json.loads(line) for line in (Path(out) / "watch.jsonl").read_text(encoding="utf-8").splitlines()]
    wall = lambda r: datetime.datetime.fromisoformat(r["wall"]).timestamp()  # noqa: E731
    playing = wall(next(r for r in log if r.get("event") == "playing"))
    caps = [r for r in log if "text" in r]
    lat = sorted(wall(r) - (playing + r["stream_end"]) for r in caps)
    print(f"{Path(args.video).name}: {len(caps)} captions, max-segment {args.max_segment} s")
    print(f"  latency from a segment's end on screen to its caption: median {lat[len(lat) // 2]:.2f} s, "
          f"worst {lat[-1]:.2f} s (target: at most 2 s, i.e. max-segment + 2 s from the segment's start)")
    third = max(1, len(memory) // 3)
    print(f"  memory: first third {max(memory[:third]):.0f} MB, last third {max(memory[-third:]):.0f} MB, "
          f"peak {max(memory):.0f} MB over {len(memory)} s")


if __name__ == "__main__":
    main()
