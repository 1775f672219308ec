"""dlib landmark peers, for the comparisons in ``bench/`` (not used by the library itself).

* :class:`DlibShapePredictor` -- dlib's 68-point ensemble-of-regression-trees
  shape predictor (Kazemi & Sullivan, CVPR 2014), the model file shipped by the
  ``face-recognition-models`` package, run on face boxes.
* :func:`reduce_68_to_5` -- the 68 iBUG points reduced to the 5 MTFL points so
  that both can be scored against the same ground truth.

The model file comes with the ``bench`` extra: ``pip install -e '.[bench]'``.

iBUG 300-W numbering (0-based) and image sides
----------------------------------------------
The 68-point markup is defined on the *subject*: points 36-41 outline the
subject's right eye, which a (non-mirrored) photo shows on the image's **left**,
and 42-47 the subject's left eye, on the image's right; mouth corner 48 is the
subject's right corner (image left) and 54 the subject's left corner (image
right); 30 is the tip of the nose. MTFL, like the rest of facealign
(:mod:`facealign.constants`), orders points by the *image's* sides, so

=============================  =========================
MTFL point                     iBUG 68 points (0-based)
=============================  =========================
image-left eye centre          mean of 36..41
image-right eye centre         mean of 42..47
nose tip                       30
image-left mouth corner        48
image-right mouth corner       54
=============================  =========================
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..constants import NUM_POINTS

__all__ = [
    "BENCH_INSTALL_HINT",
    "IBUG_LEFT_EYE",
    "IBUG_RIGHT_EYE",
    "IBUG_NOSE_TIP",
    "IBUG_LEFT_MOUTH",
    "IBUG_RIGHT_MOUTH",
    "DlibShapePredictor",
    "box_to_dlib_rect",
    "dlib_model_path",
    "reduce_68_to_5",
]

BENCH_INSTALL_HINT = "pip install -e '.[bench]'"

#: iBUG indices of the image-left eye contour (the subject's right eye).
IBUG_LEFT_EYE: tuple[int, ...] = tuple(range(36, 42))
#: iBUG indices of the image-right eye contour (the subject's left eye).
IBUG_RIGHT_EYE: tuple[int, ...] = tuple(range(42, 48))
IBUG_NOSE_TIP: int = 30
#: Image-left mouth corner (the subject's right).
IBUG_LEFT_MOUTH: int = 48
#: Image-right mouth corner (the subject's left).
IBUG_RIGHT_MOUTH: int = 54

_MODEL_FILES = {
    68: "shape_predictor_68_face_landmarks.dat",
    5: "shape_predictor_5_face_landmarks.dat",
}


def reduce_68_to_5(points68: np.ndarray) -> np.ndarray:
    """Reduce iBUG 68-point shapes to the 5 MTFL points (see the module table).

    Parameters
    ----------
    points68 : array_like, shape (68, 2) or (N, 68, 2)
        ``(x, y)`` points in iBUG order.

    Returns
    -------
    ndarray, shape (5, 2) or (N, 5, 2), float64
        Image-left eye, image-right eye, nose tip, image-left and image-right
        mouth corners.
    """
    pts = np.asarray(points68, np.float64)
    if pts.shape[-2:] != (68, 2) or pts.ndim not in (2, 3):
        raise ValueError(f"expected (68, 2) or (N, 68, 2) points, got shape {pts.shape}")
    out = np.stack(
        [
            pts[..., list(IBUG_LEFT_EYE), :].mean(-2),
            pts[..., list(IBUG_RIGHT_EYE), :].mean(-2),
            pts[..., IBUG_NOSE_TIP, :],
            pts[..., IBUG_LEFT_MOUTH, :],
            pts[..., IBUG_RIGHT_MOUTH, :],
        ],
        axis=-2,
    )
    return out


def box_to_dlib_rect(box: np.ndarray | Sequence[float]) -> tuple[int, int, int, int]:
    """A facealign box (continuous edges) as dlib's inclusive pixel indices ``(left, top, right, bottom)``.

    The inverse of :class:`facealign.detection.DlibHogDetector`, which turns a dlib
    rectangle into ``(left - 0.5, top - 0.5, right + 0.5, bottom + 0.5)``.
    """
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box, np.float64).reshape(4))
    if not (np.isfinite([x1, y1, x2, y2]).all() and x2 > x1 and y2 > y1):
        raise ValueError(f"box must be finite with x2 > x1 and y2 > y1, got {[x1, y1, x2, y2]}")
    left, top = int(round(x1 + 0.5)), int(round(y1 + 0.5))
    return left, top, max(left, int(round(x2 - 0.5))), max(top, int(round(y2 - 0.5)))


def dlib_model_path(num_points: int = 68) -> Path:
    """Path of dlib's 68- or 5-point shape predictor file from ``face-recognition-models``.

    The file is located without importing the package, whose ``__init__`` needs
    ``pkg_resources`` (gone from recent setuptools).

    Raises
    ------
    ImportError
        If ``face-recognition-models`` is not installed, with the install command.
    ValueError
        For a ``num_points`` other than 68 or 5.
    """
    if num_points not in _MODEL_FILES:
        raise ValueError(f"dlib ships 68- and 5-point shape predictors, not {num_points}")
    spec = importlib.util.find_spec("face_recognition_models")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / "models" / _MODEL_FILES[num_points]
        if path.is_file():
            return path
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise ImportError(
        f"dlib's {num_points}-point shape predictor needs the face-recognition-models package{where}; "
        f"install the bench extra: {BENCH_INSTALL_HINT}"
    )


def _import_dlib():
    try:
        import dlib
    except ImportError as exc:
        raise ImportError(f"the dlib peers need dlib (dlib-bin); install with {BENCH_INSTALL_HINT}") from exc
    return dlib


class DlibShapePredictor:
    """dlib's 68-point ERT shape predictor run on face boxes.

    Parameters
    ----------
    model_path : path, optional
        A dlib ``shape_predictor_68_face_landmarks.dat``; defaults to the one of
        ``face-recognition-models``.

    Notes
    -----
    Boxes are facealign boxes (continuous edges, pixel centres at integers) and
    are converted to dlib's inclusive pixel-index rectangles, the inverse of
    :class:`facealign.detection.DlibHogDetector`. dlib's part coordinates are
    pixel indices, i.e. facealign's pixel-centre frame. The predictor runs on
    one face at a time; it cannot batch.
    """

    name = "dlib-ert68"

    def __init__(self, model_path: str | Path | None = None) -> None:
        dlib = _import_dlib()
        self.model_path = Path(model_path) if model_path is not None else dlib_model_path(68)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"no dlib shape predictor at {self.model_path}")
        self._dlib = dlib
        self._predictor = dlib.shape_predictor(str(self.model_path))

    def __getstate__(self) -> dict:
        # dlib objects do not pickle; reload in the worker process.
        state = self.__dict__.copy()
        state["_predictor"] = None
        state["_dlib"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._dlib = _import_dlib()
        self._predictor = self._dlib.shape_predictor(str(self.model_path))

    def _rectangle(self, box: np.ndarray):
        return self._dlib.rectangle(*box_to_dlib_rect(box))

    def predict68(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """68 iBUG points per box, ``N x 68 x 2`` float64 pixels of ``image``.

        ``image`` is ``H x W x 3`` uint8 RGB (or ``H x W`` grey); ``boxes`` ``N x 4``.
        """
        image = np.ascontiguousarray(image)
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
            raise ValueError(f"expected an H x W x 3 uint8 RGB image, got shape {image.shape} dtype {image.dtype}")
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        out = np.empty((len(boxes), 68, 2))
        for i, box in enumerate(boxes):
            shape = self._predictor(image, self._rectangle(box))
            out[i] = [(p.x, p.y) for p in shape.parts()]
        return out

    def predict(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Five MTFL-order points per box, ``N x 5 x 2`` (like :meth:`LandmarkEngine.predict`)."""
        return reduce_68_to_5(self.predict68(image, boxes)).reshape(-1, NUM_POINTS, 2)

    def predict_many(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        """:meth:`predict` per image (one face at a time; dlib does not batch)."""
        if len(images) != len(boxes):
            raise ValueError("need one box array per image")
        return [self.predict(im, b) for im, b in zip(images, boxes)]

    def __repr__(self) -> str:
        return f"DlibShapePredictor({str(self.model_path)!r})"
