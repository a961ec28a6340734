"""Library throughput and search latency, measured in one run.

    python bench/batch_speed.py [--captions 100000]

- batch: seconds of video captioned per wall second over ../shared/videos (captions and
  JSON only), with 1 and with 2 worker processes (model load included: it is part of a
  batch), and the ratio of the two;
- search: an index of N synthetic captions (built from koflickr's Korean vocabulary
  patterns), then p50 / p99 latency of 200 queries (words, phrases, a typo, no hit).
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"

SUBJECTS = ["남자", "여자", "소년", "소녀", "아이", "개", "검은 개", "흰 고양이", "검은 고양이", "사람들", "두 남자",
            "한 무리의 사람들", "자전거를 탄 남자", "빨간 셔츠를 입은 여자", "노인", "새", "말", "축구 선수"]
PLACES = ["길", "공원", "해변", "눈 위", "물속", "무대", "소파", "거리", "잔디밭", "바위", "건물 앞", "운동장", "호수",
          "숲", "사무실", "주차장", "계단", "다리 위"]
VERBS = ["걷고 있다", "달리고 있다", "서 있다", "앉아 있다", "누워 있다", "뛰어오르고 있다", "놀고 있다",
         "자전거를 타고 있다", "노래를 부르고 있다", "공을 쫓고 있다", "웃고 있다", "이야기하고 있다"]
QUERIES = ["검은 고양이가 소파에 누워 있는 장면", "걷다", "개가 해변에서 달리다", "자전거", "노래를 부르는 여자",
           "고양리", "비행기", "공원에서 노는 아이들", "눈 위에 서 있는 남자", "축구 선수"]


def batch_speed(workers: int, videos: list[Path]) -> tuple[float, float]:
    from kvcap.batch import run_batch

    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        s = run_batch(videos, Path(out), formats=["json"], workers=workers, progress=False, report=lambda m: None)
        wall = time.perf_counter() - t
    return s.video_seconds, wall


def search_latency(n: int) -> tuple[float, float, float]:
    from kvcap.search import search, update_index

    rng = random.Random(0)
    folder = Path(tempfile.mkdtemp())
    try:
        per_file = 100
        for f in range(n // per_file):
            segs = [{"start": 5.0 * i, "end": 5.0 * (i + 1), "score": 0.5,
                     "text": f"{rng.choice(SUBJECTS)}가 {rng.choice(PLACES)}에서 {rng.choice(VERBS)}."}
                    for i in range(per_file)]
            (folder / f"v{f:05d}.json").write_text(json.dumps({"input": f"v{f:05d}.mp4", "segments": segs,
                                                               "model": "synthetic"}, ensure_ascii=False))
        t = time.perf_counter()
        update_index(folder)
        build = time.perf_counter() - t
        times = []
        for i in range(200):
            q = QUERIES[i % len(QUERIES)]
            t = time.perf_counter()
            search(q, folder)
            times.append(time.perf_counter() - t)
        times.sort()
        return build, statistics.median(times), times[int(0.99 * len(times)) - 1]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--captions", type=int, default=100_000)
    ap.add_argument("--skip-batch", action="store_true")
    args = ap.parse_args()
    if not args.skip_batch:
        videos = sorted(p for p in (SHARED / "videos").iterdir() if p.is_file())
        base = None
        for w in (1, 2):
            video_s, wall = batch_speed(w, videos)
            speed = video_s / wall
            base = base or speed
            print(f"batch, {w} worker{'s' if w > 1 else ' '}: {video_s:6.1f} s of video in {wall:5.1f} s = "
                  f"{speed:5.1f} video-s per wall-s   x{speed / base:.2f}")
    build, p50, p99 = search_latency(args.captions)
    print(f"search over {args.captions} captions: index built in {build:.0f} s; "
          f"latency p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")


if __name__ == "__main__":
    main()
