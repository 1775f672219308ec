"""What every detector back-end shares: the result type, the protocol, NMS and the pyramid.

Box convention: ``(x1, y1, x2, y2)`` in pixels of the image given to the
detector, pixel centres at integer coordinates (:mod:`facealign.constants`);
each back-end converts its own convention at its boundary and says how.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, cast, runtime_checkable

import cv2
import numpy as np

from ..constants import NUM_POINTS
from ..geometry import from_resized  # pixel-centre rule; re-exported for the back-ends

__all__ = [
    "Detections",
    "Detector",
    "PyramidDetector",
    "check_image",
    "confident_or_best",
    "box_iou",
    "from_resized",
    "nms",
    "DEFAULT_MIN_FACE",
    "DEFAULT_MIN_FACE_FRACTION",
    "DEFAULT_MIN_FACE_LIMIT",
]

#: The default smallest face (box width, pixels of the photo) of the CNN detectors
#: (:meth:`PyramidDetector.min_face_for`) is :data:`DEFAULT_MIN_FACE_FRACTION` of
#: the photo's longer side, but at least ``DEFAULT_MIN_FACE`` pixels and at most
#: :data:`DEFAULT_MIN_FACE_LIMIT`.
DEFAULT_MIN_FACE: int = 20
#: See :data:`DEFAULT_MIN_FACE`: on a photo up to 640 px long the default is 20 px.
DEFAULT_MIN_FACE_FRACTION: float = 1 / 32
#: See :data:`DEFAULT_MIN_FACE`: every face at least as wide as a face on the
#: default 112 px ArcFace crop (80 px: a face the crop does not enlarge) is looked
#: for in a photo of any size. On a 4,032 px camera photo the default is 80 px and
#: the search one tile of 1,008 px instead of a full-resolution pyramid; chosen by
#: measurement (``bench/crop_speed.py``, docs/bench/crop_speed.md: ``--min-face``
#: against faces found and images/s). ``min_face=20`` restores the full search.
DEFAULT_MIN_FACE_LIMIT: int = 80


@dataclass(frozen=True)
class Detections:
    """Faces found in one image.

    Attributes
    ----------
    boxes : ndarray, shape (N, 4), float32
        ``(x1, y1, x2, y2)`` in pixels of the image given to the detector.
    scores : ndarray, shape (N,), float32
        Detector confidence; higher is more confident. Scales differ between
        back-ends.
    landmarks : ndarray, shape (N, 5, 2), float32, or None
        The detector's own five points in MTFL order (image-left eye first),
        when the back-end gives them.
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray | None = None

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if len(boxes) != len(scores):
            raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        if self.landmarks is not None:
            points = np.asarray(self.landmarks, dtype=np.float32).reshape(-1, NUM_POINTS, 2)
            if len(points) != len(boxes):
                raise ValueError(f"{len(boxes)} boxes but {len(points)} landmark sets")
            object.__setattr__(self, "landmarks", points)

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))

    def take(self, index: np.ndarray | slice) -> Detections:
        """The faces at ``index`` (an index array, mask or slice), landmarks included."""
        points = None if self.landmarks is None else self.landmarks[index]
        return Detections(self.boxes[index], self.scores[index], points)

    def sorted_by_area(self) -> Detections:
        """The same faces, largest box first."""
        area = (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])
        return self.take(np.argsort(-area, kind="stable"))


@runtime_checkable
class Detector(Protocol):
    """What facealign needs of a face detector: a ``name`` and ``detect``."""

    name: str

    def detect(self, image: np.ndarray) -> Detections:
        """Find faces in an ``H x W x 3`` uint8 RGB image."""
        ...


def check_image(image: np.ndarray) -> None:
    """Raise ValueError unless ``image`` is a non-empty ``H x W x 3`` uint8 array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got shape {shape} dtype {dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image: {image.shape[1]} x {image.shape[0]} pixels")


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one box with each of ``boxes`` (``x1, y1, x2, y2``; ``N``
    values; boxes with no area overlap nothing)."""
    box = np.asarray(box, np.float64).reshape(4)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = w * h
    area = max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    return inter / np.maximum(area + areas - inter, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first.

    Parameters
    ----------
    boxes : ndarray (N, 4)
        ``x1, y1, x2, y2``.
    scores : ndarray (N,)
    iou_threshold : float
        A box is dropped when its intersection over union with a better-scoring
        kept box exceeds this.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    keep: list[int] = []
    while len(order):
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        order = rest[box_iou(boxes[i], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, np.intp)


def confident_or_best(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of the scores at least ``threshold``; when there are none, of the single best.

    The detectors' rescue rule: the candidates handed in already score at least
    the rescue threshold, and photos given to a face tool nearly always hold a
    face, so when none is confident the best one is kept, alone (never a second
    doubtful face beside a confident one).
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    confident = np.flatnonzero(scores >= threshold)
    if len(confident) or not len(scores):
        return confident
    return np.array([int(np.argmax(scores))], np.intp)


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of side ``tile`` covering ``[0, length)`` with at least ``overlap`` shared."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    stride = (length - tile) / (count - 1)
    return [round(i * stride) for i in range(count)]


def _clear_of_inner_edges(
    boxes: np.ndarray,
    origin: tuple[int, int],
    tile_shape: tuple[int, int],
    level_size: tuple[int, int],
    margin: float = 2.0,
) -> np.ndarray:
    """Mask of the tile's boxes that do not touch an edge the tile shares with a neighbour.

    A face cut by such an edge is whole in the neighbouring tile (the tiles
    overlap by the largest face of the level); edges of the photo itself do not count.
    """
    (x0, y0), (th, tw), (width, height) = origin, tile_shape, level_size
    keep = np.ones(len(boxes), bool)
    if x0 > 0:
        keep &= boxes[:, 0] > margin
    if y0 > 0:
        keep &= boxes[:, 1] > margin
    if x0 + tw < width:
        keep &= boxes[:, 2] < tw - 1 - margin
    if y0 + th < height:
        keep &= boxes[:, 3] < th - 1 - margin
    return keep


class PyramidDetector:
    """Base class of the CNN back-ends: a scale pyramid of tiles, merged by NMS.

    A single-shot CNN detector finds faces between ``native_min`` and about
    ``band * native_min`` pixels wide in one pass over an image of at most
    ``tile`` pixels a side. To find every face down to ``min_face`` pixels in a
    photo of any size with bounded memory:

    1. the first level resizes the photo by ``native_min / min_face``
       (:meth:`work_scale`), so the smallest face wanted becomes ``native_min``
       pixels wide: a photo up to 640 px long is searched at its own size at the
       default ``min_face`` (:meth:`min_face_for`), a larger one reduced (to
       640 px up to 2,560 px long, then by 80 / ``native_min``), and a photo is
       upscaled only when ``min_face`` is below ``native_min``;
    2. each further level shrinks by ``band``, until the whole photo fits in one
       tile, so every face size falls in the band of some level;
    3. a level larger than a tile is cut into tiles that overlap by the largest
       face of the level's band, so each such face lies whole inside a tile;
       a box that touches an inner tile edge is cut off there and is dropped
       (the face is whole in the neighbouring tile);
    4. all boxes are mapped back to the photo, those narrower than
       ``min_face`` dropped, and duplicates removed by NMS.

    A photo that fits one tile at the first level costs one network pass.

    Subclasses implement :meth:`_detect_tile` (one RGB array in; boxes in its
    pixels, scores and optional landmarks out, for every candidate scoring at
    least :attr:`lowest_score`) and set the class attributes.
    """

    name = "pyramid"
    #: Smallest face width (pixels of the network input) found reliably.
    native_min: float = 20.0
    #: Each pyramid level covers faces from ``native_min`` to ``band * native_min``.
    band: float = 4.0
    #: Side of the largest network input, in pixels.
    tile: int = 1024
    #: IoU above which two boxes of one face are merged.
    nms_iou: float = 0.4

    #: Score a face needs (back-end scale).
    threshold: float = 0.5
    #: When no face reaches ``threshold``, the single best face scoring at least
    #: this is kept (None: never); as for dlib, photos handed to a face tool
    #: nearly always hold a face, and this finds hard ones without adding
    #: doubtful extra faces to photos that already show a confident one.
    rescue_threshold: float | None = None

    def __init__(
        self,
        min_face: float | None = None,
        threshold: float | None = None,
        rescue_threshold: float | None | str = "default",
    ) -> None:
        if min_face is not None and not min_face > 0:
            raise ValueError(f"min_face must be positive, got {min_face}")
        #: Smallest face looked for, pixels of the photo; None: the default rule (:meth:`min_face_for`).
        self.min_face = None if min_face is None else float(min_face)
        if threshold is not None:
            self.threshold = float(threshold)
        if rescue_threshold != "default":
            self.rescue_threshold = None if rescue_threshold is None else float(rescue_threshold)
        if self.rescue_threshold is not None and self.rescue_threshold > self.threshold:
            raise ValueError("rescue_threshold must not exceed threshold")

    @property
    def lowest_score(self) -> float:
        """Candidates below this score are never kept (what :meth:`_detect_tile` must return)."""
        return self.threshold if self.rescue_threshold is None else self.rescue_threshold

    # -- to implement ------------------------------------------------------- #
    def _detect_tile(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    # -- the pyramid -------------------------------------------------------- #
    def min_face_for(self, height: float, width: float) -> float:
        """Smallest face looked for in a photo of this size, pixels: ``min_face`` when
        given, else :data:`DEFAULT_MIN_FACE_FRACTION` of the longer side, clipped to
        [:data:`DEFAULT_MIN_FACE`, :data:`DEFAULT_MIN_FACE_LIMIT`]."""
        if self.min_face is not None:
            return self.min_face
        fraction = DEFAULT_MIN_FACE_FRACTION * max(height, width)
        return float(min(max(fraction, DEFAULT_MIN_FACE), DEFAULT_MIN_FACE_LIMIT))

    def work_scale(self, height: float, width: float) -> float:
        """The largest resize factor this detector uses on a photo of this size (below 1:
        it never needs more than that fraction of the full resolution)."""
        return self.native_min / self.min_face_for(height, width)

    def levels(self, height: int, width: int, scale: float = 1.0) -> list[float]:
        """Resize factors of the pyramid levels for an image of this size, finest first;
        the image is ``scale`` times the photo (decoded reduced, see :meth:`detect`)."""
        level = self.work_scale(height / scale, width / scale) / scale
        levels = [level]
        while max(height, width) * level > self.tile:
            level /= self.band
            levels.append(level)
        return levels

    def detect(self, image: np.ndarray, scale: float = 1.0) -> Detections:
        """Faces of ``image``, which is ``scale`` times the photo (a photo decoded
        reduced): ``min_face`` and the default rule refer to the photo's pixels, the
        boxes to the image's."""
        check_image(image)
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        height, width = image.shape[:2]
        min_face = self.min_face_for(height / scale, width / scale) * scale
        boxes: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        points: list[np.ndarray | None] = []
        overlap = int(math.ceil(self.native_min * self.band * 1.25))
        for factor in self.levels(height, width, scale):
            size = (max(1, round(width * factor)), max(1, round(height * factor)))
            if size == (width, height):
                level = image
            else:
                interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
                level = cv2.resize(image, size, interpolation=interp)
            sx, sy = size[0] / width, size[1] / height
            xs = _tile_starts(size[0], self.tile, overlap)
            ys = _tile_starts(size[1], self.tile, overlap)
            for y0 in ys:
                for x0 in xs:
                    tile = level[y0 : y0 + self.tile, x0 : x0 + self.tile]
                    b, s, p = self._detect_tile(np.ascontiguousarray(tile))
                    if len(b) == 0:
                        continue
                    b = np.asarray(b, np.float64).reshape(-1, 4)
                    inner = _clear_of_inner_edges(b, (x0, y0), tile.shape[:2], size)
                    # tile pixels -> level pixels -> photo pixels
                    boxes.append(from_resized(b[inner].reshape(-1, 2, 2) + [x0, y0], sx, sy).reshape(-1, 4))
                    scores.append(np.asarray(s, np.float64).reshape(-1)[inner])
                    if p is not None:
                        q = np.asarray(p, np.float64).reshape(-1, NUM_POINTS, 2)[inner] + [x0, y0]
                        points.append(from_resized(q, sx, sy))
                    else:
                        points.append(None)
        if not boxes:
            return Detections.empty()
        has_points = all(p is not None for p in points)
        boxes_all = np.concatenate(boxes)
        scores_all = np.concatenate(scores)
        points_all = np.concatenate(cast(list[np.ndarray], points)) if has_points else None
        big = (boxes_all[:, 2] - boxes_all[:, 0]) >= min_face
        keep = np.flatnonzero(big)[nms(boxes_all[big], scores_all[big], self.nms_iou)]
        keep = keep[confident_or_best(scores_all[keep], self.threshold)]
        found = Detections(boxes_all[keep], scores_all[keep], None if points_all is None else points_all[keep])
        return found.sorted_by_area()
