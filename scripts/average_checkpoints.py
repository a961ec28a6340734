"""Checkpoint averaging: a model folder whose weights are the mean of several epochs' weights.

    python scripts/average_checkpoints.py runs/kk-general runs/kk-epochs/epoch4.safetensors \
        runs/kk-epochs/epoch5.safetensors runs/kk-epochs/epoch6.safetensors --out runs/kk-avg

The run folder gives config, vocabulary and split; the epochs' weights are copies of its
checkpoint/model.safetensors taken as training went on. The averaged model is then scored
and calibrated like any other (`kvcap calibrate`, `kvcap evaluate --split validation`).
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from kvcap import modelfile


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("weights", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    loaded = modelfile.load(args.run)
    states = [load_file(str(w)) for w in args.weights]
    mean = {k: (torch.stack([s[k].float() for s in states]).mean(0) if states[0][k].is_floating_point()
                else states[0][k]) for k in states[0]}
    loaded.model.load_state_dict(mean)
    meta = dict(loaded.meta)
    meta["averaged"] = [w.name for w in args.weights]
    meta.pop("confidence", None)  # fitted to other weights: refit with kvcap calibrate
    modelfile.save(args.out, loaded.model, loaded.vocab, meta)
    for name in ("split.json", "train_log.csv"):
        if (args.run / name).exists():
            shutil.copy2(args.run / name, args.out / name)
    print(f"{args.out}: mean of {len(states)} checkpoints")


if __name__ == "__main__":
    main()
