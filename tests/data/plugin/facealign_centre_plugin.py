"""A detector plug-in installed only through its entry point (tests/test_detection.py)."""

import numpy as np

from facealign.detection import Detections


class CentreBoxDetector:
    """Reports one face: the central square of the image, half its shorter side wide."""

    name = "centre-box"

    def detect(self, image: np.ndarray) -> Detections:
        h, w = image.shape[:2]
        half = min(h, w) / 4
        box = [w / 2 - half, h / 2 - half, w / 2 + half, h / 2 + half]
        return Detections(np.array([box]), np.array([1.0]))
