"""kvcap: Korean video captioning.

    from kvcap import Captioner
    cap = Captioner.from_pretrained()
    for seg in cap.caption_video("video.mp4").segments:
        print(seg.start, seg.end, seg.text)
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Captioner", "KvcapError", "__version__"]


def __getattr__(name: str):
    # import lazily: `import kvcap` stays cheap for the CLI's --help
    if name == "Captioner":
        from .captioner import Captioner

        return Captioner
    if name == "KvcapError":
        from .errors import KvcapError

        return KvcapError
    raise AttributeError(name)
