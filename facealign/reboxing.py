"""Re-boxing: the face box that five landmarks imply, for a second landmark pass.

The landmark networks were trained on crops of the default detector's boxes.
A box from another detector (tighter, looser, shifted), or a detector box that
sits unusually on a face, gives the network a crop it has not seen the like of,
and the points suffer. Re-boxing makes the engine depend much less on the box:

1. a first pass on the given box predicts the five points;
2. :class:`BoxFromLandmarks` turns those points into the box that the default
   detector would be expected to give for them (:meth:`BoxFromLandmarks.rebox`
   keeps the given box where the points imply an implausible one);
3. the second (reported) pass runs on a crop of that box.

:class:`BoxFromLandmarks` is a linear least-squares model fitted on the training
split (ground-truth points against detector boxes). With ``c`` the points'
centroid and ``s`` their RMS distance to it (both in pixels), the features are
``1`` and the ten normalised coordinates ``(p - c) / s`` (x before y, MTFL
point order), and the outputs are the box centre offset ``(centre - c) / s``
(x, y) and ``log(width / s)``, ``log(height / s)``. The model is invariant to
translating and scaling the image, as a box model should be. (The normalised
coordinates sum to zero in x and in y, so the coefficients are defined up to
those two dependencies; ``lstsq`` picks the minimum-norm ones, and the boxes do
not depend on the choice.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .constants import NUM_POINTS

#: Number of input features: a constant and the ten normalised coordinates.
NUM_FEATURES = 1 + 2 * NUM_POINTS
#: Outputs: centre offset x, centre offset y, log width, log height (over ``s``).
NUM_OUTPUTS = 4


def _normalized_shape(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centroid ``N x 2``, RMS spread ``N``, features ``N x NUM_FEATURES`` and a validity mask ``N``.

    A point set is valid when it is finite and not all coincident; the features
    of invalid sets are meaningless.
    """
    points = np.asarray(points, np.float64)
    if points.ndim != 3 or points.shape[1:] != (NUM_POINTS, 2):
        raise ValueError(f"expected N x {NUM_POINTS} x 2 points, got {points.shape}")
    centre = points.mean(1)
    spread = np.sqrt(((points - centre[:, None]) ** 2).sum(2).mean(1))
    valid = np.isfinite(spread) & (spread > 0)
    safe = np.where(valid, spread, 1.0)
    shape = ((points - centre[:, None]) / safe[:, None, None]).reshape(len(points), -1)
    return centre, spread, np.concatenate([np.ones((len(points), 1)), shape], axis=1), valid


@dataclass(frozen=True)
class BoxFromLandmarks:
    """Expected detector box for five points (see the module docstring).

    Attributes
    ----------
    coef : ndarray, shape (NUM_FEATURES, NUM_OUTPUTS)
        Least-squares coefficients.
    """

    coef: np.ndarray

    def __post_init__(self) -> None:
        coef = np.asarray(self.coef, np.float64)
        if coef.shape != (NUM_FEATURES, NUM_OUTPUTS) or not np.all(np.isfinite(coef)):
            raise ValueError(f"coef must be a finite {NUM_FEATURES} x {NUM_OUTPUTS} array, got {coef.shape}")
        object.__setattr__(self, "coef", coef)

    @classmethod
    def fit(cls, points: np.ndarray, boxes: np.ndarray) -> "BoxFromLandmarks":
        """Fit on ground-truth ``points`` (``N x 5 x 2``) and detector ``boxes`` (``N x 4``)."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        centre, spread, feats, valid = _normalized_shape(points)
        if not valid.all():
            raise ValueError("points must be finite and not all coincident")
        if len(boxes) != len(feats):
            raise ValueError(f"{len(feats)} point sets but {len(boxes)} boxes")
        if len(feats) < 2 * NUM_FEATURES:
            raise ValueError(f"need at least {2 * NUM_FEATURES} faces to fit, got {len(feats)}")
        wh = boxes[:, 2:] - boxes[:, :2]
        if np.any(wh <= 0):
            raise ValueError("boxes must have x2 > x1 and y2 > y1")
        target = np.concatenate(
            [((boxes[:, :2] + boxes[:, 2:]) / 2 - centre) / spread[:, None], np.log(wh / spread[:, None])], axis=1
        )
        coef, *_ = np.linalg.lstsq(feats, target, rcond=None)
        return cls(coef)

    def boxes_for(self, points: np.ndarray) -> np.ndarray:
        """Boxes ``N x 4`` (``x1, y1, x2, y2``, pixels) for points ``N x 5 x 2``."""
        boxes, valid = self._boxes(points)
        if not valid.all():
            raise ValueError("points must be finite and not all coincident")
        return boxes

    def rebox(self, points: np.ndarray, boxes: np.ndarray, scale_range: tuple[float, float] = (1 / 3, 3.0)) -> np.ndarray:
        """The boxes ``points`` imply, except where that is implausible: there ``boxes`` stay.

        Implausible: the points are not finite or all coincide, or the implied
        box's width is outside ``scale_range`` times the given box's (a first pass
        gone wild, e.g. on a box that holds no face).
        """
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        new, valid = self._boxes(points)
        with np.errstate(invalid="ignore"):
            ratio = (new[:, 2] - new[:, 0]) / (boxes[:, 2] - boxes[:, 0])
            keep = valid & (ratio >= scale_range[0]) & (ratio <= scale_range[1])
        return np.where(keep[:, None], new, boxes)

    def _boxes(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(points) == 0:
            return np.zeros((0, 4)), np.zeros(0, bool)
        centre, spread, feats, valid = _normalized_shape(points)
        out = feats @ self.coef
        mid = centre + out[:, :2] * spread[:, None]
        half = 0.5 * np.exp(out[:, 2:]) * spread[:, None]
        boxes = np.concatenate([mid - half, mid + half], axis=1)
        return boxes, valid & np.isfinite(boxes).all(1)

    def to_tensor(self) -> torch.Tensor:
        """The coefficients as a float64 tensor, for a weights file."""
        return torch.from_numpy(self.coef.copy())

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> "BoxFromLandmarks":
        return cls(t.detach().cpu().double().numpy())
