"""The public face of facealign: detect, landmark and align in a few calls.

>>> from facealign import FaceAligner, read_image
>>> aligner = FaceAligner()                      # RetinaFace, TCNN, arcface 112
>>> image = read_image("photo.jpg")              # H x W x 3 uint8 RGB
>>> faces = aligner.process(image)               # boxes, scores, 5 points each
>>> crop, matrix = aligner.align(image, faces[0].landmarks)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .alignment import Template, get_template, warp_face
from .detection import Detections, Detector, check_image, get_detector
from .engine import DEFAULT_ENGINE, LandmarkEngine
from .quality import quality_json
from .reboxing import training_boxes


@dataclass(frozen=True)
class Face:
    """One detected face.

    Attributes
    ----------
    box : ndarray (4,) -- ``x1, y1, x2, y2`` in pixels of the source image.
    score : float -- detector confidence.
    landmarks : ndarray (5, 2) -- MTFL-order points, pixels of the source image.
    expected_error : float -- expected landmark error, % of the inter-ocular
        distance (:mod:`facealign.quality`); NaN when unknown.
    p_fail : float -- probability that the error exceeds 10%; NaN when unknown.
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray
    expected_error: float = float("nan")
    p_fail: float = float("nan")

    def to_json(self) -> dict:
        return {
            "box": [round(float(v), 2) for v in self.box],
            "score": round(float(self.score), 4),
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
            **quality_json(self.expected_error, self.p_fail),
        }


class FaceAligner:
    """Face detection, five-point landmarks and similarity alignment.

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

    def __init__(
        self,
        detector: str | Detector | None = None,
        engine: str | LandmarkEngine = DEFAULT_ENGINE,
        template: str | Path | Template | np.ndarray = "arcface",
        size: int | tuple[int, int] | None = None,
        min_face: float | None = None,
    ) -> None:
        self.detector = get_detector(detector, min_face=min_face)
        self.engine = engine if isinstance(engine, LandmarkEngine) else LandmarkEngine(engine)
        self.template = get_template(template, size)

    def detect(self, image: np.ndarray) -> Detections:
        """Face boxes and scores in an RGB image, largest first.

        Raises ``ValueError`` for anything but a non-empty ``H x W x 3`` uint8 array.
        """
        check_image(image)
        return self.detector.detect(image)

    def engine_boxes(self, detections: Detections) -> np.ndarray:
        """The boxes the landmark engine is given for these detections (``N x 4``).

        The detector's boxes mapped to the training detector's convention, with
        its own five points where it gives them
        (:func:`facealign.reboxing.training_boxes`); unchanged for the training
        detector (dlib) and for plug-ins, which re-boxing absorbs.
        """
        return training_boxes(getattr(self.detector, "name", ""), detections.boxes, detections.landmarks)

    def landmarks(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Five points (``N x 5 x 2``, pixels) for caller-supplied ``N x 4`` boxes, in one batch."""
        check_image(image)
        return self.engine.predict(image, boxes)

    def process(self, image: np.ndarray, largest_only: bool = False) -> list[Face]:
        """Detect every face and put five landmarks on each, with their quality figures."""
        det = self.detect(image)
        if largest_only:
            det = det.take(slice(0, 1))
        boxes = self.engine_boxes(det)
        pts, quality = self.engine.predict_faces([image], np.zeros(len(boxes), np.intp), boxes, return_quality=True)
        return [
            Face(b.astype(np.float64), float(s), p, float(e), float(f))
            for b, s, p, e, f in zip(det.boxes, det.scores, pts, quality["expected_error"], quality["p_fail"])
        ]

    def align(self, image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Warp the face with these five points onto the template.

        Returns the crop (``H x W x 3`` uint8 RGB) and the 2 x 3 image-to-crop matrix.
        """
        check_image(image)
        return warp_face(image, landmarks, self.template)
