"""What a landmark step gives the pipeline: :class:`Landmarks`, and the :class:`LandmarkPredictor` protocol.

:class:`facealign.pipeline.Pipeline` accepts any landmark step with one method,
``landmarks(images, boxes) -> list[Landmarks]``: the shipped engines
(:class:`facealign.engine.LandmarkEngine`) and, e.g., the dlib peer of the
benchmarks. One result type whatever is asked: the points and the per-face
quality figures (empty for a step that has none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["LandmarkPredictor", "Landmarks"]


@dataclass(frozen=True)
class Landmarks:
    """The five points of one image's faces, and how far to trust them.

    Attributes
    ----------
    points : ndarray (N, 5, 2)
        float64, in the image's pixels (pixel-centre convention), MTFL point order.
    quality : dict of str to ndarray (N,)
        The per-face quality figures by name (:data:`facealign.quality.QUALITY_KEYS`:
        the signals, ``expected_error`` and ``p_fail``); empty when the step
        computes none (the faces then report NaN).
    """

    points: np.ndarray
    quality: dict[str, np.ndarray] = field(default_factory=dict)


@runtime_checkable
class LandmarkPredictor(Protocol):
    """A landmark step :class:`facealign.pipeline.Pipeline` can use."""

    def landmarks(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[Landmarks]:
        """One :class:`Landmarks` per image, for its face ``boxes`` (``N x 4`` each, in its pixels).

        All faces of all images should go through the network together.
        """
        ...
