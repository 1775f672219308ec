"""facealign: face detection, five TCNN landmarks and aligned face crops.

Public API (imported lazily, so ``facealign --help`` does not load torch)::

    from facealign import FaceAligner, read_image
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.5.0"

_EXPORTS = {
    "AlignedFace": "aligner",
    "Face": "aligner",
    "FaceAligner": "aligner",
    "Template": "alignment",
    "estimate_similarity": "alignment",
    "get_template": "alignment",
    "warp_face": "alignment",
    "Detections": "detection",
    "Detector": "detection",
    "get_detector": "detection",
    "register_detector": "detection",
    "LandmarkEngine": "engine",
    "ImageReadError": "imageio",
    "read_image": "imageio",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'facealign' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
