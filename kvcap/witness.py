"""What the training captions say such a picture shows: a noun witness for choosing captions.

The decoder writes fluent sentences but names things that are not there. A second, much
simpler model is a better judge of *which things* a picture holds than of how to say it: a
small MLP over the segment's pooled encoder feature, trained (binary cross-entropy) to
predict which of the ~2,000 nouns of the training captions some reference of a photo
names. Decoding then ranks every beam hypothesis, of both the model's own style and its
general style, by

    length-penalised log p(sentence)  +  weight * sum over named nouns of log p_witness(noun)
                                      +  bonus if the hypothesis is in the model's own style

so a sentence that names a thing the witness doubts loses to one that does not name it, and
a short general sentence wins where the specific ones all name doubtful things. `weight`
and `bonus` are chosen on validation (confidence.tune). The mean witness probability of a
caption's nouns ("support") also predicts its noun precision better than the caption's own
score does, so calibrated confidence is fitted on it (confidence.py).

Stored in the model folder as witness.safetensors (the nouns in its metadata), loaded
without running code and checked against its own metadata before use.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .errors import KvcapError

FILE = "witness.safetensors"
MIN_IMAGES = 5  # a noun some reference names for fewer training photos than this is not learnt
FLOOR = 1e-4  # log of a probability is taken no lower than this (one noun cannot veto alone)


class NounWitness(nn.Module):
    """p(noun named by a reference | pooled feature) for each of `nouns`."""

    def __init__(self, nouns: Sequence[str], feature_dim: int = 1280, hidden: int = 512):
        super().__init__()
        self.nouns = list(nouns)
        self.index = {n: k for k, n in enumerate(self.nouns)}
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("std", torch.ones(feature_dim))
        self.net = nn.Sequential(nn.Dropout(0.5), nn.Linear(feature_dim, hidden), nn.ReLU(), nn.Dropout(0.5),
                                 nn.Linear(hidden, len(self.nouns)))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits (B, N) from pooled features (B, D)."""
        x = pooled / pooled.norm(dim=1, keepdim=True).clamp(min=1e-6)
        return self.net((x - self.mean) / self.std)

    @torch.no_grad()
    def probs(self, pooled: torch.Tensor) -> np.ndarray:
        self.eval()
        return torch.sigmoid(self(pooled.float())).numpy()

    def log_support(self, nouns: set[str], probs: np.ndarray) -> float:
        """Sum of log p over the named nouns the witness knows (a noun it never learnt counts
        as rare: FLOOR)."""
        return sum(math.log(max(float(probs[self.index[n]]), FLOOR)) if n in self.index else math.log(FLOOR)
                   for n in nouns)

    def support(self, nouns: set[str], probs: np.ndarray) -> float:
        """Mean p over the named nouns (1.0 for a sentence that names nothing)."""
        if not nouns:
            return 1.0
        return float(np.mean([probs[self.index[n]] if n in self.index else 0.0 for n in nouns]))

    def doubted(self, nouns: set[str], probs: np.ndarray, below: float) -> set[str]:
        """The named nouns the witness gives less than `below` (a noun it never learnt, too
        rare in training to judge, among them, as `support` counts it)."""
        return {n for n in nouns if n not in self.index or probs[self.index[n]] < below}

    # ------------------------------------------------------------------ files

    def save(self, folder: str | Path) -> Path:
        from .modelfile import _atomic

        path = Path(folder) / FILE
        state = {k: v.detach().half().contiguous() for k, v in self.state_dict().items()}  # half the size
        meta = {"nouns": json.dumps(self.nouns, ensure_ascii=False), "hidden": str(self.net[1].out_features)}
        _atomic(path, lambda p: save_file(state, str(p), metadata=meta))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "NounWitness | None":
        """The folder's witness, None if it has none; a damaged one is refused (KvcapError)."""
        path = Path(folder) / FILE
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                nouns = json.loads(meta["nouns"])
                hidden = int(meta["hidden"])
                if not (isinstance(nouns, list) and nouns and all(isinstance(n, str) for n in nouns)
                        and 1 <= hidden <= 4096 and len(nouns) <= 50_000):
                    raise ValueError("bad nouns or hidden size in the metadata")
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
                dim = shapes.get("mean", (0,))[0]
                if not 1 <= dim <= 16384:
                    raise ValueError(f"feature size {dim}")
                witness = cls(nouns, dim, hidden)
                if shapes != {k: tuple(v.shape) for k, v in witness.state_dict().items()}:
                    raise ValueError("tensor shapes do not match the nouns")
                witness.load_state_dict({k: f.get_tensor(k).float() for k in f.keys()})
        except (ValueError, KeyError, TypeError, OSError, SafetensorError, json.JSONDecodeError) as exc:
            raise KvcapError(f"damaged noun witness ({exc})", path) from None
        return witness.eval()


def pooled(segments: Sequence[np.ndarray]) -> torch.Tensor:
    """(B, D) mean over frames and regions of each (T, R, D) segment: the witness's input."""
    return torch.from_numpy(np.stack([np.asarray(s, np.float32).mean(axis=(0, 1)) for s in segments]))


def named_nouns(refs: Sequence[Sequence[str]]) -> list[set[str]]:
    """Per item, the nouns some of its reference captions name (korean.nouns_many)."""
    from .korean import nouns_many

    flat = nouns_many([r for rs in refs for r in rs])
    out, k = [], 0
    for rs in refs:
        out.append(set().union(*flat[k : k + len(rs)]))
        k += len(rs)
    return out


def fit(pooled: np.ndarray, noun_sets: Sequence[set[str]], *, epochs: int = 30, hidden: int = 512,
        seed: int = 0, report=lambda msg: None) -> NounWitness:
    """Train a witness on training photos: pooled features (N, D) and the nouns their references name."""
    from collections import Counter

    counts = Counter(n for s in noun_sets for n in s)
    nouns = sorted(n for n, c in counts.items() if c >= MIN_IMAGES)
    if not nouns:
        raise KvcapError(f"no noun is named for {MIN_IMAGES} or more training photos: too little data for a witness")
    torch.manual_seed(seed)
    witness = NounWitness(nouns, pooled.shape[1], hidden)
    raw = torch.from_numpy(np.asarray(pooled, np.float32))
    x = raw / raw.norm(dim=1, keepdim=True).clamp(min=1e-6)
    witness.mean.copy_(x.mean(0))
    witness.std.copy_(x.std(0) + 1e-6)
    y = torch.zeros(len(noun_sets), len(nouns))
    for i, s in enumerate(noun_sets):
        y[i, [witness.index[n] for n in s if n in witness.index]] = 1.0
    opt = torch.optim.AdamW(witness.parameters(), lr=1e-3, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        witness.train()
        for batch in torch.randperm(len(y), generator=gen).split(256):
            loss = nn.functional.binary_cross_entropy_with_logits(witness(raw[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        report(f"noun witness epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}")
    return witness.eval()
