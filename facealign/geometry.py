"""Pixel-centre rescaling: the one owner of ``q = (p + 0.5) * s - 0.5``.

With pixel centres at integer coordinates (:mod:`facealign.constants`), an
image of ``W`` pixels spans ``[-0.5, W - 0.5]``. Resizing it by ``s`` (``W' = s W``)
maps the *edges* onto each other, so a point ``p`` of the image lands at
``q = (p + 0.5) * s - 0.5`` in the resized one, and back at
``p = (q + 0.5) / s - 0.5``. The same rule rescales box corners (a box's edges
are pixel edges), template points to another crop size, and the working-image
coordinates of a photo decoded at reduced resolution to its original pixels.

``scale`` is a number (both axes) or ``(sx, sy)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["from_resized", "from_resized_matrix", "to_resized", "to_resized_matrix"]

Scale = float | tuple[float, float] | np.ndarray


def _xy(scale: Scale) -> tuple[float, float]:
    values = np.asarray(scale, np.float64).reshape(-1)
    if values.size == 1:
        return float(values[0]), float(values[0])
    if values.size != 2:
        raise ValueError(f"scale must be a number or (sx, sy), got {scale!r}")
    return float(values[0]), float(values[1])


def _factor(scale: Scale, sy: float | None) -> float | np.ndarray:
    """The per-axis factor: a number when both axes agree, else ``[sx, sy]``."""
    sx, sy_ = _xy(scale if sy is None else (float(scale), float(sy)))  # type: ignore[arg-type]
    return sx if sx == sy_ else np.array([sx, sy_])


def to_resized(points: np.ndarray, scale: Scale, sy: float | None = None) -> np.ndarray:
    """``(..., 2)`` points (or box corners) of an image, in the image resized by ``scale``.

    ``q = (p + 0.5) * s - 0.5`` per axis; ``to_resized(points, sx, sy)`` is accepted too.
    """
    return (np.asarray(points, np.float64) + 0.5) * _factor(scale, sy) - 0.5


def from_resized(points: np.ndarray, scale: Scale, sy: float | None = None) -> np.ndarray:
    """``(..., 2)`` points (or box corners) of an image resized by ``scale``, back in the image.

    ``p = (q + 0.5) / s - 0.5`` per axis, the inverse of :func:`to_resized`;
    ``from_resized(points, sx, sy)`` is accepted too.
    """
    return (np.asarray(points, np.float64) + 0.5) / _factor(scale, sy) - 0.5


def to_resized_matrix(scale: Scale) -> np.ndarray:
    """The 3 x 3 affine map of :func:`to_resized` (``[[s, 0, (s - 1) / 2], [0, s, ...], [0, 0, 1]]``)."""
    sx, sy = _xy(scale)
    return np.array([[sx, 0.0, 0.5 * (sx - 1.0)], [0.0, sy, 0.5 * (sy - 1.0)], [0.0, 0.0, 1.0]])


def from_resized_matrix(scale: Scale) -> np.ndarray:
    """The 3 x 3 affine map of :func:`from_resized` (``[[1 / s, 0, 0.5 / s - 0.5], ...]``).

    ``scale`` may also be an ``(N, 2)`` array of ``(sx, sy)``: then ``N x 3 x 3`` maps.
    """
    values = np.asarray(scale, np.float64)
    batched = values.ndim == 2 and values.shape[1] == 2
    s = values if batched else np.array([_xy(scale)])
    maps = np.zeros((len(s), 3, 3))
    maps[:, 0, 0], maps[:, 0, 2] = 1 / s[:, 0], 0.5 / s[:, 0] - 0.5
    maps[:, 1, 1], maps[:, 1, 2] = 1 / s[:, 1], 0.5 / s[:, 1] - 0.5
    maps[:, 2, 2] = 1.0
    return maps if batched else maps[0]
