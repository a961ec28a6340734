"""Training: `kvcap train`. Read this file top to bottom; the loop is `fit`.

- Features are computed once per file and cached (features.FeatureCache), so epochs
  only run the small decoder.
- The model kept is the one with the best validation score (`select`: CIDEr-D of greedy
  captions, or teacher-forced loss); training stops after `patience` epochs without a
  better one.
- A checkpoint (safetensors + JSON) is written after every epoch; `resume` continues
  from it. Each epoch's shuffling and dropout are seeded by (seed, epoch), so a resumed
  run ends with the same weights as an uninterrupted one.
- Several datasets train one model: splits are carved per dataset, and the validation
  scores (CIDEr-D, noun precision) are logged per dataset; the kept model is the one with
  the best mean over datasets, so the larger dataset cannot hide a worse smaller one.
- Under `torchrun --nproc-per-node N`, each process takes every N-th batch and
  DistributedDataParallel averages gradients (gloo on CPU, NCCL on GPUs).
"""
from __future__ import annotations

import atexit
import csv
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from . import data as datasets
from . import korean, metrics, modelfile
from .captions import generate, pad_segments
from .errors import KvcapError
from .features import ENCODER_NAME, FeatureCache, check_encoder, encode_files
from .inputs import VIDEO_EXTS
from .korean import Vocab
from .outputs import pid_alive
from .models import ModelConfig, build
from .progress import note, progress_bar



@dataclass
class TrainConfig:
    data: str | list[str]  # one dataset, several (same --format), or *.manifest.json files
    format: str = "aihub-coco"
    root: str | None = None
    out: str = "runs/model"
    arch: str = "attend"
    epochs: int = 15
    batch_size: int = 64
    lr: float = 5e-4
    lr_decay: float = 0.8  # multiplied in every `lr_decay_every` epochs
    lr_decay_every: int = 3
    weight_decay: float = 1e-5
    label_smoothing: float = 0.1
    grad_clip: float = 5.0
    patience: int = 4
    select: str = "cider"  # "cider" (higher is better) or "loss" (lower is better)
    min_count: int = 3
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    seed: int = 0
    resume: bool = False
    device: str = "auto"
    cache: str | None = None
    limit: int | None = None  # use only the first N examples (quick runs, tests)
    embed_dim: int = 256
    hidden_dim: int = 512
    attn_dim: int = 256
    dropout: float = 0.5
    max_len: int = 32
    attributes: bool = True  # ImageNet class scores as a second input (attend only)
    encoder: str = ENCODER_NAME  # one of features.ENCODERS; stored in the model's config
    # caption styles (attend only): "general" = one style for every dataset plus a "general"
    # style of short captions to fall back on when unsure; "dataset" = also one per dataset,
    # predicted per picture (the ablation found it hurt); "none"
    styles: str = "general"
    source_weight: float = 0.2  # weight of the which-dataset loss that trains the style head
    video_frames: int = 8  # frames sampled from a video example
    # share of training captions shown with the features of a video-like copy of their
    # photo (augment.py) instead of the clean photo's; 0 = clean photos only
    video_like: float = 0.0
    init: str | None = None  # start from this model folder's weights (same data, split and vocabulary)
    quiet: bool = False
    stop_after: int | None = None  # end the process after this epoch (as if killed; for tests)


@dataclass
class Prepared:
    """Everything an epoch needs, built once: tokenised captions, features, vocabulary."""
    vocab: Vocab
    feats: list[torch.Tensor]  # per example (T, R, D) float16
    pairs: list[tuple[int, list[int], int]]  # (example index, caption ids, caption number) of the training split
    val: list[int]
    test: list[int]
    examples: list[datasets.Example]
    refs: dict[int, list[str]] = field(default_factory=dict)
    tokens: list[list[list[str]]] = field(default_factory=list)  # per example, per caption
    sources: list[str] = field(default_factory=list)  # dataset names, in order
    general: bool = False  # some dataset marks short, general first captions
    style_names: list[str] = field(default_factory=list)  # the model's sources: dataset names, or ["any"]
    video_like: dict[int, torch.Tensor] = field(default_factory=dict)  # example -> features of its damaged copy

    def source_of(self, i: int) -> int:
        return self.sources.index(self.examples[i].source)

    def style_of(self, i: int, caption: int) -> int:
        """The style a training caption teaches: its dataset's (or the one shared), or "general" (the last)."""
        ex = self.examples[i]
        if ex.general_first and caption == 0:
            return len(self.style_names)
        return self.source_of(i) if len(self.style_names) > 1 else 0

    def by_source(self, indices: list[int]) -> dict[str, list[int]]:
        return {name: [i for i in indices if self.examples[i].source == name] for name in self.sources}


# ----------------------------------------------------------------------------- setup


def _dist() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        # left to interpreter teardown, gloo's threads can abort a rank that exits first (SIGABRT)
        atexit.register(torch.distributed.destroy_process_group)
    return (torch.distributed.get_rank() if world > 1 else 0), world


def _device(name: str, rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", rank % max(1, torch.cuda.device_count()))
    return torch.device(name)


def example_features(examples: list[datasets.Example], cfg: TrainConfig, report) -> tuple[list[np.ndarray], list[int]]:
    """(T, R, D) float16 features per example; returns them and the indices that worked."""
    cache = FeatureCache(cfg.cache, check_encoder(cfg.encoder))
    images: list[Path] = []
    owner: list[tuple[int, int]] = []  # (example, frame slot)
    video_feats: dict[int, np.ndarray] = {}
    for i, ex in enumerate(examples):
        if len(ex.media) == 1 and ex.media[0].suffix.lower() in VIDEO_EXTS:
            try:
                video_feats[i] = _video_features(ex.media[0], cfg.video_frames, cache)
            except KvcapError as exc:
                report(f"record {ex.id}: {exc}")
            continue
        for j, m in enumerate(ex.media):
            images.append(m)
            owner.append((i, j))
    bad: set[int] = set()
    feats, ok = encode_files(images, cache=cache, progress=not cfg.quiet,
                             on_error=lambda k, exc: (bad.add(owner[k][0]), report(f"record {examples[owner[k][0]].id}: {exc}")))
    frames: dict[int, list] = {}
    for f, k in zip(feats, ok):
        frames.setdefault(owner[k][0], []).append(f)
    result, kept = [], []
    for i in range(len(examples)):
        if i in video_feats:
            result.append(video_feats[i])
            kept.append(i)
        elif i in frames and i not in bad:
            result.append(np.stack(frames[i]))
            kept.append(i)
    return result, kept


def _video_features(path: Path, n: int, cache: FeatureCache) -> np.ndarray:
    from .features import Encoder
    from .frames import sample_frames

    key = f"{cache.key(path)}-frames{n}"
    cached = cache.get(key)
    if cached is not None:
        return cached.reshape(n, -1, cached.shape[-1]) if cached.ndim == 2 else cached
    frames = sample_frames(path, n)
    feats = Encoder(name=cache.encoder_name).encode(frames).astype(np.float16)
    cache.put(key, feats)
    return feats


def video_like_features(prep: Prepared, cfg: TrainConfig) -> dict[int, torch.Tensor]:
    """Features of one video-like copy (augment.py) of each training photo, cached like the
    clean ones under a key naming the damage's seed. Video examples are left as they are."""
    from .augment import rng_for, video_like
    from .features import Encoder, load_image

    cache = FeatureCache(cfg.cache, cfg.encoder)
    photos = [i for i in sorted({i for i, _, _ in prep.pairs})
              if not any(m.suffix.lower() in VIDEO_EXTS for m in prep.examples[i].media)]
    result: dict[int, torch.Tensor] = {}
    encoder = None
    with progress_bar("video-like copies", total=len(photos), enabled=not cfg.quiet) as advance:
        for s in range(0, len(photos), 32):
            chunk = photos[s : s + 32]
            keys = {i: [f"{cache.key(m)}-videolike{cfg.seed}" for m in prep.examples[i].media] for i in chunk}
            found = {k: cache.get(k) for ks in keys.values() for k in ks}
            todo = [(k, m) for i in chunk for k, m in zip(keys[i], prep.examples[i].media) if found[k] is None]
            if todo:
                encoder = encoder or Encoder(name=cfg.encoder)
                imgs = [load_image(video_like(Image.open(m), rng_for(k, cfg.seed))) for k, m in todo]
                for (k, _), f in zip(todo, encoder.encode(np.stack(imgs))):
                    cache.put(k, f)
                    found[k] = f
            for i in chunk:
                result[i] = torch.from_numpy(np.stack([found[k] for k in keys[i]]).astype(np.float16))
            advance(len(chunk))
    return result


def specs_of(cfg: TrainConfig) -> list[datasets.DatasetSpec]:
    paths = [cfg.data] if isinstance(cfg.data, (str, Path)) else list(cfg.data)
    return datasets.dataset_specs([str(p) for p in paths], cfg.format, cfg.root)


def prepare(cfg: TrainConfig, rank: int = 0) -> Prepared:
    """Load, featurise, split and tokenise the data; build the vocabulary from the train split."""
    say = (lambda m: note(m, not cfg.quiet)) if rank == 0 else (lambda m: None)
    skipped: list[str] = []
    specs = specs_of(cfg)
    examples = []
    for spec in specs:
        part = datasets.load_specs([spec], report=skipped.append)
        if cfg.limit:  # per dataset, so a quick run still sees every dataset
            part = sorted(part, key=lambda e: e.id)[: cfg.limit]
        examples += part
    feats, kept = example_features(examples, cfg, skipped.append)
    examples = [examples[i] for i in kept]
    for msg in skipped[:20]:
        say(f"skipped {msg}")
    if len(skipped) > 20:
        say(f"... and {len(skipped) - 20} more skipped records")
    train_ex, val_ex, test_ex = datasets.split_per_source(examples, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    if not train_ex or not val_ex:
        raise KvcapError(f"too few usable examples ({len(examples)}) for a train/validation split", cfg.data)
    index = {id(e): i for i, e in enumerate(examples)}
    flat = [c for e in examples for c in e.captions]
    it = iter(korean.tokenize_many(flat))
    tokens = [[next(it) for _ in e.captions] for e in examples]
    prep = with_split(Prepared(Vocab([]), [torch.from_numpy(np.asarray(f, np.float16)) for f in feats], [], [], [],
                               examples, {i: e.captions for i, e in enumerate(examples)}, tokens,
                               [s.name for s in specs if any(e.source == s.name for e in examples)],
                               any(s.general_first for s in specs)),
                      [index[id(e)] for e in train_ex], [index[id(e)] for e in val_ex],
                      [index[id(e)] for e in test_ex], cfg)
    if cfg.video_like:
        prep.video_like = video_like_features(prep, cfg)
    for name, idx in prep.by_source(list(range(len(examples)))).items():
        say(f"data {name}: {len(idx)} examples")
    say(f"data: {len(train_ex)} train / {len(val_ex)} validation / {len(test_ex)} test examples, "
        f"{len(prep.pairs)} training captions, vocabulary {len(prep.vocab)}")
    return prep


def style_names(cfg: TrainConfig, sources: list[str], general: bool) -> list[str]:
    """The model's `sources` for cfg.styles: dataset names, one shared style, or none."""
    if cfg.arch != "attend" or cfg.styles == "none":
        return []
    if cfg.styles == "dataset" and (len(sources) > 1 or general):
        return list(sources)
    return ["any"] if cfg.styles == "general" and general else []


def with_split(prep: Prepared, train: list[int], val: list[int], test: list[int], cfg: TrainConfig) -> Prepared:
    """The same data with another split: vocabulary and training pairs from `train` only."""
    vocab = Vocab.build([t for i in train for t in prep.tokens[i]], cfg.min_count)
    pairs = [(i, vocab.encode(t)[: cfg.max_len - 1], j)
             for i in train for j, t in enumerate(prep.tokens[i])]
    return Prepared(vocab, prep.feats, pairs, list(val), list(test), prep.examples, prep.refs, prep.tokens,
                    prep.sources, prep.general, prep.style_names, prep.video_like)


# ----------------------------------------------------------------------------- batches


def make_batch(prep: Prepared, items: list[tuple[int, list[int], int]], device: torch.device,
               damaged: np.ndarray | None = None):
    """A padded batch; where `damaged[row]`, the row's picture is its video-like copy (if it has one)."""
    def picture(row: int, i: int) -> torch.Tensor:
        if damaged is not None and damaged[row] and i in prep.video_like:
            return prep.video_like[i]
        return prep.feats[i]

    feats, mask = pad_segments([picture(row, i).numpy() for row, (i, _, _) in enumerate(items)])
    length = max(len(ids) for _, ids, _ in items) + 1
    tokens_in = torch.zeros(len(items), length, dtype=torch.long)
    target = torch.zeros(len(items), length, dtype=torch.long)
    for row, (_, ids, _) in enumerate(items):
        tokens_in[row, : len(ids) + 1] = torch.tensor([prep.vocab.bos_id] + ids)
        target[row, : len(ids) + 1] = torch.tensor(ids + [prep.vocab.eos_id])
    style = torch.tensor([prep.style_of(i, j) for i, _, j in items])
    source = torch.tensor([prep.source_of(i) for i, _, _ in items])
    return (feats.to(device), mask.to(device), tokens_in.to(device), target.to(device), style.to(device),
            source.to(device))


def loss_fn(model, batch, label_smoothing: float = 0.0, source_weight: float = 0.0) -> torch.Tensor:
    """Caption cross-entropy; with styles, plus the loss of predicting each picture's dataset."""
    feats, mask, tokens_in, target, style, source = batch
    core = getattr(model, "module", model)  # under DDP
    styled = bool(core.config.n_styles)
    logits, memory = model(feats, mask, tokens_in, style if styled else None, return_memory=True)
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=0,
                           label_smoothing=label_smoothing)
    if len(core.config.sources) > 1 and source_weight:
        loss = loss + source_weight * F.cross_entropy(core.source_logits(memory[4]), source)
    return loss


@torch.no_grad()
def validation_loss(model, prep: Prepared, device, batch_size: int = 128) -> float:
    model.eval()
    items = [(i, prep.vocab.encode(t)[: model.config.max_len - 1], j)
             for i in prep.val for j, t in enumerate(prep.tokens[i])]
    total, count = 0.0, 0
    for s in range(0, len(items), batch_size):
        chunk = items[s : s + batch_size]
        total += loss_fn(model, make_batch(prep, chunk, device)).item() * len(chunk)
        count += len(chunk)
    return total / max(1, count)


def score_split(model, prep: Prepared, indices: list[int], beam: int = 1) -> tuple[dict, list[str]]:
    caps = generate(model, prep.vocab, [prep.feats[i].float().numpy() for i in indices], beam=beam)
    hyps = {i: c.text for i, c in zip(indices, caps)}
    refs = {i: prep.refs[i] for i in indices}
    return {**metrics.evaluate(hyps, refs), **metrics.grounding(hyps, refs)}, [c.text for c in caps]


def score_per_source(model, prep: Prepared, indices: list[int], beam: int = 1) -> dict[str, dict]:
    """Scores of each dataset's part of `indices`, and their mean over datasets ("all")."""
    per = {name: score_split(model, prep, idx, beam)[0] for name, idx in prep.by_source(indices).items() if idx}
    keys = set.intersection(*(set(v) for v in per.values()))
    return {**per, "all": {k: float(np.mean([v[k] for v in per.values()])) for k in keys}}


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(folder: Path, model, opt, state: dict) -> None:
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    opt_tensors, opt_meta = {}, {"param_groups": opt.state_dict()["param_groups"], "state": {}}
    for pid, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                opt_tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                opt_meta["state"].setdefault(str(pid), {})[k] = v
    save_file(opt_tensors, str(tmp / "optim.safetensors"))
    (tmp / "optim.json").write_text(json.dumps(opt_meta))
    (tmp / "state.json").write_text(json.dumps(state, ensure_ascii=False, indent=1))
    old = folder.with_name(folder.name + f".old{os.getpid()}")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old.exists():
        for f in old.iterdir():
            f.unlink()
        old.rmdir()


def remove_stale_checkpoints(folder: Path) -> None:
    """Half-written checkpoints (`checkpoint.tmp<pid>`, `.old<pid>`) of a process killed while saving."""
    for p in folder.parent.glob(folder.name + ".*"):
        m = re.fullmatch(re.escape(folder.name) + r"\.(tmp|old)(\d+)", p.name)
        if m and p.is_dir() and not pid_alive(int(m[2])):
            shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(folder: Path, model, opt) -> dict:
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    tensors = load_file(str(folder / "optim.safetensors"))
    meta = json.loads((folder / "optim.json").read_text())
    state: dict = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    for pid, extra in meta["state"].items():
        state.setdefault(int(pid), {}).update(extra)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return json.loads((folder / "state.json").read_text())


def weights_digest(model) -> str:
    h = hashlib.sha1()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- the loop


def new_model(cfg: TrainConfig, prep: Prepared):
    """A fresh model for cfg, and `prep` with its styles."""
    prep = replace(prep, style_names=style_names(cfg, prep.sources, prep.general))
    attend = cfg.arch == "attend"
    mcfg = ModelConfig(arch=cfg.arch, vocab_size=len(prep.vocab), embed_dim=cfg.embed_dim, hidden_dim=cfg.hidden_dim,
                       attn_dim=cfg.attn_dim, dropout=cfg.dropout, max_len=cfg.max_len, encoder=cfg.encoder,
                       classes=1000 if attend and cfg.attributes else 0,
                       sources=list(prep.style_names), general=bool(prep.style_names and prep.general))
    torch.manual_seed(cfg.seed)
    model = build(mcfg)
    if mcfg.classes:
        from .features import classifier_head

        w, b = classifier_head(cfg.encoder)
        model.cls_weight.copy_(torch.from_numpy(w))
        model.cls_bias.copy_(torch.from_numpy(b))
    return model, prep


def start_from(folder: str, prep: Prepared, encoder: str):
    """The model of `folder` to train on, and `prep` with its styles. Refused unless it was
    trained on these data: the same encoder and vocabulary and the same validation and test
    photos (split.json), so that its validation scores stay comparable and no test photo is
    trained on."""
    start = modelfile.load(folder)
    if start.model.config.encoder != encoder:
        raise KvcapError(f"--init: this model reads {start.model.config.encoder} features "
                         f"(train it with --encoder {start.model.config.encoder})", folder)
    if start.vocab.tokens != prep.vocab.tokens:
        raise KvcapError("--init: this model's vocabulary is not the one these data give "
                         "(train on the same datasets, --seed and --min-count)", folder)
    split_file = Path(folder) / "split.json"
    if not split_file.is_file():
        raise KvcapError("--init: the model has no split.json, so its test photos are unknown", folder)
    split = json.loads(split_file.read_text(encoding="utf-8")).get("datasets", {})
    for name, idx in {"validation": prep.by_source(prep.val), "test": prep.by_source(prep.test)}.items():
        for source, items in idx.items():
            if sorted(prep.examples[i].id for i in items) != sorted(split.get(source, {}).get(name, [])):
                raise KvcapError(f"--init: the {name} split of {source} differs from the model's split.json", folder)
    return start.model, replace(prep, style_names=list(start.model.config.sources), general=start.model.config.general)


def fit(cfg: TrainConfig, prep: Prepared | None = None) -> dict:
    rank, world = _dist()
    device = _device(cfg.device, rank)
    specs = specs_of(cfg)  # a bad manifest is refused before anything is written
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoint"
    if rank == 0:
        if not cfg.resume and (out / "config.json").exists():
            raise KvcapError("a model is already there (use --resume to continue it, or another --out)", out)
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_checkpoints(ckpt_dir)
    if prep is None:
        if world > 1 and rank != 0:
            torch.distributed.barrier()  # rank 0 fills the feature cache first; the others read it
        prep = prepare(cfg, rank)
        if world > 1 and rank == 0:
            torch.distributed.barrier()
    say = (lambda m: note(m, not cfg.quiet)) if rank == 0 else (lambda m: None)

    model, prep = start_from(cfg.init, prep, cfg.encoder) if cfg.init else new_model(cfg, prep)
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = {"epoch": 0, "best": None, "best_epoch": 0, "bad_epochs": 0, "history": [], "seconds": 0.0,
             "config": asdict(cfg)}
    if cfg.resume and (ckpt_dir / "state.json").exists():
        state = load_checkpoint(ckpt_dir, model, opt)
        say(f"resumed from epoch {state['epoch']} ({ckpt_dir})")
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(model)
    higher_better = cfg.select == "cider"
    meta = {"name": out.name, "data": [{"name": s.name, "path": Path(s.path).name, "format": s.format}
                                        for s in specs],
            "decoding": {"beam": 8}}  # the noun witness chooses among the finished hypotheses (package_model.py)
    if cfg.init:
        meta["init"] = Path(cfg.init).name

    while state["epoch"] < cfg.epochs and state["bad_epochs"] < cfg.patience:
        epoch = state["epoch"] + 1
        t0 = time.time()
        lr = cfg.lr * cfg.lr_decay ** ((epoch - 1) // cfg.lr_decay_every)
        for g in opt.param_groups:
            g["lr"] = lr
        # shuffling and dropout depend only on (seed, epoch): a resumed epoch replays exactly
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(prep.pairs))
        damaged = np.random.default_rng([cfg.seed, epoch, 1]).random(len(prep.pairs)) < cfg.video_like
        n_batches = len(order) // cfg.batch_size // world * world or world
        mine = [order[b * cfg.batch_size : (b + 1) * cfg.batch_size] for b in range(rank, n_batches, world)]
        train_model.train()
        total = 0.0
        with progress_bar(f"epoch {epoch}/{cfg.epochs}", total=len(mine), enabled=rank == 0 and not cfg.quiet) as advance:
            for idx in mine:
                batch = make_batch(prep, [prep.pairs[i] for i in idx], device, damaged[idx])
                loss = loss_fn(train_model, batch, cfg.label_smoothing, cfg.source_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                total += loss.item()
                advance(1)
        train_loss = total / max(1, len(mine))
        if world > 1:
            t = torch.tensor([train_loss], device=device)
            torch.distributed.all_reduce(t)
            train_loss = t.item() / world

        row = {"epoch": epoch, "lr": lr, "train_loss": round(train_loss, 5)}
        improved = False
        if rank == 0:
            row["val_loss"] = round(validation_loss(model, prep, device), 5)
            if cfg.select == "cider":
                per = score_per_source(model.cpu(), prep, prep.val, beam=1)
                model.to(device)
                row["val_cider"] = round(per["all"]["CIDEr-D"], 5)
                row["val_bleu4"] = round(per["all"]["BLEU-4"], 5)
                row["val_noun_precision"] = round(per["all"]["noun_precision"], 5)
                if len(prep.sources) > 1:
                    for name in prep.sources:
                        row[f"val_cider_{name}"] = round(per[name]["CIDEr-D"], 5)
                        row[f"val_noun_precision_{name}"] = round(per[name]["noun_precision"], 5)
            value = row["val_cider"] if higher_better else row["val_loss"]
            best = state["best"]
            improved = best is None or (value > best if higher_better else value < best)
        if world > 1:
            flag = torch.tensor([1.0 if improved else 0.0], device=device)
            torch.distributed.broadcast(flag, 0)
            improved = bool(flag.item())
        state["epoch"] = epoch
        state["seconds"] += time.time() - t0
        row["seconds"] = round(time.time() - t0, 1)
        if improved:
            state["best"] = row.get("val_cider") if higher_better else row.get("val_loss")
            state["best_epoch"] = epoch
            state["bad_epochs"] = 0
        else:
            state["bad_epochs"] += 1
        state["history"].append(row)
        if rank == 0:
            if improved:
                modelfile.save(out, model, prep.vocab, {**meta, "validation": row, "epoch": epoch})
            save_checkpoint(ckpt_dir, model, opt, state)
            _write_log(out / "train_log.csv", state["history"])
            mark = " *" if improved else ""
            say("epoch {epoch}: train loss {train_loss:.4f}, val loss {val_loss:.4f}".format(**row)
                + (f", val CIDEr-D {row['val_cider']:.4f}" if "val_cider" in row else "") + f" ({row['seconds']}s){mark}")
        if cfg.stop_after and epoch >= cfg.stop_after:
            return {"stopped_at": epoch}

    result = {"epochs": state["epoch"], "best_epoch": state["best_epoch"], "best": state["best"],
              "train_seconds": round(state["seconds"], 1)}
    if world > 1:
        digests = [None] * world
        torch.distributed.all_gather_object(digests, weights_digest(model))
        if len(set(digests)) != 1:
            raise RuntimeError(f"DDP ranks ended with different weights: {digests}")
        say(f"DDP: weights identical across {world} processes ({digests[0][:12]})")
        result["ddp_digest"] = digests[0]
    if rank == 0:
        best = modelfile.load(out)
        result.update(test_scores(best.model, prep, out, cfg, state))
        result["confidence"] = calibrate_on_validation(best, prep, out)
    return result


def calibrate_on_validation(best: modelfile.Loaded, prep: Prepared, out: Path, report=lambda m: None) -> dict:
    """Fit the kept model's noun witness on the training photos (witness.py), then how
    decoding weighs it and the confidence calibration on validation (confidence.py)."""
    from .confidence import calibrate_folder

    train = sorted({i for i, _, _ in prep.pairs})
    return calibrate_folder(out, best, [prep.feats[i].float().numpy() for i in prep.val],
                            [prep.refs[i] for i in prep.val],
                            train=([prep.feats[i].numpy() for i in train], [prep.examples[i].captions for i in train]),
                            report=report)


def test_scores(model, prep: Prepared, out: Path, cfg: TrainConfig, state: dict) -> dict:
    """Score the kept model on each dataset's test split (beam 5) and record it in config.json."""
    indices = prep.test or prep.val
    per = score_per_source(model, prep, indices, beam=5)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    config["test"] = {name: {k: round(v, 5) for k, v in scores.items()} for name, scores in per.items()}
    config["training"] = {"epochs": state["epoch"], "best_epoch": state["best_epoch"],
                          "seconds": round(state["seconds"], 1), "select": cfg.select,
                          "split": {"train": len({p[0] for p in prep.pairs}), "validation": len(prep.val),
                                    "test": len(prep.test), "seed": cfg.seed}}
    (out / "config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    split = {"datasets": {name: {"validation": [prep.examples[i].id for i in prep.by_source(prep.val)[name]],
                                 "test": [prep.examples[i].id for i in prep.by_source(prep.test)[name]]}
                          for name in prep.sources}}
    (out / "split.json").write_text(json.dumps(split, ensure_ascii=False))
    return {"test": config["test"]}


def _write_log(path: Path, history: list[dict]) -> None:
    keys = sorted({k for row in history for k in row}, key=lambda k: (k != "epoch", k))
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    os.replace(tmp, path)


def cross_validate(cfg: TrainConfig, folds: int) -> dict:
    """K-fold cross-validation over train+validation (the test split stays out).

    Fold k trains into `<out>/fold<k>` with the k-th part as validation; the result gives
    each fold's best validation score and test scores, and their mean and spread.
    """
    if folds < 2:
        raise KvcapError("--folds needs at least 2")
    base = prepare(cfg)
    pool = sorted(set(p[0] for p in base.pairs) | set(base.val))
    order = np.random.default_rng(cfg.seed).permutation(pool)
    parts = np.array_split(order, folds)
    runs = []
    for k in range(folds):
        val = sorted(int(i) for i in parts[k])
        train = sorted(int(i) for j, p in enumerate(parts) if j != k for i in p)
        fold_cfg = TrainConfig(**{**asdict(cfg), "out": str(Path(cfg.out) / f"fold{k + 1}")})
        note(f"fold {k + 1}/{folds}: {len(train)} train / {len(val)} validation", not cfg.quiet)
        runs.append(fit(fold_cfg, with_split(base, train, val, base.test, fold_cfg)))
    summary: dict = {"folds": runs}
    for key in ("best",) + tuple(f"test.{m}" for m in ("CIDEr-D", "BLEU-4", "METEOR", "ROUGE-L")):
        values = [r["best"] if key == "best" else r["test"]["all"][key.split(".", 1)[1]] for r in runs]
        summary[key] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
    (Path(cfg.out) / "cross_validation.json").write_text(json.dumps(summary, indent=2))
    return summary
