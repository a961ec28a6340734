"""Caption decoders. Each architecture is one readable file; `build` picks one by name."""
from __future__ import annotations

from .attend import Attend
from .base import CaptionModel, ModelConfig
from .show_tell import ShowTell

ARCHITECTURES: dict[str, type[CaptionModel]] = {"show-tell": ShowTell, "attend": Attend}


def build(config: ModelConfig) -> CaptionModel:
    try:
        cls = ARCHITECTURES[config.arch]
    except KeyError:
        raise ValueError(f"unknown architecture {config.arch!r}; choose from {sorted(ARCHITECTURES)}") from None
    return cls(config)


__all__ = ["ARCHITECTURES", "Attend", "CaptionModel", "ModelConfig", "ShowTell", "build"]
