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

Detectors other than the training one (dlib HOG) frame faces their own way;
:class:`DetectorBoxMap` maps their boxes, and their own five points where they
give them, to dlib's convention before step 1 (fitted per detector on the
training split by ``facealign fit-box-maps``, shipped in ``weights/box_maps.json``).

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

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .constants import NUM_POINTS, WEIGHTS_DIR

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
    def fit(cls, points: np.ndarray, boxes: np.ndarray) -> BoxFromLandmarks:
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

    def rebox(
        self, points: np.ndarray, boxes: np.ndarray, scale_range: tuple[float, float] = (1 / 3, 3.0)
    ) -> np.ndarray:
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
        # summed feature by feature, per face: a face's box does not depend on the
        # other faces of the batch (a matrix product's kernel depends on its shape)
        out = (feats[:, :, None] * self.coef[None]).sum(1)
        mid = centre + out[:, :2] * spread[:, None]
        half = 0.5 * np.exp(out[:, 2:]) * spread[:, None]
        boxes = np.concatenate([mid - half, mid + half], axis=1)
        return boxes, valid & np.isfinite(boxes).all(1)

    @classmethod
    def from_tensor(cls, t: Any) -> BoxFromLandmarks:
        """From the coefficients as an array (run-time weights) or a tensor (training weights; not imported here)."""
        return cls(np.array(t.numpy() if hasattr(t, "numpy") else t, np.float64))


# --------------------------------------------------------------------------- #
# Per-detector box maps: another detector's output -> the training box convention
# --------------------------------------------------------------------------- #

#: Where the fitted per-detector maps ship (``facealign fit-box-maps`` writes it).
BOX_MAPS_FILE = WEIGHTS_DIR / "box_maps.json"


@dataclass(frozen=True)
class DetectorBoxMap:
    """The box the training detector (dlib HOG) would give, from another detector's output.

    The engines were trained on dlib boxes. A detector that frames faces
    differently (tighter, lower, with its own five points) is mapped to that
    convention before the landmark passes; re-boxing then does the rest.

    Attributes
    ----------
    detector : str
        Name of the detector the map was fitted for.
    box_offset : ndarray (2,)
        Centre shift, in widths and heights of the detector's box.
    box_scale : ndarray (2,)
        Width and height factors (geometric means over the fitting faces).
    from_points : BoxFromLandmarks or None
        For detectors that give five points: the box those points imply (fitted
        on the detector's own points against dlib's boxes); used wherever it is
        plausible, the box map elsewhere.
    faces : int
        Training faces the map was fitted on.
    """

    detector: str
    box_offset: np.ndarray
    box_scale: np.ndarray
    from_points: BoxFromLandmarks | None = None
    faces: int = 0

    @classmethod
    def fit(
        cls, detector: str, boxes: np.ndarray, target_boxes: np.ndarray, points: np.ndarray | None = None
    ) -> DetectorBoxMap:
        """Fit on faces found by both: the detector's ``boxes`` (and ``points``) against ``target_boxes``."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        target = np.asarray(target_boxes, np.float64).reshape(-1, 4)
        ok = np.isfinite(boxes).all(1) & np.isfinite(target).all(1)
        if points is not None:
            points = np.asarray(points, np.float64).reshape(-1, NUM_POINTS, 2)
            ok &= np.isfinite(points).all((1, 2))
        if ok.sum() < 2 * NUM_FEATURES:
            raise ValueError(f"need at least {2 * NUM_FEATURES} faces found by both detectors, got {ok.sum()}")
        size = boxes[ok, 2:] - boxes[ok, :2]
        centre = (boxes[ok, :2] + boxes[ok, 2:]) / 2
        t_size = target[ok, 2:] - target[ok, :2]
        t_centre = (target[ok, :2] + target[ok, 2:]) / 2
        offset = ((t_centre - centre) / size).mean(0)
        scale = np.exp(np.log(t_size / size).mean(0))
        from_points = BoxFromLandmarks.fit(points[ok], target[ok]) if points is not None else None
        return cls(detector, offset, scale, from_points, int(ok.sum()))

    def apply(self, boxes: np.ndarray, points: np.ndarray | None = None) -> np.ndarray:
        """Training-convention boxes ``N x 4`` for the detector's ``boxes`` (and its ``points``)."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        size = boxes[:, 2:] - boxes[:, :2]
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + np.asarray(self.box_offset) * size
        half = size * np.asarray(self.box_scale) / 2
        mapped = np.concatenate([centre - half, centre + half], 1)
        if self.from_points is not None and points is not None and len(boxes):
            mapped = self.from_points.rebox(points, mapped)
        return mapped

    def to_json(self) -> dict:
        return {
            "box_offset": np.round(self.box_offset, 6).tolist(),
            "box_scale": np.round(self.box_scale, 6).tolist(),
            "from_points": None if self.from_points is None else np.round(self.from_points.coef, 8).tolist(),
            "faces": self.faces,
        }

    @classmethod
    def from_json(cls, detector: str, obj: dict) -> DetectorBoxMap:
        points = obj.get("from_points")
        return cls(
            detector,
            np.asarray(obj["box_offset"], np.float64),
            np.asarray(obj["box_scale"], np.float64),
            None if points is None else BoxFromLandmarks(np.asarray(points, np.float64)),
            int(obj.get("faces", 0)),
        )


def load_box_maps(path: str | Path = BOX_MAPS_FILE) -> dict[str, DetectorBoxMap]:
    """The fitted maps by detector name (empty when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {name: DetectorBoxMap.from_json(name, obj) for name, obj in data.get("maps", {}).items()}


def box_map_for(detector: str) -> DetectorBoxMap | None:
    """The shipped map for a detector name; None for the training detector and unknown ones."""
    return _shipped_maps().get(detector)


@lru_cache(maxsize=1)
def _shipped_maps() -> dict[str, DetectorBoxMap]:
    return load_box_maps()


def training_boxes(detector: str, boxes: np.ndarray, points: np.ndarray | None = None) -> np.ndarray:
    """``boxes`` (and the detector's ``points``) of detector ``detector`` in the training box convention.

    Applies the shipped :class:`DetectorBoxMap` of that detector; boxes of the
    training detector and of detectors without a map are returned unchanged
    (as float64 ``N x 4``).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    box_map = box_map_for(detector)
    return boxes if box_map is None else box_map.apply(boxes, points)
