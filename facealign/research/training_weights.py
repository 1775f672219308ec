"""The training weights format (``<engine>.pt``, torch) and the research-only calibration of an engine.

A training weights file is a ``torch.save`` dictionary of tensors and numbers
(:func:`facealign.research.training.weights_dict` builds it): ``vanilla`` (the
network's state dict), ``mean`` and ``std`` (the normalisation images),
``meta``, ``box_model``, for TCNN ``heads`` and ``gmm``, and optionally
``mirror_shift`` and ``quality``. :func:`save_weights` is its one writer,
:func:`load_weights` its reader (``weights_only=True``). The run time reads the
run-time weights compiled from it (:mod:`facealign.runtime_weights`,
:mod:`facealign.research.export`); importing :mod:`facealign.research` lets
:class:`facealign.engine.LandmarkEngine` read a ``.pt`` file directly (compiled in memory by
:func:`facealign.research.export.read_training_weights_as_runtime`).
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import WEIGHTS_DIR
from ..engine import LandmarkEngine, mirror_coordinates

__all__ = [
    "WEIGHTS_FORMAT_VERSION",
    "estimate_mirror_shift",
    "load_weights",
    "predict_pair",
    "save_weights",
    "weights_settings",
]

#: Version of the training weights layout.
WEIGHTS_FORMAT_VERSION = 1


def load_weights(path: str | Path) -> dict[str, Any]:
    """Load a training weights dictionary (``<engine>.pt``) safely (``weights_only=True``; needs torch)."""
    import torch

    path = Path(path)
    if not path.is_file():
        hint = ""
        if path.parent == WEIGHTS_DIR:
            # The wheel carries the run-time weights only; the training weights live in the source tree.
            hint = "; the shipped training weights come with a source checkout: pip install -e '.[train]' from a clone"
        raise FileNotFoundError(f"no weights file at {path}{hint}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "vanilla" not in state or "mean" not in state:
        raise ValueError(f"{path} is not a facealign weights file")
    if state.get("format", 0) > WEIGHTS_FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer facealign (format {state['format']})")
    return state


def save_weights(state: dict[str, Any], path: str | Path) -> Path:
    """Write a training weights dictionary (see :func:`facealign.research.training.weights_dict`) to ``path``,
    atomically; the one writer of ``<engine>.pt`` files (needs torch).

    Raises
    ------
    ValueError
        When ``state`` lacks what :func:`load_weights` requires.
    """
    import torch

    from ..imageio import write_bytes_atomic

    missing = [key for key in ("vanilla", "mean", "std", "meta") if key not in state]
    if missing:
        raise ValueError(f"not a facealign weights dictionary: no {', '.join(missing)}")
    state = {**state, "format": WEIGHTS_FORMAT_VERSION}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return write_bytes_atomic(path, buffer.getvalue())


def weights_settings(meta: dict[str, Any]) -> dict[str, Any]:
    """The training settings recorded in a weights file's ``meta["config"]`` (a dict; files
    written before 0.4 hold it as a JSON string)."""
    config = meta.get("config", {})
    return dict(json.loads(config)) if isinstance(config, str) else dict(config)


def estimate_mirror_shift(direct: np.ndarray, flipped: np.ndarray) -> float:
    """Mean x difference (box units) between direct and un-mirrored predictions.

    A network trained on labels whose x convention is not exactly mirror
    symmetric (a fraction of a pixel suffices) predicts, on a mirrored crop, points
    that are offset after un-mirroring. Averaging the two then biases x by half
    that offset. The shift is measured on validation faces when the weights are
    made, stored in the weights, and added back before averaging. On the MTFL
    validation split it is about 0.015 box widths.
    """
    return float(np.mean(direct[..., 0] - flipped[..., 0]))


def predict_pair(engine: LandmarkEngine, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Box-normalised points of ``engine`` on the crops and, un-mirrored, on their mirror images.

    Neither is averaged nor shifted; used to calibrate the mirror shift
    (:func:`estimate_mirror_shift`). ``engine`` itself is left as it is.
    """
    single = copy.copy(engine)
    single.mirror = False
    direct = single.predict_crops(crops)
    flipped = mirror_coordinates(single.predict_crops(np.asarray(crops)[:, :, ::-1]))
    return direct, flipped
