"""What every caption decoder shares: the config, and teacher-forced training on top of `step`.

A decoder sees a segment as features (B, T, R, D): T frames of R regions (the 7x7 grid)
of D dims, with `frame_mask` (B, T) marking real frames (segments are padded to the
longest in a batch). An image is a one-frame segment.

Decoding (greedy, beam) only needs two methods, so it works for every architecture:
    memory, state = model.prepare(feats, frame_mask)
    logits, state = model.step(tokens, state, memory)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

from ..features import ENCODER_NAME, ENCODERS


LIMITS = {"vocab_size": 1 << 20, "max_len": 512}  # others: at most 16384 (far above any real model)


@dataclass
class ModelConfig:
    arch: str = "attend"  # "attend" or "show-tell"
    vocab_size: int = 0
    feature_dim: int = 1280  # EfficientNet-Lite0 channels
    embed_dim: int = 256
    hidden_dim: int = 512
    attn_dim: int = 256
    dropout: float = 0.5
    max_len: int = 32  # morphemes, <eos> included
    encoder: str = ENCODER_NAME  # which features it reads (features.ENCODERS)
    # attributes (Yao et al. 2017): the encoder's own ImageNet class scores as a second
    # input; 0 = off, 1000 = on (the classifier head's weights are stored with the model)
    classes: int = 0
    # caption styles: one per training dataset (the model predicts which fits a picture),
    # plus "general" when a dataset marks short, general captions; empty = no styles
    sources: list = field(default_factory=list)
    general: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        """A config read from JSON, each value checked for its type and range (ValueError)."""
        if not isinstance(data, dict):
            raise ValueError(f"the model config must be an object, not {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        for key, value in data.items():
            want = known[key].type
            ok = {"int": isinstance(value, int) and not isinstance(value, bool),
                  "float": isinstance(value, (int, float)) and not isinstance(value, bool),
                  "str": isinstance(value, str), "bool": isinstance(value, bool),
                  "list": isinstance(value, list) and all(isinstance(v, str) for v in value)}[want]
            if not ok:
                raise ValueError(f"config {key} must be {want}, not {value!r}")
        config = cls(**data)
        for key in ("vocab_size", "feature_dim", "embed_dim", "hidden_dim", "attn_dim", "max_len"):
            if not 1 <= getattr(config, key) <= LIMITS.get(key, 1 << 14):
                raise ValueError(f"config {key} {getattr(config, key)} is out of range")
        if not 0 <= config.dropout < 1 or config.classes not in (0, 1000):
            raise ValueError("config dropout must be in [0, 1) and classes 0 or 1000")
        if config.encoder not in ENCODERS:
            raise ValueError(f"config encoder {config.encoder!r} is not one of {', '.join(ENCODERS)}")
        return config

    @property
    def n_styles(self) -> int:
        return len(self.sources) + int(self.general)

    def style_id(self, name: str) -> int:
        """Index of a style: a source's name, or "general"."""
        names = list(self.sources) + (["general"] if self.general else [])
        if name not in names:
            raise ValueError(f"unknown style {name!r}; this model has {names}")
        return names.index(name)


def masked_mean(feats: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Mean over regions and real frames: (B, T, R, D) -> (B, D)."""
    per_frame = feats.mean(dim=2)  # (B, T, D)
    w = frame_mask.to(per_frame.dtype).unsqueeze(-1)
    return (per_frame * w).sum(1) / w.sum(1).clamp(min=1.0)


class CaptionModel(nn.Module):
    config: ModelConfig

    def prepare(self, feats: torch.Tensor, frame_mask: torch.Tensor, style: torch.Tensor | None = None):
        """Memory and initial state; `style` (B,) picks a caption style where the model has them
        (an entry below 0: the style the model picks for that segment)."""
        raise NotImplementedError

    def step(self, tokens: torch.Tensor, state, memory):
        """One word: `tokens` and `state` hold k rows per segment (k beams, consecutive rows; k
        = 1 in training), `memory` one per segment (or one per row) -> logits, new state."""
        raise NotImplementedError

    @staticmethod
    def select(tree, index: torch.Tensor):
        """Reorder/expand the batch dim of a state or memory (tuples of tensors) for beam search."""
        if tree is None:
            return None
        if isinstance(tree, torch.Tensor):
            return tree.index_select(0, index)
        return type(tree)(CaptionModel.select(t, index) for t in tree)

    def forward(self, feats: torch.Tensor, frame_mask: torch.Tensor, tokens_in: torch.Tensor,
                style: torch.Tensor | None = None, return_memory: bool = False):
        """Teacher forcing: tokens_in (B, L) starting with <bos> -> logits (B, L, V) (and the memory)."""
        memory, state = self.prepare(feats, frame_mask, style)
        out = []
        for t in range(tokens_in.size(1)):
            logits, state = self.step(tokens_in[:, t], state, memory)
            out.append(logits)
        logits = torch.stack(out, dim=1)
        return (logits, memory) if return_memory else logits
