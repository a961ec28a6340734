"""Ablation of the default model's training choices at a reduced budget (same data mix).

    python scripts/ablation.py data/koflickr-koscenes.manifest.json --limit 1500 --epochs 3 --out runs/ablation

Each row trains the attend decoder from scratch on the first N examples of every dataset
(split per dataset as in `kvcap train`), changing one thing, and prints the best
validation epoch's CIDEr-D (greedy) and noun precision per dataset, training time, and
beam-5 caption speed. Validation only: the test split is not looked at.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from kvcap import modelfile
from kvcap.captions import generate
from kvcap.train import TrainConfig, fit, prepare

ROWS = [
    ("plain: koflickr + koscenes merged", dict(attributes=False, styles="none")),
    ("+ ImageNet class scores (attributes)", dict(attributes=True, styles="none")),
    ("+ attributes + dataset styles", dict(attributes=True, styles="dataset")),
]


def caption_speed(out: Path, feats: list[np.ndarray]) -> float:
    loaded = modelfile.load(out)
    t0 = time.perf_counter()
    generate(loaded.model, loaded.vocab, feats, beam=5)
    return len(feats) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", nargs="+")
    ap.add_argument("--limit", type=int, default=1500)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("runs/ablation"))
    args = ap.parse_args()
    base = TrainConfig(data=args.data, limit=args.limit, epochs=args.epochs, patience=args.epochs, quiet=True)
    prep = prepare(base)  # one data preparation for every row (same split, same vocabulary)
    probe = [prep.feats[i].float().numpy() for i in prep.val[:128]]
    lines = []
    for label, change in ROWS:
        cfg = replace(base, out=str(args.out / label.split(":")[0].strip("+ ").replace(" ", "-")[:40]), **change)
        fit(cfg, prep)
        rows = list(csv.DictReader(open(Path(cfg.out) / "train_log.csv")))
        best = max(rows, key=lambda r: float(r["val_cider"]))
        cells = [label, best["epoch"]]
        for name in prep.sources:
            cells += [best[f"val_cider_{name}"], best[f"val_noun_precision_{name}"]]
        cells += [f"{sum(float(r['seconds']) for r in rows) / len(rows):.0f}",
                  f"{caption_speed(Path(cfg.out), probe):.0f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        print(lines[-1], flush=True)
    head = ["change", "best epoch"] + [f"{n} {m}" for n in prep.sources for m in ("CIDEr-D", "noun-P")] + \
        ["s/epoch", "captions/s (beam 5)"]
    print(f"\n{len(prep.pairs)} training captions, first {args.limit} examples per dataset, "
          f"{args.epochs} epochs, validation (greedy)\n")
    print("| " + " | ".join(head) + " |\n|" + " --- |" * len(head))
    print("\n".join(lines))
    (args.out / "ablation.json").write_text(json.dumps(lines, ensure_ascii=False))


if __name__ == "__main__":
    main()
