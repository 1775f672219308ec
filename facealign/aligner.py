"""The public face of facealign: detect, landmark and align in a few calls.

>>> from facealign import FaceAligner, read_image
>>> aligner = FaceAligner()                      # RetinaFace, TCNN, arcface 112
>>> image = read_image("photo.jpg")              # H x W x 3 uint8 RGB
>>> faces = aligner.process(image)               # boxes, scores, 5 points each
>>> crop, matrix = aligner.align(image, faces[0].landmarks)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .alignment import Template, get_template
from .detection import Detector, check_image, get_detector
from .engine import DEFAULT_ENGINE, LandmarkEngine
from .pipeline import Face, Pipeline

__all__ = ["Face", "FaceAligner"]


class FaceAligner(Pipeline):
    """Face detection, five-point landmarks and similarity alignment.

    A :class:`facealign.pipeline.Pipeline` built from names: ``detect``,
    ``engine_boxes``, ``process`` and ``align`` are its steps, the ones the crop
    job and ``facealign landmarks`` run.

    Parameters
    ----------
    detector : str or Detector
        ``"retinaface"`` (default), another name of
        :data:`facealign.constants.BUILTIN_DETECTORS`, a plug-in name, or any
        object with ``detect(image) -> Detections``.
    engine : {"tcnn", "vanilla"} or LandmarkEngine
        Landmark engine; TCNN by default.
    template : str, path, Template or (5, 2) array
        Alignment target: ``"arcface"`` (default), ``"loose"``, a JSON file, or points.
    size : int or (width, height), optional
        Output crop size; the template is rescaled to it. Defaults to the
        template's own size (112 for ``arcface``).
    min_face : float, optional
        Smallest face the detector looks for, in pixels (a detector given by
        name only; default: the detector's own, 20 for the CNN detectors).
    """

    engine: LandmarkEngine

    def __init__(
        self,
        detector: str | Detector | None = None,
        engine: str | LandmarkEngine = DEFAULT_ENGINE,
        template: str | Path | Template | np.ndarray = "arcface",
        size: int | tuple[int, int] | None = None,
        min_face: float | None = None,
    ) -> None:
        super().__init__(
            get_detector(detector, min_face=min_face),
            engine if isinstance(engine, LandmarkEngine) else LandmarkEngine(engine),
            get_template(template, size),
        )

    def landmarks(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Five points (``N x 5 x 2``, pixels) for caller-supplied ``N x 4`` boxes, in one batch."""
        check_image(image)
        return self.engine.predict(image, boxes)
