"""`kvcap evaluate`: score a model on each dataset's split, beside reference points.

Per dataset: BLEU/METEOR/ROUGE-L/CIDEr-D and grounding (noun precision, recall, hit; see
`metrics`), for the model and, with `baselines`, for
- nearest neighbour: the first caption of the training example whose pooled feature is
  closest (cosine), over the training examples of every dataset given — what a model
  must beat to have learnt more than retrieval;
- constant: the most frequent training caption for every input — what a model that says
  one sentence everywhere gets;
- human: each reference held against the other references of its item (grounding only)
  — the agreement people reach.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import data as datasets
from . import metrics, modelfile
from .captions import generate
from .confidence import Calibration
from .errors import KvcapError
from .train import TrainConfig, example_features


def split_ids(model_dir: Path, split: str, dataset: str, n_datasets: int) -> set[str] | None:
    """Ids of `split` ("test", "validation"; "all": None) of one dataset, from split.json.

    A model trained on one dataset (or before per-dataset splits: a flat split.json) is
    matched to whichever single dataset is evaluated, whatever its file is called.
    """
    if split == "all":
        return None
    if split not in ("test", "validation"):
        raise KvcapError(f"unknown --split {split!r}; use test, validation or all")
    f = model_dir / "split.json"
    if not f.exists():
        raise KvcapError("the model has no split.json; use --split all", model_dir)
    try:
        ids = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KvcapError(f"split.json is unreadable ({exc})", f) from None
    per = ids.get("datasets") if isinstance(ids, dict) else None
    if per is None:
        if n_datasets > 1:
            raise KvcapError("this model's split.json names no datasets; evaluate one dataset at a time", f)
        return set(map(str, ids[split]))
    if dataset not in per and n_datasets == 1 and len(per) == 1:
        dataset = next(iter(per))  # one dataset against a one-dataset model: the same data, renamed
    if dataset not in per:
        raise KvcapError(f"the model was not trained on a dataset named {dataset!r} "
                         f"(it knows {', '.join(sorted(per))}); use --split all", f)
    return set(map(str, per[dataset][split]))


@dataclass
class SplitData:
    examples: list[datasets.Example]
    feats: list[np.ndarray]
    chosen: dict[str, list[int]]  # dataset name -> indices of the evaluated split
    train: list[int]  # indices outside every held-out split (the baselines' pool)


def load_split(model_dir: Path, data_paths, fmt: str, root, split: str, progress: bool,
               encoder: str) -> SplitData:
    """The evaluated split of every dataset given, with features (cached) of the model's `encoder`."""
    paths = [data_paths] if isinstance(data_paths, (str, Path)) else list(data_paths)
    specs = datasets.dataset_specs([str(p) for p in paths], fmt, str(root) if root else None)
    examples = datasets.load_specs(specs)
    cfg = TrainConfig(data=[s.path for s in specs], quiet=not progress, encoder=encoder)
    feats, kept = example_features(examples, cfg, report=lambda m: None)
    examples = [examples[i] for i in kept]

    chosen_by: dict[str, list[int]] = {}
    held: set[tuple[str, str]] = set()  # validation and test never serve as the baselines' training set
    for spec in specs:
        wanted = split_ids(model_dir, split, spec.name, len(specs))
        chosen_by[spec.name] = [i for i, e in enumerate(examples)
                                if e.source == spec.name and (wanted is None or e.id in wanted)]
        if (model_dir / "split.json").exists():
            for part in ("validation", "test"):
                held |= {(spec.name, x) for x in split_ids(model_dir, part, spec.name, len(specs))}
        if not chosen_by[spec.name]:
            raise KvcapError(f"no examples of the {split!r} split found in this data", spec.path)
    chosen_all = {i for idx in chosen_by.values() for i in idx}
    train = [i for i, e in enumerate(examples) if (e.source, e.id) not in held and i not in chosen_all]
    return SplitData(examples, feats, chosen_by, train)


def evaluate_model(model_dir, data_paths, fmt: str = "aihub-coco", root=None, *, split: str = "test",
                   beam: int | None = None, baselines: bool = False, progress: bool = True,
                   n_examples: int = 0, style: str | None = None) -> dict:
    """Scores per dataset: {"model", "split", "beam", "datasets": {name: {...}}, "examples"}."""
    loaded = modelfile.load(model_dir)
    beam = beam or int(loaded.meta.get("decoding", {}).get("beam", 3))
    model_dir = Path(model_dir) if model_dir else modelfile.default_dir()
    if style is not None:
        try:
            loaded.model.config.style_id(style)
        except ValueError as exc:
            raise KvcapError(str(exc)) from None
    data = load_split(model_dir, data_paths, fmt, root, split, progress, loaded.model.config.encoder)
    examples, feats, train = data.examples, data.feats, data.train
    if baselines and not train:
        raise KvcapError("no training examples left for the baselines")

    cal = Calibration.for_model(loaded)
    report: dict = {"model": loaded.name, "split": split, "beam": beam, "style": style or "auto", "datasets": {}}
    shown: list[dict] = []
    for name, chosen in data.chosen.items():
        refs = {i: examples[i].captions for i in chosen}
        segs = [feats[i].astype(np.float32) for i in chosen]
        if style is None:  # what `kvcap caption` says: unsure captions in the general style
            caps = [c for c, _ in cal.generate(loaded.model, loaded.vocab, segs, beam=beam)]
        else:
            caps = generate(loaded.model, loaded.vocab, segs, beam=beam, style=style)
        hyps = {i: c.text for i, c in zip(chosen, caps)}
        part = {"n": len(chosen), "scores": score(hyps, refs)}
        if baselines:
            part["baselines"] = {"nearest-neighbour": score(_nearest(feats, train, chosen, examples), refs),
                                 "constant": score(_constant(train, chosen, examples), refs),
                                 "human": _rounded(metrics.human_grounding(refs))}
        report["datasets"][name] = part
        shown += [{"dataset": name, "id": examples[i].id, "media": str(examples[i].media[0]), "generated": hyps[i],
                   "references": refs[i]} for i in chosen[:n_examples]]
    report["examples"] = shown
    return report


def calibrate_model(model_dir, data_paths, fmt: str = "aihub-coco", root=None, *, progress: bool = True) -> dict:
    """Fit the model's noun witness on its training split, then its confidence calibration
    (and how decoding weighs the witness) on its validation split; store them in the folder."""
    from .confidence import calibrate_folder

    model_dir = Path(model_dir) if model_dir else modelfile.default_dir()
    loaded = modelfile.load(model_dir)  # a missing or damaged model is refused before the data is read
    data = load_split(model_dir, data_paths, fmt, root, "validation", progress, loaded.model.config.encoder)
    idx = [i for chosen in data.chosen.values() for i in chosen]
    train = ([data.feats[i] for i in data.train], [data.examples[i].captions for i in data.train])
    return calibrate_folder(model_dir, loaded, [data.feats[i].astype(np.float32) for i in idx],
                            [data.examples[i].captions for i in idx], train=train,
                            report=(lambda m: print(m, file=sys.stderr)) if progress else (lambda m: None))


def score(hyps: dict, refs: dict) -> dict:
    return _rounded({**metrics.evaluate(hyps, refs), **metrics.grounding(hyps, refs)})


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


NGRAM = ["BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "distinct"]
GROUNDING = ["noun_precision", "noun_recall", "noun_hit"]


def format_table(report: dict) -> str:
    heads = NGRAM + ["noun-P", "noun-R", "noun-hit"]
    lines = [f"{report['split']} split, beam {report['beam']}, style {report.get('style', 'auto')}"]
    for name, part in report["datasets"].items():
        rows = [(report["model"], part["scores"])] + list(part.get("baselines", {}).items())
        width = max(len(r[0]) for r in rows) + 2
        lines += ["", f"{name}: {part['n']} examples", "".ljust(width) + "".join(h.rjust(9) for h in heads)]
        for label, s in rows:
            cells = "".join(f"{s[m]:9.4f}" if m in s else "        -" for m in NGRAM + GROUNDING)
            lines.append(label.ljust(width) + cells)
    for ex in report.get("examples", []):
        lines.append(f"\n{ex['media']}\n  생성: {ex['generated']}\n  정답: {ex['references'][0]}")
    return "\n".join(lines)
