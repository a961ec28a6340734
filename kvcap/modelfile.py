"""A model is a folder: config.json + model.safetensors + vocab.json (+ README.md, the card;
+ witness.safetensors, the noun witness that decoding consults, witness.py).

Loading reads JSON and safetensors only, so a model folder from anywhere executes no
code. The default model ships inside the package and loads the same way.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import KvcapError
from .korean import Vocab
from .models import ARCHITECTURES, CaptionModel, ModelConfig, build

DEFAULT_MODEL = "koflickr-koscenes-attend"
FILES = ("config.json", "model.safetensors", "vocab.json")


@dataclass
class Loaded:
    model: CaptionModel
    vocab: Vocab
    name: str
    meta: dict = field(default_factory=dict)  # training data, decoding defaults, scores
    witness: object = None  # witness.NounWitness, where the folder has witness.safetensors


def default_dir() -> Path:
    return Path(str(resources.files("kvcap") / "pretrained" / DEFAULT_MODEL))


def save(folder: str | Path, model: CaptionModel, vocab: Vocab, meta: dict | None = None,
         card: str | None = None, half: bool = False) -> Path:
    """Write the model files into `folder`, each atomically (config.json last).

    Other files in the folder (a training log, checkpoints) are left alone. `half` stores
    float16 weights (half the size; loading casts them back to float32).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if half else None
    state = {k: v.detach().cpu().to(dtype or v.dtype).contiguous() for k, v in model.state_dict().items()}
    _atomic(folder / "model.safetensors", lambda p: save_file(state, str(p)))
    _atomic(folder / "vocab.json", vocab.save)
    if card is not None:
        _atomic(folder / "README.md", lambda p: p.write_text(card, encoding="utf-8"))
    config = {"model": model.config.to_dict(), **(meta or {})}
    text = json.dumps(config, ensure_ascii=False, indent=2)
    _atomic(folder / "config.json", lambda p: p.write_text(text, encoding="utf-8"))
    return folder


def update_meta(folder: str | Path, entries: dict) -> None:
    """Set top-level entries of a model's config.json (atomically); the weights are untouched."""
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update(entries)
    text = json.dumps(config, ensure_ascii=False, indent=2)
    _atomic(path, lambda p: p.write_text(text, encoding="utf-8"))


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # some writers create private files; a model is meant to be shared
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_meta(config: dict) -> None:
    """The entries outside "model" that loading uses: the name and the decoding defaults."""
    if not isinstance(config.get("name", ""), str):
        raise ValueError("config name must be a string")
    decoding = config.get("decoding", {})
    if not isinstance(decoding, dict):
        raise ValueError("config decoding must be an object")
    beam, penalty = decoding.get("beam", 3), decoding.get("length_penalty", 0.7)
    if not (isinstance(beam, int) and not isinstance(beam, bool) and 1 <= beam <= 50):
        raise ValueError(f"config decoding.beam must be a whole number from 1 to 50, not {beam!r}")
    if not (isinstance(penalty, (int, float)) and not isinstance(penalty, bool) and 0 <= penalty <= 5):
        raise ValueError(f"config decoding.length_penalty must be a number from 0 to 5, not {penalty!r}")


def check_shapes(weights: Path, model: torch.nn.Module) -> None:
    """The weights' tensor names and shapes are what the config built, read from the file's
    header: a mismatched file is refused before its tensors are read. (The config's ranges
    already bound what building the model can allocate.)"""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    with safe_open(str(weights), framework="pt") as f:
        found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    if found != expected:
        wrong = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
        k = wrong[0]
        raise ValueError(f"weights do not match the config: {k} is {found.get(k)} in the file, "
                         f"{expected.get(k)} by the config")


def load(folder: str | Path | None = None) -> Loaded:
    folder = Path(folder) if folder else default_dir()
    if not folder.is_dir():
        raise KvcapError("model folder not found", folder)
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise KvcapError(f"not a kvcap model folder (missing {', '.join(missing)})", folder)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if not isinstance(config, dict) or "model" not in config:
            raise ValueError("config.json is not a kvcap model config")
        model_cfg = ModelConfig.from_dict(config.pop("model"))
        if model_cfg.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {model_cfg.arch!r}")
        check_meta(config)
        vocab = Vocab.load(folder / "vocab.json")
        model = build(model_cfg)
        check_shapes(folder / "model.safetensors", model)  # before the weights are read
        state = load_file(str(folder / "model.safetensors"))
    except (ValueError, KeyError, TypeError, OSError, SafetensorError) as exc:
        raise KvcapError(f"damaged model folder ({exc})", folder) from None
    if model_cfg.vocab_size != len(vocab):
        raise KvcapError("vocab.json does not match config.json", folder)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise KvcapError(f"weights do not match the config ({str(exc).splitlines()[0]})", folder) from None
    model.eval()
    from .witness import NounWitness

    witness = NounWitness.load(folder)
    if witness is not None and witness.mean.numel() != model_cfg.feature_dim:
        raise KvcapError("witness.safetensors does not match the model's features", folder)
    return Loaded(model, vocab, config.get("name", folder.name), config, witness)
