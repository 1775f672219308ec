"""Test-time augmentation beyond the mirror: small in-plane rotations, averaged (issue 16).

:class:`RotationTTA` wraps a :class:`~facealign.engine.LandmarkEngine`: each face
is also predicted on its image rotated by each angle about the box centre (the
box itself kept), the points are rotated back, and all predictions are averaged
in image pixels. It costs one full engine run per angle (with the default
``(-10, 0, 10)``, three times the engine's time); it is measured in
``bench/hard_tta.py`` and is not used by default anywhere.
"""

from __future__ import annotations

import cv2
import numpy as np


class RotationTTA:
    """``engine``'s predictions averaged over in-plane rotations ``angles`` (degrees)."""

    def __init__(self, engine, angles=(-10.0, 0.0, 10.0)) -> None:
        self.engine = engine
        self.angles = tuple(float(a) for a in angles)

    def predict_faces(self, images, owner, boxes, return_quality: bool = False):
        if return_quality:
            raise ValueError("RotationTTA gives no quality figures")
        owner = np.asarray(owner, np.intp).reshape(-1)
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        total = np.zeros((len(boxes), 5, 2))
        for angle in self.angles:
            if angle == 0:
                total += self.engine.predict_faces(images, owner, boxes)
                continue
            rotated, inverse = [], []
            for k, c in zip(owner, centres):
                image = images[k]
                m = cv2.getRotationMatrix2D((float(c[0]), float(c[1])), angle, 1.0)
                rotated.append(
                    cv2.warpAffine(
                        image,
                        m,
                        (image.shape[1], image.shape[0]),
                        flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE,
                    )
                )
                inverse.append(cv2.invertAffineTransform(m))
            pts = self.engine.predict_faces(rotated, np.arange(len(boxes)), boxes)
            back = np.asarray(inverse)
            total += np.einsum("nij,nkj->nki", back[:, :, :2], pts) + back[:, None, :, 2]
        return total / len(self.angles)
