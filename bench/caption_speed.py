"""How fast `kvcap caption` runs, against the decode-only floor, measured in one run.

    python bench/caption_speed.py [VIDEO ...]      (default: cockatoo.mp4, campus_people_walking.mp4)

For each video, each mode runs in its own process (so peak memory is that mode's own):
- floor:    decode every frame (threaded), nothing else — no pipeline can beat this;
- captions: the whole captioning pipeline and SRT/JSON outputs;
- mp4:      captions plus the captioned MP4.
Prints seconds of video per wall second, the ratio to the floor, and peak RSS.
The model is loaded before the clock starts (a one-off cost, printed separately).
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "videos"
DEFAULT = [SHARED / "cockatoo.mp4", SHARED / "campus_people_walking.mp4"]
MODES = ("floor", "captions", "mp4")


def run_one(mode: str, path: Path) -> dict:
    from kvcap.video import frames, probe

    info = probe(path)
    load = 0.0
    if mode != "floor":
        from kvcap import Captioner
        from kvcap.outputs import write_text_outputs
        from kvcap.render import render_mp4

        t = time.perf_counter()
        cap = Captioner.from_pretrained()
        cap.encoder  # noqa: B018 - build the encoder session before timing
        load = time.perf_counter() - t
    t = time.perf_counter()
    if mode == "floor":
        end = 0.0
        for f in frames(info):
            end = f.time
        duration = end + 1 / info.fps
    else:
        with tempfile.TemporaryDirectory() as out:
            result = cap.caption_video(path)
            write_text_outputs(result, Path(out), ["srt", "json"])
            if mode == "mp4":
                render_mp4(result.info, result.segments, Path(out) / "v.mp4")
        duration = result.info.duration
    wall = time.perf_counter() - t
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "video": path.name, "duration": duration, "wall": wall, "load": load, "peak_mb": peak_mb}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        print(json.dumps(run_one(sys.argv[2], Path(sys.argv[3]))))
        return
    videos = [Path(p) for p in sys.argv[1:]] or DEFAULT
    print(f"{'video':28} {'mode':9} {'video s':>8} {'wall s':>7} {'x real':>7} {'/floor':>7} {'peak MB':>8}")
    for path in videos:
        floor = None
        for mode in MODES:
            out = subprocess.run([sys.executable, __file__, "--one", mode, str(path)], capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr[-2000:], file=sys.stderr)
                raise SystemExit(1)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            speed = r["duration"] / r["wall"]
            floor = floor or speed
            print(f"{path.name:28} {mode:9} {r['duration']:8.1f} {r['wall']:7.2f} {speed:7.1f} {speed / floor:7.2f} "
                  f"{r['peak_mb']:8.0f}" + (f"   (model load {r['load']:.1f} s)" if r["load"] else ""))


if __name__ == "__main__":
    main()
