"""Grounding on real video: how many of the things the captions name are in the picture.

    python scripts/video_grounding.py [--model DIR] [--labels data/shared_video_nouns.json] [--show]

The test splits are photographs; kvcap is for video. `data/shared_video_nouns.json` holds,
for frames of the shared videos, the nouns a describer could truly name there (labelled by
eye). Each video is captioned as `kvcap caption` does; each labelled frame is scored with
the caption entry that covers its time, by the grounding score of `kvcap evaluate`
(metrics.grounding, the label as the one reference): noun precision (share of named nouns
that the frame shows), recall (share of the label's nouns named) and hit (share of frames
whose caption names one of them). Label words are folded one by one (a bare '새' in a run
of words would read as the adjective 'new'). The baseline, in
the same run, is the constant caption the issue measured against, "한 남자가 서 있다.".
Figures are given for all frames and per labelling batch: batch 1 was labelled at the
middles of one model's caption entries, batch 2 at times spread evenly over each video,
chosen without looking at any caption.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "videos"
CONSTANT = "한 남자가 서 있다."


def read_labels(path: Path, videos: Path = SHARED) -> dict[Path, list[dict]]:
    """{video path: [{time, nouns, shows}, ...]} from the labels file."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    return {videos / name: frames for name, frames in doc["videos"].items()}


def caption_at(entries, time: float) -> str:
    """The text of the caption entry showing at `time` ('' where none does)."""
    for e in entries:
        if e.start <= time < e.end or (e is entries[-1] and e.start <= time <= e.end):
            return e.text
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--labels", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "shared_video_nouns.json")
    parser.add_argument("--show", action="store_true", help="print each frame's caption and what it got wrong")
    args = parser.parse_args()
    from kvcap import Captioner
    from kvcap.korean import nouns_many

    cap = Captioner.from_pretrained(args.model)
    labels = read_labels(args.labels)
    hyps, shown, batch = {}, {}, {}
    for video, frames in labels.items():
        entries = cap.caption_video(video).segments
        for f in frames:
            key = f"{video.name} @ {f['time']:g} s"
            hyps[key] = caption_at(entries, f["time"])
            shown[key] = set().union(*nouns_many(f["nouns"].split()))
            batch[key] = f.get("batch", 1)
    rows = {cap.name: hyps, f"constant '{CONSTANT}'": {k: CONSTANT for k in hyps}}
    print(f"{len(hyps)} labelled frames of {len(labels)} videos")
    print(f"{'captions':40s} {'frames':8s} noun-P  noun-R  noun-hit")
    for name, texts in rows.items():
        for part in ("all", 1, 2):
            keys = [k for k in texts if part == "all" or batch[k] == part]
            if not keys:
                continue
            g = score({k: texts[k] for k in keys}, shown)
            label = "all" if part == "all" else f"batch {part}"
            print(f"{name:40s} {label:8s} {g['noun_precision']:.3f}   {g['noun_recall']:.3f}   {g['noun_hit']:.3f}")
    if args.show:
        for (key, text), n in zip(hyps.items(), nouns_many(list(hyps.values()))):
            wrong = sorted(n - shown[key])
            print(f"  {key:40s} {text}" + (f"   not shown: {', '.join(wrong)}" if wrong else ""))


def score(texts: dict[str, str], shown: dict[str, set[str]]) -> dict:
    """The grounding score of `kvcap evaluate` with each frame's label as its one reference."""
    from kvcap.korean import nouns_many
    from kvcap.metrics import _grounding

    named = dict(zip(texts, nouns_many(list(texts.values()))))
    return _grounding(named, {k: [shown[k]] for k in texts})


if __name__ == "__main__":
    main()
