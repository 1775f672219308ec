"""Interchangeable aligners: the only step that differs between the runs compared.

**Face box** (:func:`choose_face_box`). Among several detections the largest
box is taken (detectors list the largest first); when the protocol gives a
``FACE_*`` box, the detection overlapping it most (IoU >= 0.3) is taken
instead, so that the annotated subject is the one recognised. When the
detector finds nothing, the protocol box is used if there is one, else the
whole image is the box. These fallbacks are counted and reported.

**Alignment** (:class:`LandmarkAligner`, :class:`BoxAligner`,
:class:`ManifestAligner`, chosen with :func:`get_aligner`). All aligners
produce crops for the same template, the backbone's
(:attr:`recognition.backbones.BackboneChoice.template`: ``loose`` at the
AlexNet's input side, dlib's measured chip layout for ``dlib-resnet``), with
the same warp (:func:`facealign.alignment.warp_affine`: bilinear, anti-aliased,
black border; :data:`~facealign.alignment.WARP_VERSION` is part of the cache keys):

* ``tcnn`` / ``vanilla``: five points from a facealign landmark engine run
  on the face box, then the similarity that maps them onto the template.
* ``dlib-ert``: dlib's 68-point ERT on the face box, reduced to the five
  MTFL points (:func:`facealign.research.peers.reduce_68_to_5`), then the same.
* ``dlib-5pt``: dlib's 5-point model on the face box; its own points are
  mapped onto where they go in the template
  (:func:`recognition.dlib_resnet.dlib5_template`), which for the
  ``dlib-resnet`` chip comes close to ``dlib.get_face_chip`` (2.3 grey
  levels apart on average: dlib fits its chip its own way).
* ``box``: no landmarks. The box is made square (same centre, side
  ``sqrt(w * h)``) and mapped by a scale and a translation only: the ones
  that best map :data:`BOX_MEAN_SHAPE` (where the five points lie in a dlib
  box, on average) onto the template. This is "the detector box, enlarged
  to the template's face scale, cropped and resized".
* ``retinaface`` (``detector:NAME`` for another detector with five points):
  the detector's own five points. The detector runs on the whole image
  (cached like the shared detection, points stored with the boxes); its face
  whose box overlaps the chosen face box most (IoU >= :data:`PROTOCOL_BOX_IOU`,
  boxes in the training convention) gives the points, which are mapped onto
  where that detector's points lie in the backbone's chip
  (:data:`recognition.dlib_resnet.DETECTOR_CHIP_POINTS`, a least-squares fit
  measured like dlib-5pt's, carried into any template like dlib-5pt's:
  :func:`recognition.dlib_resnet.detector_template`). ``detector:NAME=FIT.json``
  takes the layout from a fit written by ``bench/detector_chip_template.py``.
  When the detector finds no such face, the ``box`` alignment is used (counted).
* ``manifest:PATH``: five points read from a file (any landmark detector):
  JSON lines with ``{"image" | "source": path, "landmarks": [[x, y] x 5]}``,
  the ``facealign landmarks --json`` lines
  (``{"image": path, "faces": [{"box", "score", "landmarks"}]}``) or a
  ``facealign crop`` ``manifest.jsonl``. Paths are taken relative to the
  image root (absolute paths and paths relative to the working folder that
  lie under the root are accepted). When an image has several faces, the
  one whose landmark centroid lies in the chosen face box (nearest its
  centre) is used, else the first. Images absent from the file, or with no
  face in it, fall back to the ``box`` alignment; they are counted.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from facealign.alignment import WARP_VERSION, Template, warp_affine, warp_face
from facealign.constants import ENGINES
from facealign.detection import box_iou
from facealign.geometry import to_resized

from .caches import DetectionCache, DetectionRecord
from .digests import file_digest, text_digest
from .face_inputs import FaceInput

if TYPE_CHECKING:
    from .conditions import ProbeReduction

__all__ = [
    "ALIGNER_NAMES",
    "BOX_MEAN_SHAPE",
    "PROTOCOL_BOX_IOU",
    "FaceBoxes",
    "choose_face_box",
    "choose_face_boxes",
    "Aligner",
    "PointPredictor",
    "LandmarkAligner",
    "BoxAligner",
    "ManifestAligner",
    "DetectorAligner",
    "get_aligner",
    "read_landmark_manifest",
    "box_alignment_matrix",
]

#: Names accepted by :func:`get_aligner` besides ``manifest:PATH``.
ALIGNER_NAMES: tuple[str, ...] = ("tcnn", "vanilla", "dlib-ert", "dlib-5pt", "retinaface", "box")

#: Aligners named after a detector whose own five points they use.
DETECTOR_ALIGNERS: tuple[str, ...] = ("retinaface",)

#: Mean position of the five MTFL-order points inside a dlib detector box, in
#: box-normalised coordinates ``((x - x1) / w, (y - y1) / h)``: measured on the
#: 9,946 MTFL training faces that the dlib detector finds (ground-truth points,
#: ``facealign.research.data`` boxes); the per-point standard deviation is about 0.05.
BOX_MEAN_SHAPE: np.ndarray = np.array(
    [[0.3075, 0.3091], [0.7116, 0.3034], [0.5088, 0.5523], [0.3395, 0.7469], [0.6899, 0.7432]]
)
BOX_MEAN_SHAPE.flags.writeable = False

#: IoU above which a detection is taken to be the face a protocol box marks.
PROTOCOL_BOX_IOU = 0.3


# --------------------------------------------------------------------------- face boxes


def choose_face_box(record: DetectionRecord, protocol_box: Sequence[float] | None = None) -> tuple[np.ndarray, str]:
    """The face box of one image and where it came from.

    Rules (see the module notes): the largest detection (``"detector"``); with a
    protocol box, the detection with the highest IoU if it is at least
    :data:`PROTOCOL_BOX_IOU`, else the largest; no detection: the protocol box
    (``"protocol"``), else the whole image (``"image"``).

    Returns
    -------
    box : numpy.ndarray
        ``(4,)`` float64 box in original-image pixels.
    source : str
        ``"detector"``, ``"protocol"`` or ``"image"``.

    Raises
    ------
    ValueError
        If the image could not be read (``record.error``).
    """
    if record.error is not None:
        raise ValueError(f"{record.file}: {record.error}")
    boxes = np.asarray(record.boxes, np.float64).reshape(-1, 4)
    if len(boxes):
        index = 0
        if protocol_box is not None:
            overlap = box_iou(np.asarray(protocol_box, np.float64), boxes)
            if overlap.max() >= PROTOCOL_BOX_IOU:
                index = int(np.argmax(overlap))
        return boxes[index].copy(), "detector"
    if protocol_box is not None:
        return np.asarray(protocol_box, np.float64).copy(), "protocol"
    width, height = record.size
    return np.array([-0.5, -0.5, width - 0.5, height - 0.5]), "image"


@dataclass
class FaceBoxes:
    """The face box of every image, with counts of how the boxes were found.

    Attributes
    ----------
    boxes : dict
        ``file -> (4,) box`` in original-image pixels.
    sources : dict
        ``file -> "detector" | "protocol" | "image"``.
    multiple : int
        Images in which the detector found more than one face.
    """

    boxes: dict[str, np.ndarray]
    sources: dict[str, str]
    multiple: int = 0

    def counts(self) -> dict[str, int]:
        """Images per box source, plus ``multiple_faces``."""
        out = {"images": len(self.boxes), "detector": 0, "protocol": 0, "image": 0}
        for source in self.sources.values():
            out[source] += 1
        out["multiple_faces"] = self.multiple
        return out


def choose_face_boxes(
    records: Mapping[str, DetectionRecord], protocol_box: Mapping[str, Sequence[float]] | None = None
) -> FaceBoxes:
    """:func:`choose_face_box` for every record.

    Raises
    ------
    ValueError
        Listing the images that could not be read.
    """
    unreadable = [f"{r.file} ({r.error})" for r in records.values() if r.error is not None]
    if unreadable:
        raise ValueError(f"{len(unreadable)} image(s) could not be read, e.g. {unreadable[:3]}")
    protocol_box = protocol_box or {}
    boxes, sources = {}, {}
    multiple = 0
    for file, record in records.items():
        boxes[file], sources[file] = choose_face_box(record, protocol_box.get(file))
        multiple += len(record.boxes) > 1
    return FaceBoxes(boxes, sources, multiple)


# --------------------------------------------------------------------------- aligners


class Aligner(Protocol):
    """Anything that turns face boxes into aligned crops.

    Attributes
    ----------
    name : str
        Short name used in reports.
    key : str
        Identifies the aligner and its parameters (weights hash, ...) in cache
        file names.
    template : Template
        Output template (its size is the crop size).
    """

    name: str
    key: str
    template: Template

    def align(self, faces: Sequence[FaceInput]) -> np.ndarray:
        """Crops ``N x H x W x 3`` uint8 for ``faces``."""
        ...


def box_alignment_matrix(box: Sequence[float] | np.ndarray, template: Template) -> np.ndarray:
    """The ``box`` aligner's 2 x 3 image-to-crop map for one face box.

    The box is made square about its centre (side ``sqrt(w * h)``); the mean
    point positions :data:`BOX_MEAN_SHAPE` placed in it are mapped onto the
    template points by the least-squares scale and translation (no rotation).
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"box must have x2 > x1 and y2 > y1, got {tuple(box)}")
    side = math.sqrt((x2 - x1) * (y2 - y1))
    corner = np.array([(x1 + x2 - side) / 2, (y1 + y2 - side) / 2])
    points = corner + BOX_MEAN_SHAPE * side
    target = np.asarray(template.points, np.float64)
    pc, tc = points - points.mean(0), target - target.mean(0)
    scale = float((pc * tc).sum() / (pc * pc).sum())
    shift = target.mean(0) - scale * points.mean(0)
    return np.array([[scale, 0.0, shift[0]], [0.0, scale, shift[1]]])


class BoxAligner:
    """The landmark-free baseline: the face box scaled to the template's face size.

    Parameters
    ----------
    template : Template
        Output template.
    """

    name = "box"

    def __init__(self, template: Template) -> None:
        self.template = template
        shape = text_digest(BOX_MEAN_SHAPE.tobytes().hex())[:8]
        self.key = f"box-{shape}-{template.name}{template.width}-{WARP_VERSION}"

    def crop(self, face: FaceInput) -> np.ndarray:
        """Aligned crop of one face."""
        return warp_affine(face.image, box_alignment_matrix(face.working_box, self.template), self.template.size)

    def align(self, faces: Sequence[FaceInput]) -> np.ndarray:
        return _stack([self.crop(f) for f in faces], self.template)


def _stack(crops: list[np.ndarray], template: Template) -> np.ndarray:
    if not crops:
        return np.zeros((0, template.height, template.width, 3), np.uint8)
    return np.stack(crops)


class PointPredictor(Protocol):
    """Anything that puts five points on face boxes (a facealign ``LandmarkEngine``, dlib's predictors)."""

    def predict_many(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        """``(K_i, 5, 2)`` points per image for ``(K_i, 4)`` boxes per image."""
        ...


class LandmarkAligner:
    """Five points from a landmark predictor on the face box, then similarity alignment.

    Parameters
    ----------
    name : str
        Aligner name (``"tcnn"``, ``"dlib-ert"``, ...).
    predictor : PointPredictor
        Landmark step.
    template : Template
        Where the predictor's five points go (in the predictor's point order).
    weights_path : path
        The predictor's model file, hashed into :attr:`key`.
    """

    def __init__(self, name: str, predictor: PointPredictor, template: Template, weights_path: str | Path) -> None:
        self.name = name
        self.predictor = predictor
        self.template = template
        self.key = f"{name}-{file_digest(weights_path)}-{template.name}{template.width}-{WARP_VERSION}"

    @classmethod
    def from_name(cls, name: str, template: Template, weights: str | Path | None = None) -> LandmarkAligner:
        """The aligner ``name`` of :data:`ALIGNER_NAMES` that uses landmarks, onto ``template``.

        ``weights`` replaces the shipped engine weights (``tcnn``, ``vanilla``)
        or dlib's model file (``dlib-ert``, ``dlib-5pt``).
        """
        if name in ENGINES:
            from facealign.engine import LandmarkEngine

            engine = LandmarkEngine(name, weights)
            return cls(name, engine, template, engine.weights_path)
        if name == "dlib-ert":
            from facealign.research.peers import DlibShapePredictor

            ert = DlibShapePredictor(weights)
            return cls(name, ert, template, ert.model_path)
        if name == "dlib-5pt":
            from .dlib_resnet import DlibFivePointPredictor, dlib5_template

            five = DlibFivePointPredictor(weights)
            return cls(name, five, dlib5_template(template), five.model_path)
        raise ValueError(f"{name!r} is not a landmark aligner")

    def landmarks(self, faces: Sequence[FaceInput]) -> list[np.ndarray]:
        """``(5, 2)`` points of every face, in working-image pixels (one batched pass)."""
        points = self.predictor.predict_many([f.image for f in faces], [f.working_box[None] for f in faces])
        return [p[0] for p in points]

    def align(self, faces: Sequence[FaceInput]) -> np.ndarray:
        if not faces:
            return _stack([], self.template)
        return _stack(
            [warp_face(f.image, p, self.template)[0] for f, p in zip(faces, self.landmarks(faces))], self.template
        )


def _manifest_key(path: str, images_root: Path) -> str:
    """Key (path relative to the image root) of a manifest image path; see the module notes.

    A relative path that exists under the root, or does not exist at all, is
    kept as it is. Other paths (absolute, or relative to the working folder)
    are made relative to the root, without resolving symlinks of the file
    itself (an image root may be a folder of links).
    """
    candidate = Path(path)
    if not candidate.is_absolute():
        if (images_root / candidate).exists() or not candidate.exists():
            return candidate.as_posix()
        candidate = Path(os.path.abspath(candidate))
    for root in (Path(os.path.abspath(images_root)), images_root.resolve()):
        for option in (candidate, candidate.parent.resolve() / candidate.name):
            try:
                return option.relative_to(root).as_posix()
            except ValueError:
                continue
    return candidate.as_posix()


def read_landmark_manifest(path: str | Path, images_root: str | Path) -> dict[str, list[np.ndarray]]:
    """Read five-point landmarks per image from a manifest file.

    Accepted JSON-lines shapes (one object per line; blank lines skipped):

    * ``{"image" | "source": PATH, "landmarks": [[x, y] x 5]}`` -- one face
      per line (a ``facealign crop`` ``manifest.jsonl`` has this shape, one
      line per face, with ``face`` giving its rank);
    * ``{"image": PATH, "faces": [{"landmarks": [[x, y] x 5], ...}, ...]}`` --
      the ``facealign landmarks --json`` output (``"error"`` lines and empty
      ``faces`` give no landmarks).

    Parameters
    ----------
    path : path
        The manifest.
    images_root : path
        Root the protocol's image paths are relative to.

    Returns
    -------
    dict
        ``relative image path -> list of (5, 2) arrays`` in original-image
        pixels, faces in file order (``face`` rank order for crop manifests).

    Raises
    ------
    ValueError
        On a line that is not JSON or has neither ``landmarks`` nor ``faces``
        or ``error``, or landmarks that are not five finite points.
    """
    path = Path(path)
    root = Path(images_root)
    faces: dict[str, list[tuple[int, np.ndarray]]] = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not JSON: {exc}") from None
        image = row.get("image", row.get("source")) if isinstance(row, dict) else None
        if not isinstance(image, str):
            raise ValueError(f"{where}: expected an object with an 'image' or 'source' path")
        key = _manifest_key(image, root)
        entries = faces.setdefault(key, [])
        if "landmarks" in row:
            items = [(int(row.get("face", len(entries))), row["landmarks"])]
        elif "faces" in row:
            items = [(n, face["landmarks"]) for n, face in enumerate(row["faces"])]
        elif "error" in row:
            items = []
        else:
            raise ValueError(f"{where}: no 'landmarks', 'faces' or 'error' field")
        for rank, points in items:
            array = np.asarray(points, np.float64)
            if array.shape != (5, 2) or not np.all(np.isfinite(array)):
                raise ValueError(f"{where}: landmarks must be 5 finite [x, y] points, got {points!r}")
            entries.append((rank, array))
    return {key: [p for _, p in sorted(items, key=lambda item: item[0])] for key, items in faces.items()}


def _pick_face(candidates: Sequence[np.ndarray], box: np.ndarray) -> np.ndarray:
    """The candidate whose centroid lies in ``box``, nearest its centre; else the first."""
    centre = (box[:2] + box[2:]) / 2
    best, best_distance = 0, math.inf
    for n, points in enumerate(candidates):
        c = points.mean(0)
        if box[0] <= c[0] <= box[2] and box[1] <= c[1] <= box[3]:
            distance = float(np.hypot(*(c - centre)))
            if distance < best_distance:
                best, best_distance = n, distance
    return candidates[best]


class ManifestAligner:
    """Landmarks of any detector, read from a manifest (:func:`read_landmark_manifest`).

    Images absent from the manifest or without a face in it are aligned by
    :class:`BoxAligner` (see :meth:`missing`).

    Parameters
    ----------
    path : path
        Manifest file.
    images_root : path
        Root of the protocol's image paths.
    template : Template
        Output template.
    """

    def __init__(self, path: str | Path, images_root: str | Path, template: Template) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"landmark manifest not found: {self.path}")
        self.name = f"manifest:{self.path}"
        self.template = template
        self.points = read_landmark_manifest(self.path, images_root)
        self.fallback = BoxAligner(template)
        self.key = f"manifest-{file_digest(self.path)}-{template.name}{template.width}-{WARP_VERSION}"

    def crop(self, face: FaceInput) -> np.ndarray:
        candidates = self.points.get(face.file)
        if not candidates:
            return self.fallback.crop(face)
        points = _pick_face(candidates, face.box)
        return warp_face(face.image, to_resized(points, face.scale), self.template)[0]

    def align(self, faces: Sequence[FaceInput]) -> np.ndarray:
        return _stack([self.crop(f) for f in faces], self.template)

    def missing(self, files: Iterable[str]) -> list[str]:
        """Those of ``files`` that have no face in the manifest (aligned by the box rule)."""
        return [f for f in files if not self.points.get(f)]


class DetectorAligner:
    """A detector's own five points (module notes: ``retinaface``, ``detector:NAME``).

    Parameters
    ----------
    name : str
        Aligner name (``"retinaface"``, ``"detector:NAME"``).
    detections : DetectionCache
        The detector's cached detections (with points) of the images, reduced
        ones for a low-resolution condition.
    chip_points : numpy.ndarray
        ``(5, 2)`` where the detector's points lie in dlib's 150 px chip
        (:data:`recognition.dlib_resnet.DETECTOR_CHIP_POINTS`).
    template : Template
        Output template.
    """

    def __init__(self, name: str, detections: DetectionCache, chip_points: np.ndarray, template: Template) -> None:
        from .dlib_resnet import detector_template

        self.name = name
        self.detections = detections
        self.template = template
        self.point_template = detector_template(chip_points, template, detections.detector)
        self.fallback = BoxAligner(template)
        layout = text_digest(np.asarray(chip_points, np.float64).round(4).tobytes().hex())[:8]
        self.key = f"{detections.detector}pts-{layout}-{detections.key}-{template.name}{template.width}-{WARP_VERSION}"
        self._records: dict[str, DetectionRecord] = {}

    def records(self, files: Sequence[str], jobs: int = 1) -> dict[str, DetectionRecord]:
        """The detector's records of ``files`` (detecting those not cached yet)."""
        todo = [f for f in files if f not in self._records]
        if todo:
            self._records.update(self.detections.ensure(todo, jobs=jobs, landmarks=True))
        return {f: self._records[f] for f in files}

    def points(self, record: DetectionRecord, box: np.ndarray) -> np.ndarray | None:
        """The detector's five points of the face in ``box`` (original pixels), or None."""
        if record.error is not None or not len(record.boxes):
            return None
        if record.landmarks is None:
            raise ValueError(f"detector {self.detections.detector!r} gives no landmarks; it cannot be an aligner")
        overlap = box_iou(np.asarray(box, np.float64), np.asarray(record.boxes, np.float64).reshape(-1, 4))
        best = int(np.argmax(overlap))
        return record.landmarks[best] if overlap[best] >= PROTOCOL_BOX_IOU else None

    def align(self, faces: Sequence[FaceInput]) -> np.ndarray:
        records = self.records([f.file for f in faces])
        crops = []
        for face in faces:
            points = self.points(records[face.file], face.box)
            if points is None:
                crops.append(self.fallback.crop(face))
            else:
                crops.append(warp_face(face.image, to_resized(points, face.scale), self.point_template)[0])
        return _stack(crops, self.template)

    def missing(self, files: Sequence[str], boxes: Mapping[str, np.ndarray]) -> list[str]:
        """Those of ``files`` where the detector found no face on the chosen box (aligned by the box rule)."""
        records = self.records(list(files))
        return [f for f in files if self.points(records[f], boxes[f]) is None]


def _detector_aligner(
    spec: str,
    template: Template,
    images_root: str | Path | None,
    cache_dir: str | Path | None,
    reduction: ProbeReduction | None,
) -> DetectorAligner:
    from .dlib_resnet import DETECTOR_CHIP_POINTS

    if images_root is None:
        raise ValueError(f"aligner {spec!r} needs an image root")
    if spec in DETECTOR_ALIGNERS:
        detector, chip_points = spec, DETECTOR_CHIP_POINTS[spec]
    else:
        detector, _, fit = spec[len("detector:") :].partition("=")
        if not detector:
            raise ValueError("the detector aligner needs 'detector:NAME' or 'detector:NAME=FIT.json'")
        if fit:
            try:
                chip_points = np.asarray(json.loads(Path(fit).read_text(encoding="utf-8"))["points"], np.float64)
            except (OSError, ValueError, KeyError) as exc:
                raise ValueError(f"cannot read a detector layout from {fit}: {exc}") from None
            if chip_points.shape != (5, 2) or not np.all(np.isfinite(chip_points)):
                raise ValueError(f"{fit}: 'points' must be 5 finite [x, y] points")
        elif detector in DETECTOR_CHIP_POINTS:
            chip_points = DETECTOR_CHIP_POINTS[detector]
        else:
            raise ValueError(
                f"no fitted point layout for detector {detector!r}: fit one with "
                f"'python bench/detector_chip_template.py --detector {detector} --out FIT.json' "
                f"and use 'detector:{detector}=FIT.json'"
            )
    detections = DetectionCache(images_root, detector, cache_dir, reduction)
    return DetectorAligner(spec, detections, chip_points, template)


def get_aligner(
    spec: str,
    template: Template,
    images_root: str | Path | None = None,
    weights: Mapping[str, str | Path | None] | None = None,
    cache_dir: str | Path | None = None,
    reduction: ProbeReduction | None = None,
) -> Aligner:
    """Build an aligner from its name.

    Parameters
    ----------
    spec : str
        One of :data:`ALIGNER_NAMES`, ``"detector:NAME[=FIT.json]"`` or ``"manifest:PATH"``.
    template : Template
        Output template (:attr:`recognition.backbones.BackboneChoice.template`).
    images_root : path, optional
        Needed by ``manifest:PATH`` and the detector aligners.
    weights : mapping, optional
        Model files by aligner name (``{"tcnn": path}``); shipped by default.
    cache_dir : path, optional
        Where the detector aligners cache their detections.
    reduction : ProbeReduction, optional
        Low-resolution probes: the detector aligners detect on the reduced images.

    Raises
    ------
    ValueError
        For an unknown name, or ``manifest:`` without a path or image root.
    ImportError
        For ``dlib-ert`` / ``dlib-5pt`` without the ``face-recognition-models`` package.
    """
    resolved = template
    if spec in DETECTOR_ALIGNERS or spec.startswith("detector:"):
        return _detector_aligner(spec, resolved, images_root, cache_dir, reduction)
    if spec in ALIGNER_NAMES and spec != "box":
        return LandmarkAligner.from_name(spec, resolved, (weights or {}).get(spec))
    if spec == "box":
        return BoxAligner(resolved)
    if spec.startswith("manifest:"):
        path = spec[len("manifest:") :]
        if not path or images_root is None:
            raise ValueError("manifest aligner needs 'manifest:PATH' and an image root")
        return ManifestAligner(path, images_root, resolved)
    raise ValueError(
        f"unknown aligner {spec!r}; choose one of {list(ALIGNER_NAMES)}, 'detector:NAME' or 'manifest:PATH'"
    )
