"""Caption videos and save a contact sheet per video to read the captions beside the frames.

    python scripts/review_videos.py ../shared/videos --out review/ [--model DIR]

For every caption entry the sheet shows the frame at the entry's middle, numbered; the
captions, with their times and confidence, are printed (and written to review/captions.md),
numbered the same way, for a person to mark right or wrong.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

from kvcap import Captioner
from kvcap.inputs import expand_inputs, is_image
from kvcap.video import frames, probe


def frame_at(path: Path, times: list[float]) -> list[Image.Image]:
    info = probe(path)
    want, out = sorted(times), {}
    for f in frames(info):
        for t in want:
            if t not in out and f.time >= t - 1e-6:
                out[t] = Image.fromarray(f.rgb(256, 144))
        if len(out) == len(want):
            break
    return [out.get(t, Image.new("RGB", (256, 144))) for t in times]


def sheet(images: list[Image.Image]) -> Image.Image:
    cols = 4
    rows = (len(images) + cols - 1) // cols
    canvas = Image.new("RGB", (cols * 260, rows * 148), "white")
    draw = ImageDraw.Draw(canvas)
    for k, im in enumerate(images):
        x, y = (k % cols) * 260 + 2, (k // cols) * 148 + 2
        canvas.paste(im, (x, y))
        draw.rectangle([x, y, x + 22, y + 16], fill="black")
        draw.text((x + 4, y + 2), str(k + 1), fill="white")
    return canvas


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--out", type=Path, default=Path("review"))
    ap.add_argument("--model", type=Path)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cap = Captioner.from_pretrained(args.model)
    lines = [f"# {cap.name}"]
    for path in expand_inputs(args.inputs):
        if is_image(path):
            continue
        result = cap.caption_video(path)
        segs = result.segments
        sheet(frame_at(path, [(s.start + s.end) / 2 for s in segs])).save(args.out / f"{path.stem}.png")
        lines.append(f"\n## {path.name}")
        for k, s in enumerate(segs, 1):
            conf = "" if s.confidence is None else f" (confidence {s.confidence:.2f})"
            lines.append(f"{k}. {s.start:.1f}–{s.end:.1f} s: {s.text}{conf}")
        print("\n".join(lines[-len(segs) - 1:]), flush=True)
    (args.out / "captions.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
