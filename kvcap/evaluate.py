"""`kvcap evaluate`: score a model on a split, beside two reference points.

- nearest neighbour: the first caption of the training example whose pooled feature is
  closest (cosine) — what a model must beat to have learnt more than retrieval;
- constant: the most frequent training caption for every input — what a model that says
  one sentence everywhere gets.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from . import data as datasets
from . import metrics, modelfile
from .captions import generate
from .errors import KvcapError
from .train import TrainConfig, example_features


def _split_ids(model_dir: Path, split: str) -> set[str] | None:
    if split == "all":
        return None
    f = model_dir / "split.json"
    if not f.exists():
        raise KvcapError("the model has no split.json; use --split all", model_dir)
    ids = json.loads(f.read_text(encoding="utf-8"))
    if split not in ids:
        raise KvcapError(f"unknown --split {split!r}; use test, validation or all")
    return set(map(str, ids[split]))


def evaluate_model(model_dir, data_path, fmt: str = "aihub-coco", root=None, *, split: str = "test",
                   beam: int | None = None,
                   baselines: bool = False, progress: bool = True, n_examples: int = 0) -> dict:
    loaded = modelfile.load(model_dir)
    beam = beam or int(loaded.meta.get("decoding", {}).get("beam", 3))
    model_dir = Path(model_dir) if model_dir else modelfile.default_dir()
    examples = datasets.load(data_path, fmt, root)
    wanted = _split_ids(model_dir, split)
    held: set[str] = set()  # validation and test ids never serve as the baselines' training set
    if (model_dir / "split.json").exists():
        held = _split_ids(model_dir, "validation") | _split_ids(model_dir, "test")
    cfg = TrainConfig(data=str(data_path), format=fmt, quiet=not progress)
    feats, kept = example_features(examples, cfg, report=lambda m: None)
    examples = [examples[i] for i in kept]
    chosen = [i for i, e in enumerate(examples) if wanted is None or e.id in wanted]
    if not chosen:
        raise KvcapError(f"no examples of the {split!r} split found in this data", data_path)
    refs = {i: examples[i].captions for i in chosen}

    caps = generate(loaded.model, loaded.vocab, [feats[i].astype(np.float32) for i in chosen], beam=beam)
    hyps = {i: c.text for i, c in zip(chosen, caps)}
    report = {"model": loaded.name, "split": split, "n": len(chosen), "beam": beam,
              "scores": _rounded(metrics.evaluate(hyps, refs))}
    if baselines:
        chosen_set = set(chosen)
        train = [i for i, e in enumerate(examples) if e.id not in held and i not in chosen_set]
        if not train:
            raise KvcapError("no training examples left for the baselines", data_path)
        report["baselines"] = {
            "nearest-neighbour": _rounded(metrics.evaluate(_nearest(feats, train, chosen, examples), refs)),
            "constant": _rounded(metrics.evaluate(_constant(train, chosen, examples), refs)),
        }
    report["examples"] = [{"id": examples[i].id, "media": str(examples[i].media[0]), "generated": hyps[i],
                           "references": refs[i]} for i in chosen[:n_examples]]
    return report


def _rounded(scores: dict) -> dict:
    return {k: round(v, 4) for k, v in scores.items()}


def _pooled(feats, idx) -> np.ndarray:
    x = np.stack([feats[i].astype(np.float32).mean(axis=(0, 1)) for i in idx])
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-6)


def _nearest(feats, train, chosen, examples) -> dict:
    sims = _pooled(feats, chosen) @ _pooled(feats, train).T
    best = sims.argmax(axis=1)
    return {i: examples[train[j]].captions[0] for i, j in zip(chosen, best)}


def _constant(train, chosen, examples) -> dict:
    counts = Counter(c for i in train for c in examples[i].captions)
    caption = min(counts, key=lambda c: (-counts[c], len(c), c))
    return {i: caption for i in chosen}


def format_table(report: dict) -> str:
    names = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "distinct"]
    rows = [(report["model"], report["scores"])] + list(report.get("baselines", {}).items())
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{report['split']} split, {report['n']} examples, beam {report['beam']}",
             "".ljust(width) + "".join(n.rjust(9) for n in names)]
    for name, s in rows:
        lines.append(name.ljust(width) + "".join(f"{s[n]:9.4f}" for n in names))
    for ex in report.get("examples", []):
        lines.append(f"\n{ex['media']}\n  생성: {ex['generated']}\n  정답: {ex['references'][0]}")
    return "\n".join(lines)
