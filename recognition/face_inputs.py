"""The test images handed to the aligners: decoded at the working resolution (or reduced, for
low-resolution probes) with their face boxes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from facealign.constants import WORK_MAX_SIDE
from facealign.geometry import to_resized
from facealign.imageio import ImageReadError, read_image_reduced

__all__ = ["FaceInput", "ReducedReader", "read_face_inputs"]


class ReducedReader(Protocol):
    """Reads an image reduced (e.g. :class:`recognition.conditions.ProbeReduction`)."""

    def read(self, root: str | Path, file: str) -> tuple[np.ndarray, float]:
        """The image ``file`` under ``root``, reduced, and its scale relative to the original."""
        ...


@dataclass
class FaceInput:
    """One image handed to an aligner.

    Attributes
    ----------
    file : str
        Path relative to the image root.
    image : numpy.ndarray
        Working image (``H x W x 3`` uint8 RGB).
    scale : float
        Working image scale relative to the original (pixel-centre rule).
    box : numpy.ndarray
        Face box in original-image pixels.
    """

    file: str
    image: np.ndarray
    scale: float
    box: np.ndarray

    @property
    def working_box(self) -> np.ndarray:
        return to_resized(np.asarray(self.box, np.float64).reshape(2, 2), self.scale).reshape(4)


def read_face_inputs(
    root: Path,
    files: Sequence[str],
    boxes: Mapping[str, Sequence[float] | np.ndarray],
    reduction: ReducedReader | None = None,
) -> list[FaceInput]:
    """Decode ``files`` (relative to ``root``) at the working resolution, with their face boxes.

    With a ``reduction`` (low-resolution probes) every image is decoded reduced
    by its factor instead. Detection already read every file, so a read error
    here means the file changed.
    """
    faces = []
    for f in files:
        try:
            if reduction is None:
                image, scale = read_image_reduced(root / f, WORK_MAX_SIDE)
            else:
                image, scale = reduction.read(root, f)
        except ImageReadError as exc:
            raise ValueError(f"cannot read {root / f}: {exc.reason}") from None
        faces.append(FaceInput(f, image, scale, np.asarray(boxes[f], np.float64)))
    return faces
