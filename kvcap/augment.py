"""Training augmentation: photos made to look like frames of a video.

The training data are clean photos; kvcap captions frames of compressed, often small,
blurred or badly framed video. `video_like` damages a photo the way such frames are
damaged, so the decoder can learn to caption both (`kvcap train --video-like P`).
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter


def video_like(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A copy of `img` with some of: a crop to 55–85% of each side, a mirror flip,
    brightness and contrast changed, downscaling to 20–50% and back, blur, and JPEG at
    quality 8–30 (the block artefacts of low-bitrate H.264 look much the same)."""
    img = img.convert("RGB")
    w, h = img.size
    if rng.random() < 0.5:
        s = rng.uniform(0.55, 0.85)
        cw, ch = max(1, int(w * s)), max(1, int(h * s))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = img.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if rng.random() < 0.5:
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.6, 1.4))
        img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.6, 1.4))
    if rng.random() < 0.5:
        s = rng.uniform(0.2, 0.5)
        size = img.size
        img = img.resize((max(8, int(size[0] * s)), max(8, int(size[1] * s))), Image.BILINEAR).resize(size, Image.BILINEAR)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 2.0)))
    if rng.random() < 0.7:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(rng.integers(8, 31)))
        buf.seek(0)
        img = Image.open(buf)
        img.load()
    return img


def rng_for(key: str, seed: int) -> np.random.Generator:
    """The same damage for the same file and seed, whatever order files are read in."""
    return np.random.default_rng([int(key[:12], 16), seed])
