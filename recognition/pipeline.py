"""The verification pipeline: shared detection, interchangeable aligners, features, evaluation.

Only the alignment differs between the aligners compared here (paper,
section 5.2); everything else is shared and computed once:

1. **Detection** (:class:`DetectionCache`). Every image is decoded (at most
   :data:`~facealign.constants.WORK_MAX_SIDE` pixels on its longer side) and the
   detector runs once on it. The boxes and scores of all faces, in pixels of
   the original image, are appended to a JSON-lines file in the cache folder,
   named after the detector and a hash of the resolved image root, so a rerun
   (or another aligner, another protocol on the same images) reuses them. A
   killed run resumes where it stopped.
2. **Face box** (:func:`choose_face_box`). Among several detections the
   largest box is taken (detectors list the largest first); when the protocol
   gives a ``FACE_*`` box, the detection overlapping it most (IoU >= 0.3) is
   taken instead, so that the annotated subject is the one recognised. When
   the detector finds nothing, the protocol box is used if there is one, else
   the whole image is the box. These fallbacks are counted and reported.
3. **Alignment** (:class:`LandmarkAligner`, :class:`BoxAligner`,
   :class:`ManifestAligner`, chosen with :func:`get_aligner`). All aligners
   produce crops for the same template, the backbone's
   (:attr:`BackboneChoice.template`: ``loose`` at the AlexNet's input side,
   dlib's measured chip layout for ``dlib-resnet``), with the same bilinear
   warp and black border:

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

4. **Features** (:func:`extract_features`). Crops are embedded by the
   backbone (:func:`load_backbone`: the shipped AlexNet, another AlexNet
   checkpoint, or ``dlib-resnet``). Features are cached per aligner in an
   ``.npz`` keyed by the aligner (with a hash of its weights or manifest and
   its template), the backbone (a hash of its weights), the detector with a
   hash of its settings, and the image root (:func:`feature_cache_path`); a
   row is reused only if the face box it was computed from is the same. So
   adding an aligner costs one pass over the images.
5. **Matching and metrics** (:func:`evaluate_protocol`): per split, power
   normalisation, PCA fitted on that split's training images only, Pearson
   correlation of every image pair of two templates, SoftMax fusion averaged
   over :data:`DEFAULT_BETAS`, then TAR at :data:`FAR_TARGETS` and the ROC on
   a log-spaced FAR grid. Results are mean and (population) standard
   deviation over the splits; the per-split scores are kept for the paired
   statistics of :mod:`recognition.statistics`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from facealign.alignment import Template, get_template, warp_face
from facealign.constants import TRAINING_DETECTOR, WORK_MAX_SIDE
from facealign.imageio import ImageReadError, read_image_reduced

from .matching import PCAProjector, power_normalize, template_scores
from .metrics import tar_at_far
from .protocol import Protocol as VerificationProtocol
from .protocol import Split
from .statistics import SplitComparisons

if TYPE_CHECKING:
    from .backbone import Backbone

__all__ = [
    "ALIGNER_NAMES",
    "BACKBONE_NAMES",
    "BOX_MEAN_SHAPE",
    "DEFAULT_BETAS",
    "DEFAULT_TEMPLATE",
    "FAR_TARGETS",
    "ROC_GRID",
    "DetectionRecord",
    "DetectionCache",
    "FaceBoxes",
    "choose_face_box",
    "choose_face_boxes",
    "FaceInput",
    "Aligner",
    "LandmarkAligner",
    "BoxAligner",
    "ManifestAligner",
    "get_aligner",
    "read_landmark_manifest",
    "box_alignment_matrix",
    "extract_features",
    "FeatureTable",
    "SplitResult",
    "VerificationResult",
    "evaluate_split",
    "evaluate_protocol",
    "protocol_boxes",
    "protocol_files",
    "protocol_sizes",
    "file_digest",
    "default_backbone_path",
    "BackboneChoice",
    "load_backbone",
    "export_backbone",
    "default_cache_dir",
]

#: Template of every crop (rescaled to the backbone input side).
DEFAULT_TEMPLATE = "loose"

#: SoftMax temperatures averaged by the template fusion: 0 (mean of the pair
#: scores) to 20 (close to their maximum) in steps of 1, as in the Janus CS2
#: systems the paper's pipeline comes from, which average SoftMax scores over a
#: range of temperatures instead of tuning one.
DEFAULT_BETAS: tuple[float, ...] = tuple(float(b) for b in range(21))

#: FARs at which the TAR is reported (Table 2 of the paper gives 1e-2 and 1e-1).
FAR_TARGETS: tuple[float, ...] = (1e-3, 1e-2, 1e-1)

#: FAR grid of the stored ROC (log-spaced, 1e-4 to 1, 10 points per decade).
ROC_GRID: np.ndarray = np.logspace(-4, 0, 41)

#: Names accepted by :func:`get_aligner` besides ``manifest:PATH``.
ALIGNER_NAMES: tuple[str, ...] = ("tcnn", "vanilla", "dlib-ert", "dlib-5pt", "box")

#: Named backbones accepted by :func:`load_backbone` besides an AlexNet weights file.
BACKBONE_NAMES: tuple[str, ...] = ("dlib-resnet",)

#: Mean position of the five MTFL-order points inside a dlib detector box, in
#: box-normalised coordinates ``((x - x1) / w, (y - y1) / h)``: measured on the
#: 9,946 MTFL training faces that the dlib detector finds (ground-truth points,
#: ``facealign.data`` boxes); the per-point standard deviation is about 0.05.
BOX_MEAN_SHAPE: np.ndarray = np.array(
    [[0.3075, 0.3091], [0.7116, 0.3034], [0.5088, 0.5523], [0.3395, 0.7469], [0.6899, 0.7432]]
)
BOX_MEAN_SHAPE.flags.writeable = False

#: IoU above which a detection is taken to be the face a protocol box marks.
PROTOCOL_BOX_IOU = 0.3

_DETECTION_CHUNK = 32
_FEATURE_BATCH = 64
_FEATURE_SAVE_EVERY = 1024


# --------------------------------------------------------------------------- helpers


def file_digest(path: str | os.PathLike[str], length: int = 12) -> str:
    """First ``length`` hex digits of the SHA-1 of a file's content."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def _text_digest(text: str, length: int = 12) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:length]


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def default_cache_dir() -> Path:
    """Cache folder: ``$RECOGNITION_CACHE`` if set, else ``./cache/recognition``."""
    return Path(os.environ.get("RECOGNITION_CACHE", "cache/recognition"))


def _to_working(points: np.ndarray, scale: float) -> np.ndarray:
    """Original-image pixels to working-image pixels (pixel-centre rule)."""
    return (np.asarray(points, np.float64) + 0.5) * scale - 0.5


def _to_original(points: np.ndarray, scale: float) -> np.ndarray:
    return (np.asarray(points, np.float64) + 0.5) / scale - 0.5


def _map_box(box: np.ndarray, fn: Callable[[np.ndarray, float], np.ndarray], scale: float) -> np.ndarray:
    return fn(np.asarray(box, np.float64).reshape(-1, 2, 2), scale).reshape(-1, 4)


# --------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class DetectionRecord:
    """Detector output for one image, in pixels of the original (EXIF-oriented) image.

    Attributes
    ----------
    file : str
        Image path relative to the image root.
    size : tuple of float
        Original ``(width, height)``.
    boxes : numpy.ndarray
        ``(K, 4)`` boxes, largest first.
    scores : numpy.ndarray
        ``(K,)`` detector scores.
    error : str or None
        Why the image could not be read (then ``boxes`` is empty).
    """

    file: str
    size: tuple[float, float]
    boxes: np.ndarray
    scores: np.ndarray
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        return {
            "file": self.file,
            "size": [round(float(v), 3) for v in self.size],
            "boxes": [[round(float(v), 3) for v in b] for b in self.boxes],
            "scores": [round(float(s), 5) for s in self.scores],
        }

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> DetectionRecord:
        if "error" in row:
            return cls(str(row["file"]), (0.0, 0.0), np.zeros((0, 4)), np.zeros(0), str(row["error"]))
        boxes = np.asarray(row["boxes"], np.float64).reshape(-1, 4)
        scores = np.asarray(row["scores"], np.float64).reshape(-1)
        if len(boxes) != len(scores):
            raise ValueError("boxes and scores differ in length")
        width, height = (float(v) for v in row["size"])
        return cls(str(row["file"]), (width, height), boxes, scores)


def _detect_chunk(root: str, files: Sequence[str], detector: str, single_thread: bool) -> list[dict[str, Any]]:
    """Worker: detect faces in ``files`` (relative to ``root``); JSON-ready records."""
    import cv2

    from facealign.detection import get_detector
    from facealign.reboxing import training_boxes

    if single_thread:
        cv2.setNumThreads(1)
    det = get_detector(detector)
    out = []
    for file in files:
        try:
            image, scale = read_image_reduced(Path(root) / file, WORK_MAX_SIDE)
        except ImageReadError as exc:
            out.append(DetectionRecord(file, (0.0, 0.0), np.zeros((0, 4)), np.zeros(0), exc.reason).to_json())
            continue
        found = det.detect(image)
        # In the training detector's box convention (identity for dlib), so that
        # every aligner and the box baseline see the same framing whatever the detector.
        boxes = _map_box(training_boxes(detector, found.boxes, found.landmarks), _to_original, scale)
        h, w = image.shape[:2]
        out.append(DetectionRecord(file, (w / scale, h / scale), boxes, found.scores.astype(np.float64)).to_json())
    return out


class DetectionCache:
    """Face detections of the images under one root, computed once and kept on disk.

    Parameters
    ----------
    images_root : path
        Folder the image paths are relative to.
    detector : str
        Detector name (:func:`facealign.detection.get_detector`).
    cache_dir : path
        Folder of the cache file
        ``detections-<detector>-<hash of its settings>-<hash of root>.jsonl``
        (the settings hash is :func:`facealign.data._detector_fingerprint`'s, so
        changed detector settings never reuse stale boxes).

    Notes
    -----
    Records are keyed by relative path only: if images under the root are
    replaced, delete the cache file.
    """

    def __init__(
        self, images_root: str | Path, detector: str = TRAINING_DETECTOR, cache_dir: str | Path | None = None
    ) -> None:
        self.images_root = Path(images_root)
        if not self.images_root.is_dir():
            raise FileNotFoundError(f"image root not found: {self.images_root}")
        self.detector = detector
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        from facealign.data import _detector_fingerprint

        self.key = f"{detector}-{_detector_fingerprint(detector)}-{_text_digest(str(self.images_root.resolve()))}"
        self.path = cache / f"detections-{self.key}.jsonl"

    def load(self) -> dict[str, DetectionRecord]:
        """Records found in the cache file (a torn or malformed line is ignored)."""
        records: dict[str, DetectionRecord] = {}
        if not self.path.is_file():
            return records
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = DetectionRecord.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError):
                continue
            records[record.file] = record
        return records

    def ensure(
        self,
        files: Sequence[str],
        jobs: int = 1,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, DetectionRecord]:
        """Detections of ``files``, running the detector on those not cached yet.

        Parameters
        ----------
        files : sequence of str
            Paths relative to the image root.
        jobs : int
            Worker processes (joblib, loky); ``-1`` for all cores.
        progress : callable, optional
            ``progress(done, total)`` over the images detected by this call.

        Returns
        -------
        dict
            ``file -> DetectionRecord`` for every requested file.
        """
        records = self.load()
        todo = [f for f in dict.fromkeys(files) if f not in records]
        if todo:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            n_jobs = _resolve_jobs(jobs, len(todo))
            chunks = [todo[i:i + _DETECTION_CHUNK] for i in range(0, len(todo), _DETECTION_CHUNK)]
            root = str(self.images_root)
            if n_jobs == 1:
                results: Iterable[list[dict[str, Any]]] = (
                    _detect_chunk(root, c, self.detector, False) for c in chunks
                )
            else:
                from joblib import Parallel, delayed

                results = Parallel(n_jobs=n_jobs, backend="loky", return_as="generator")(
                    delayed(_detect_chunk)(root, c, self.detector, True) for c in chunks
                )
            done = 0
            if progress is not None:
                progress(0, len(todo))
            with self.path.open("a", encoding="utf-8") as handle:
                for rows in results:
                    handle.write("".join(json.dumps(r) + "\n" for r in rows))
                    handle.flush()
                    for row in rows:
                        records[row["file"]] = DetectionRecord.from_json(row)
                    done += len(rows)
                    if progress is not None:
                        progress(done, len(todo))
        return {f: records[f] for f in files}


def _resolve_jobs(jobs: int, n_items: int) -> int:
    if jobs == -1:
        import joblib

        jobs = joblib.cpu_count()
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1 or -1 (all cores), got {jobs}")
    return max(1, min(jobs, n_items))


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


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
            overlap = _iou(np.asarray(protocol_box, np.float64), boxes)
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


@dataclass
class FaceInput:
    """One image handed to an aligner.

    Attributes
    ----------
    file : str
        Path relative to the image root.
    image : numpy.ndarray
        Working image (``H x W x 3`` uint8 RGB).
    scale : float
        Working image scale relative to the original (pixel-centre rule).
    box : numpy.ndarray
        Face box in original-image pixels.
    """

    file: str
    image: np.ndarray
    scale: float
    box: np.ndarray

    @property
    def working_box(self) -> np.ndarray:
        return _map_box(self.box, _to_working, self.scale)[0]


def read_face_inputs(
    root: Path, files: Sequence[str], boxes: Mapping[str, Sequence[float] | np.ndarray]
) -> list[FaceInput]:
    """Decode ``files`` (relative to ``root``) at the working resolution, with their face boxes.

    Detection already read every file, so a read error here means the file changed.
    """
    faces = []
    for f in files:
        try:
            image, scale = read_image_reduced(root / f, WORK_MAX_SIDE)
        except ImageReadError as exc:
            raise ValueError(f"cannot read {root / f}: {exc.reason}") from None
        faces.append(FaceInput(f, image, scale, np.asarray(boxes[f], np.float64)))
    return faces


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


def _warp(image: np.ndarray, matrix: np.ndarray, template: Template) -> np.ndarray:
    """The same warp as :func:`facealign.alignment.warp_face` (bilinear, black border)."""
    import cv2

    return cv2.warpAffine(image, matrix, template.size, flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


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
        self.key = f"box-{_text_digest(BOX_MEAN_SHAPE.tobytes().hex())[:8]}-{template.name}{template.width}"

    def crop(self, face: FaceInput) -> np.ndarray:
        """Aligned crop of one face."""
        return _warp(face.image, box_alignment_matrix(face.working_box, self.template), self.template)

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

    def __init__(self, name: str, predictor: PointPredictor, template: Template,
                 weights_path: str | Path) -> None:
        self.name = name
        self.predictor = predictor
        self.template = template
        self.key = f"{name}-{file_digest(weights_path)}-{template.name}{template.width}"

    @classmethod
    def from_name(cls, name: str, template: Template, weights: str | Path | None = None) -> LandmarkAligner:
        """The aligner ``name`` of :data:`ALIGNER_NAMES` that uses landmarks, onto ``template``.

        ``weights`` replaces the shipped engine weights (``tcnn``, ``vanilla``)
        or dlib's model file (``dlib-ert``, ``dlib-5pt``).
        """
        if name in ("tcnn", "vanilla"):
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
        return _stack([warp_face(f.image, p, self.template)[0] for f, p in zip(faces, self.landmarks(faces))],
                      self.template)


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
        self.key = f"manifest-{file_digest(self.path)}-{template.name}{template.width}"

    def crop(self, face: FaceInput) -> np.ndarray:
        candidates = self.points.get(face.file)
        if not candidates:
            return self.fallback.crop(face)
        points = _pick_face(candidates, face.box)
        return warp_face(face.image, _to_working(points, face.scale), self.template)[0]

    def align(self, faces: Sequence[FaceInput]) -> np.ndarray:
        return _stack([self.crop(f) for f in faces], self.template)

    def missing(self, files: Iterable[str]) -> list[str]:
        """Those of ``files`` that have no face in the manifest (aligned by the box rule)."""
        return [f for f in files if not self.points.get(f)]


def get_aligner(
    spec: str,
    template: Template,
    images_root: str | Path | None = None,
    weights: Mapping[str, str | Path | None] | None = None,
) -> Aligner:
    """Build an aligner from its name.

    Parameters
    ----------
    spec : str
        One of :data:`ALIGNER_NAMES` or ``"manifest:PATH"``.
    template : Template
        Output template (:attr:`BackboneChoice.template`).
    images_root : path, optional
        Needed by ``manifest:PATH``.
    weights : mapping, optional
        Model files by aligner name (``{"tcnn": path}``); shipped by default.

    Raises
    ------
    ValueError
        For an unknown name, or ``manifest:`` without a path or image root.
    ImportError
        For ``dlib-ert`` / ``dlib-5pt`` without the ``face-recognition-models`` package.
    """
    resolved = template
    if spec in ALIGNER_NAMES and spec != "box":
        return LandmarkAligner.from_name(spec, resolved, (weights or {}).get(spec))
    if spec == "box":
        return BoxAligner(resolved)
    if spec.startswith("manifest:"):
        path = spec[len("manifest:"):]
        if not path or images_root is None:
            raise ValueError("manifest aligner needs 'manifest:PATH' and an image root")
        return ManifestAligner(path, images_root, resolved)
    raise ValueError(f"unknown aligner {spec!r}; choose one of {list(ALIGNER_NAMES)} or 'manifest:PATH'")


# --------------------------------------------------------------------------- backbone


def default_backbone_path() -> Path:
    """The shipped backbone weights, ``recognition/weights/alexnet.pt``."""
    return Path(__file__).resolve().parent / "weights" / "alexnet.pt"


@dataclass(frozen=True)
class BackboneChoice:
    """A loaded backbone with what the pipeline needs to know about it.

    Attributes
    ----------
    name : str
        ``"alexnet"`` or a name of :data:`BACKBONE_NAMES`.
    network : Backbone
        The feature extractor.
    path : pathlib.Path
        Its weights file.
    template : Template
        The alignment template of its crops, at its input side.
    key : str
        Identifies it in feature cache names (name and weights hash).
    """

    name: str
    network: Backbone
    path: Path
    template: Template
    key: str

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for reports."""
        return {"name": self.name, "path": str(self.path), "sha1": file_digest(self.path),
                "template": self.template.name, "input_size": self.network.input_size}


def load_backbone(spec: str | Path | None = None, batch_size: int = 64) -> BackboneChoice:
    """Load a backbone: the shipped AlexNet by default, an AlexNet weights file, or ``"dlib-resnet"``.

    The AlexNet crops use the :data:`DEFAULT_TEMPLATE` at the network's input
    side; ``dlib-resnet`` crops use dlib's chip layout
    (:func:`recognition.dlib_resnet.dlib_chip_template`, 150 px).

    Raises
    ------
    FileNotFoundError
        If an AlexNet weights file does not exist.
    ImportError
        For ``dlib-resnet`` without the ``face-recognition-models`` package.
    """
    if spec is not None and str(spec) in BACKBONE_NAMES:
        from .dlib_resnet import DlibResNetBackbone

        dlib_net = DlibResNetBackbone()
        return BackboneChoice("dlib-resnet", dlib_net, dlib_net.model_path, dlib_net.template,
                              f"dlib-resnet-{file_digest(dlib_net.model_path)}")
    from .backbone import AlexNetBackbone

    path = Path(spec) if spec is not None else default_backbone_path()
    if not path.is_file():
        raise FileNotFoundError(f"no backbone weights at {path}; train one with 'recognition train', "
                                f"pass an AlexNet weights file or one of {list(BACKBONE_NAMES)} to --backbone")
    net = AlexNetBackbone.load(path, batch_size=batch_size)
    # The shipped AlexNet's cache key stays the bare weights hash (feature caches of earlier runs stay valid).
    return BackboneChoice("alexnet", net, path, get_template(DEFAULT_TEMPLATE, net.input_size), file_digest(path))


def export_backbone(checkpoint: str | Path, out: str | Path, half: bool = True,
                    keep_classifier: bool = False) -> dict[str, Any]:
    """Write a small, inference-only copy of a training checkpoint.

    The optimizer state, random-generator states and history are dropped.
    Unless ``keep_classifier``, the identity classifier (not used for
    verification features) is replaced by a one-class placeholder of zeros
    (``config.num_classes = 1``; the trained class count is kept as
    ``trained_num_classes``). With ``half``, tensors are stored as float16;
    :meth:`AlexNetBackbone.load` casts them back to float32 when loading.

    Returns
    -------
    dict
        ``{"path", "bytes", "parameters", "half", "classifier"}``.
    """
    import torch

    from .backbone import CHECKPOINT_FORMAT, load_alexnet_checkpoint

    payload = load_alexnet_checkpoint(checkpoint)
    config = dict(payload["config"])
    state = {k: v.detach().clone() for k, v in payload["state_dict"].items()}
    extra: dict[str, Any] = {}
    if not keep_classifier:
        extra["trained_num_classes"] = int(config["num_classes"])
        config["num_classes"] = 1
        state["classifier.weight"] = torch.zeros(1, state["classifier.weight"].shape[1])
        state["classifier.bias"] = torch.zeros(1)
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    for key in ("epoch", "history", "training"):
        if key in payload:
            extra[key] = payload[key]
    result = dict(extra, format=CHECKPOINT_FORMAT, config=config, state_dict=state,
                  mean=list(payload["mean"]), std=list(payload["std"]), storage="float16" if half else "float32")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(result, tmp)
    os.replace(tmp, out)
    return {"path": str(out), "bytes": out.stat().st_size,
            "parameters": int(sum(v.numel() for v in state.values())), "half": half,
            "classifier": keep_classifier}


# --------------------------------------------------------------------------- features


@dataclass
class FeatureTable:
    """Features of a set of images.

    Attributes
    ----------
    files : list of str
        Image paths (relative to the image root).
    features : numpy.ndarray
        ``(N, D)`` float32 raw backbone features, row ``i`` for ``files[i]``.
    """

    files: list[str]
    features: np.ndarray
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = {f: i for i, f in enumerate(self.files)}

    def rows(self, files: Sequence[str]) -> np.ndarray:
        """Feature rows of ``files`` (in that order)."""
        try:
            return self.features[[self.index[f] for f in files]]
        except KeyError as exc:
            raise ValueError(f"no features for image {exc.args[0]!r}") from None


def _save_features(path: Path, files: list[str], boxes: np.ndarray, features: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, files=np.asarray(files, dtype=str), boxes=boxes, features=features)
    os.replace(tmp, path)


def extract_features(
    files: Sequence[str],
    images_root: str | Path,
    boxes: Mapping[str, np.ndarray],
    aligner: Aligner,
    backbone: Backbone,
    cache_path: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FeatureTable:
    """Raw backbone features of the aligned face of every image.

    Parameters
    ----------
    files : sequence of str
        Images relative to ``images_root``.
    images_root : path
        Image root.
    boxes : mapping
        ``file -> (4,)`` face box in original-image pixels.
    aligner : Aligner
        Alignment under test.
    backbone : Backbone
        Embedding network; crops are made at its input side.
    cache_path : path, optional
        ``.npz`` cache (``files``, ``boxes``, ``features``). Rows whose file
        and box match are reused; the others are computed and the file is
        rewritten (every :data:`_FEATURE_SAVE_EVERY` images and at the end).
    progress : callable, optional
        ``progress(done, total)`` over the images computed by this call.

    Returns
    -------
    FeatureTable
        Rows in the order of ``files`` (duplicates removed).

    Raises
    ------
    ValueError
        If the aligner's crop size differs from the backbone input side, or an
        image cannot be read.
    """
    if aligner.template.size != (backbone.input_size, backbone.input_size):
        raise ValueError(f"aligner crops are {aligner.template.size}, backbone expects {backbone.input_size}")
    files = list(dict.fromkeys(files))
    root = Path(images_root)
    cached: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    cache = Path(cache_path) if cache_path is not None else None
    if cache is not None and cache.is_file():
        with np.load(cache) as data:
            for f, b, x in zip(data["files"].tolist(), data["boxes"], data["features"]):
                cached[f] = (b, x)
    known: dict[str, np.ndarray] = {}
    for f in files:
        if f in cached and np.allclose(cached[f][0], boxes[f], atol=1e-3):
            known[f] = cached[f][1]
    todo = [f for f in files if f not in known]

    def save() -> None:
        if cache is None:
            return
        merged = {f: cached[f] for f in cached}
        merged.update({f: (np.asarray(boxes[f], np.float64), known[f]) for f in known})
        names = sorted(merged)
        _save_features(cache, names, np.stack([merged[n][0] for n in names]),
                       np.stack([merged[n][1] for n in names]).astype(np.float32))

    if progress is not None and todo:
        progress(0, len(todo))
    since_save = 0
    for start in range(0, len(todo), _FEATURE_BATCH):
        batch = todo[start:start + _FEATURE_BATCH]
        faces = read_face_inputs(root, batch, boxes)
        features = backbone.embed(aligner.align(faces))
        for f, x in zip(batch, features):
            known[f] = x
        since_save += len(batch)
        if since_save >= _FEATURE_SAVE_EVERY:
            save()
            since_save = 0
        if progress is not None:
            progress(start + len(batch), len(todo))
    if todo:
        save()
    if not files:
        return FeatureTable([], np.zeros((0, 0), np.float32))
    return FeatureTable(files, np.stack([known[f] for f in files]).astype(np.float32))


# --------------------------------------------------------------------------- protocol helpers


def protocol_files(protocol: VerificationProtocol) -> list[str]:
    """Sorted unique image files of all splits (training and test)."""
    return sorted({f for s in protocol.splits for f in (*s.train_files, *s.test_files)})


def protocol_boxes(protocol: VerificationProtocol) -> dict[str, tuple[float, float, float, float]]:
    """``file -> FACE_* box`` for images that have one (the first one listed)."""
    boxes: dict[str, tuple[float, float, float, float]] = {}
    for split in protocol.splits:
        rows = [*split.train, *(r for t in split.templates.values() for r in t)]
        for row in rows:
            if row.box is not None:
                boxes.setdefault(row.file, row.box)
    return boxes


def protocol_sizes(protocol: VerificationProtocol) -> dict[str, Any]:
    """Sizes of a protocol: per split and mean over splits."""
    per_split = []
    for s in protocol.splits:
        per_split.append({
            "split": s.index,
            "train_subjects": len({r.subject_id for r in s.train}),
            "train_images": len(s.train_files),
            "test_subjects": len({rows[0].subject_id for rows in s.templates.values()}),
            "test_images": len(s.test_files),
            "test_templates": len(s.templates),
            "genuine": int(s.genuine.sum()),
            "impostor": int((~s.genuine).sum()),
        })
    keys = [k for k in per_split[0] if k != "split"]
    return {
        "splits": len(per_split),
        "images": len(protocol_files(protocol)),
        "mean": {k: float(np.mean([p[k] for p in per_split])) for k in keys},
        "per_split": per_split,
    }


# --------------------------------------------------------------------------- evaluation


@dataclass
class SplitResult:
    """Verification result of one split.

    Attributes
    ----------
    index : int
        Split number.
    tar : dict
        ``FAR -> TAR`` at :data:`FAR_TARGETS`.
    roc_tar : numpy.ndarray
        TAR at every FAR of :data:`ROC_GRID`.
    genuine, impostor : int
        Numbers of comparisons.
    train_images : int
        Images the PCA was fitted on.
    pca_components : int
        Fitted PCA dimension.
    scores : numpy.ndarray
        ``(M,)`` fused score of every comparison of the split (protocol order).
    comparisons : SplitComparisons
        Subjects and genuine flags of those comparisons (for the paired statistics).
    """

    index: int
    tar: dict[float, float]
    roc_tar: np.ndarray
    genuine: int
    impostor: int
    train_images: int
    pca_components: int
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    comparisons: SplitComparisons | None = field(default=None, repr=False)


@dataclass
class VerificationResult:
    """Verification over all splits: TAR at FAR as mean and std, and the mean ROC."""

    splits: list[SplitResult]
    betas: tuple[float, ...]

    @property
    def tar_mean(self) -> dict[float, float]:
        return {far: float(np.mean([s.tar[far] for s in self.splits])) for far in FAR_TARGETS}

    @property
    def tar_std(self) -> dict[float, float]:
        return {far: float(np.std([s.tar[far] for s in self.splits])) for far in FAR_TARGETS}

    def summary(self) -> dict[str, Any]:
        """JSON-ready TAR figures (``"1e-02"`` style keys)."""
        return {
            "tar_at_far": {
                f"{far:.0e}": {"mean": self.tar_mean[far], "std": self.tar_std[far],
                               "splits": [s.tar[far] for s in self.splits]}
                for far in FAR_TARGETS
            },
            "betas": list(self.betas),
            "splits": [
                {"split": s.index, "genuine": s.genuine, "impostor": s.impostor,
                 "train_images": s.train_images, "pca_components": s.pca_components,
                 **{f"tar@{far:.0e}": s.tar[far] for far in FAR_TARGETS}}
                for s in self.splits
            ],
        }

    def roc(self) -> dict[str, Any]:
        """Mean ROC over splits on :data:`ROC_GRID` (JSON-ready)."""
        tars = np.stack([s.roc_tar for s in self.splits])
        return {"far": ROC_GRID.tolist(), "tar_mean": tars.mean(0).tolist(), "tar_std": tars.std(0).tolist(),
                "tar_per_split": {str(s.index): s.roc_tar.tolist() for s in self.splits}}


def evaluate_split(
    split: Split,
    features: FeatureTable,
    betas: Sequence[float] = DEFAULT_BETAS,
    n_components: int = 4000,
) -> SplitResult:
    """Power normalisation, PCA on the split's training images, Pearson + SoftMax, TAR at FAR.

    Raises
    ------
    ValueError
        If the split has no training image or lacks genuine or impostor comparisons.
    """
    train_files = split.train_files
    if not train_files:
        raise ValueError(f"split {split.index} has no training images to fit the PCA on")
    pca = PCAProjector(n_components).fit(power_normalize(features.rows(train_files).astype(np.float64)))
    test_files = split.test_files
    projected = pca.transform(power_normalize(features.rows(test_files).astype(np.float64)))
    row_of = {f: i for i, f in enumerate(test_files)}
    by_template = {tid: projected[[row_of[r.file] for r in rows]] for tid, rows in split.templates.items()}
    scores = np.asarray(template_scores(by_template, split.comparisons, tuple(betas)), np.float64)
    tar = tar_at_far(scores, split.genuine, list(FAR_TARGETS))
    roc_tar = np.asarray(tar_at_far(scores, split.genuine, ROC_GRID), np.float64)
    subjects = np.array([[split.template_subject(int(a)), split.template_subject(int(b))]
                         for a, b in np.asarray(split.comparisons).reshape(-1, 2)])
    return SplitResult(
        index=split.index,
        tar={far: float(v) for far, v in zip(FAR_TARGETS, np.atleast_1d(tar))},
        roc_tar=roc_tar,
        genuine=int(split.genuine.sum()),
        impostor=int((~split.genuine).sum()),
        train_images=len(train_files),
        pca_components=pca.n_components_,
        scores=scores,
        comparisons=SplitComparisons(subjects, np.asarray(split.genuine, bool)),
    )


def evaluate_protocol(
    protocol: VerificationProtocol,
    features: FeatureTable,
    betas: Sequence[float] = DEFAULT_BETAS,
    n_components: int = 4000,
) -> VerificationResult:
    """:func:`evaluate_split` on every split of ``protocol``."""
    if not betas:
        raise ValueError("need at least one beta")
    return VerificationResult([evaluate_split(s, features, betas, n_components) for s in protocol.splits],
                              tuple(float(b) for b in betas))


# --------------------------------------------------------------------------- reporting


def format_tar(mean: float, std: float) -> str:
    """Table 2 style ``.718 ± .01``."""
    def short(value: float, digits: int) -> str:
        text = f"{value:.{digits}f}"
        return text[1:] if text.startswith("0.") else text
    return f"{short(mean, 3)} ± {short(std, 2)}"


def plot_rocs(curves: Mapping[str, Mapping[str, Any]], path: str | Path, title: str = "") -> None:
    """Mean ROC (TAR vs log FAR, ±1 std band) of one or several aligners, as PNG."""
    from facealign.research.figures import subplots

    fig, ax = subplots(figsize=(5.5, 4.2), dpi=120)
    for name, roc in curves.items():
        far = np.asarray(roc["far"])
        mean, std = np.asarray(roc["tar_mean"]), np.asarray(roc["tar_std"])
        ax.plot(far, mean, label=name)
        ax.fill_between(far, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1), alpha=0.2)
    for target in FAR_TARGETS:
        ax.axvline(target, color="0.7", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlim(ROC_GRID[0], 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    if title:
        ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    _atomic_write_text(Path(path), json.dumps(data, indent=2) + "\n")


@dataclass
class AlignerRun:
    """Everything :func:`run_aligner` produced for one aligner."""

    aligner: str
    key: str
    result: VerificationResult
    manifest_missing: int = 0
    seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        return {"aligner": self.aligner, "key": self.key, **self.result.summary(),
                "manifest_missing": self.manifest_missing, "feature_seconds": round(self.seconds, 1)}


def feature_cache_path(cache_dir: Path, aligner: Aligner, backbone: BackboneChoice, detections: DetectionCache) -> Path:
    """Cache file of the features of ``aligner`` through ``backbone`` on these detections (module notes)."""
    return cache_dir / f"features-{aligner.key}-{backbone.key}-{detections.key}.npz"


def _fill_one_cache(spec: str, backbone_spec: str | Path | None, images_root: Path,
                    weights: Mapping[str, str | Path | None], files: list[str], boxes: Mapping[str, np.ndarray],
                    cache_path: Path) -> None:
    """Worker: the features of one aligner into its cache file (one torch thread)."""
    import torch

    torch.set_num_threads(1)
    choice = load_backbone(backbone_spec)
    aligner = get_aligner(spec, choice.template, images_root=images_root, weights=weights)
    extract_features(files, images_root, boxes, aligner, choice.network, cache_path)


def fill_feature_caches(
    specs: Sequence[str],
    aligners: Sequence[Aligner],
    backbone_spec: str | Path | None,
    protocol: VerificationProtocol,
    faces: FaceBoxes,
    backbone: BackboneChoice,
    detections: DetectionCache,
    cache_dir: Path,
    images_root: Path,
    weights: Mapping[str, str | Path | None],
    jobs: int,
    quiet: bool = False,
) -> None:
    """Compute the features of several aligners in parallel processes, one aligner per process.

    Each worker builds its aligner and backbone from their names and fills the
    aligner's feature cache (:func:`feature_cache_path`), so that
    :func:`run_aligner` then only evaluates. Aligners whose cache is complete
    cost nothing. Parallel over aligners rather than images: the dlib models do
    not pickle, and each aligner's pass is the same size.
    """
    from joblib import Parallel, cpu_count, delayed

    files = protocol_files(protocol)
    tasks = [
        delayed(_fill_one_cache)(spec, backbone_spec, images_root, weights, files, faces.boxes,
                                 feature_cache_path(cache_dir, aligner, backbone, detections))
        for spec, aligner in zip(specs, aligners)
    ]
    n_jobs = min(len(tasks), cpu_count() if jobs < 1 else jobs)
    Parallel(n_jobs=n_jobs, backend="loky", verbose=0 if quiet else 5)(tasks)


def run_aligner(
    protocol: VerificationProtocol,
    faces: FaceBoxes,
    aligner: Aligner,
    backbone: BackboneChoice,
    detections: DetectionCache,
    cache_dir: Path,
    betas: Sequence[float] = DEFAULT_BETAS,
    n_components: int = 4000,
    progress: Callable[[int, int], None] | None = None,
) -> AlignerRun:
    """Features (cached) and verification of one aligner on a protocol."""
    started = time.perf_counter()
    files = protocol_files(protocol)
    table = extract_features(files, detections.images_root, faces.boxes, aligner, backbone.network,
                             feature_cache_path(cache_dir, aligner, backbone, detections), progress)
    seconds = time.perf_counter() - started
    result = evaluate_protocol(protocol, table, betas, n_components)
    missing = len(aligner.missing(files)) if isinstance(aligner, ManifestAligner) else 0
    return AlignerRun(aligner.name, aligner.key, result, missing, seconds)

