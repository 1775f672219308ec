"""Cut the network's square input crops out of images, given face boxes.

A box ``(x1, y1, x2, y2)`` is mapped onto the ``S x S`` crop (``S`` =
:data:`~facealign.constants.INPUT_SIZE`) so that its edges meet the crop's outer
pixel edges: with pixel centres at integer coordinates,
``x_crop = (x - x1) * S / (x2 - x1) - 0.5``. Box-normalised coordinates, the
network's output frame, are ``u = (x - x1) / (x2 - x1)`` so that
``u = (x_crop + 0.5) / S``.
"""

from __future__ import annotations

import cv2
import numpy as np

from .alignment import warp_affine, warp_affines
from .constants import INPUT_SIZE


def box_matrices(boxes: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """2 x 3 affine maps from image pixels to crop pixels, one per box (``N x 2 x 3``)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    if np.any(w <= 0) or np.any(h <= 0) or not np.all(np.isfinite(boxes)):
        raise ValueError("boxes must be finite with x2 > x1 and y2 > y1")
    sx, sy = size / w, size / h
    m = np.zeros((len(boxes), 2, 3))
    m[:, 0, 0] = sx
    m[:, 0, 2] = -boxes[:, 0] * sx - 0.5
    m[:, 1, 1] = sy
    m[:, 1, 2] = -boxes[:, 1] * sy - 0.5
    return m


def warp_crop(image: np.ndarray, matrix: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """Warp ``image`` by the 2 x 3 ``matrix`` into an ``size x size`` crop, anti-aliased.

    :func:`facealign.alignment.warp_affine` with the image's edge pixels
    replicated outside it (``BORDER_REPLICATE``).
    """
    return warp_affine(image, matrix, size, border_mode=cv2.BORDER_REPLICATE)


def crop_boxes(image: np.ndarray, boxes: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """The ``N x size x size x 3`` uint8 crops of ``boxes`` in one RGB image."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return crop_faces([image], boxes, np.zeros(len(boxes), np.intp), size)


def crop_faces(images, boxes: np.ndarray, owner: np.ndarray | None = None, size: int = INPUT_SIZE) -> np.ndarray:
    """Crops ``N x size x size x 3`` uint8 of ``boxes[i]`` in ``images[owner[i]]``.

    ``images`` is any sequence of RGB images (or an ``M x H x W x 3`` array);
    ``owner`` defaults to ``0..N-1`` (one box per image). Every crop is
    :func:`warp_crop`'s, all warped at once (:func:`facealign.alignment.warp_affines`).
    """
    return warp_affines(images, box_matrices(boxes, size), size, owner, border_mode=cv2.BORDER_REPLICATE)


def to_box_coordinates(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Pixel points ``N x P x 2`` to box-normalised ``u = (x - x1) / (x2 - x1)``."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 1, 4)
    wh = boxes[..., 2:4] - boxes[..., 0:2]
    return (np.asarray(points, np.float64) - boxes[..., 0:2]) / wh


def from_box_coordinates(coords: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_box_coordinates`."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 1, 4)
    wh = boxes[..., 2:4] - boxes[..., 0:2]
    return np.asarray(coords, np.float64) * wh + boxes[..., 0:2]
