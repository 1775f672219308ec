"""Hard conditions any protocol can take: low-resolution probes and pose (issue 26).

**Reference landmarks** (:func:`reference_landmarks`). Both conditions are
decided by one fixed landmark step that is *not* under test, so that no aligner
chooses its own images or pairs: dlib's 68-point ERT (:data:`REFERENCE_ALIGNER`)
run on the shared face box of every image at full (working) resolution. Its
points are cached per image root, detections and model
(``reference-<model hash>-<detections key>.npz``; a row is reused only if its
face box is the same).

**Yaw** (:func:`yaw_from_68`). A cylinder head model: seen from the front, the
nose tip (iBUG point 30) lies midway between the two jaw ends at eye level
(points 0 and 16); turned by ``yaw`` about the vertical axis, the nose moves by
``R sin(yaw)`` while the jaw ends stay at about ``±R``. So, along the eye axis,
``sin(yaw) = (a - b) / (a + b)`` with ``a`` and ``b`` the distances from the
left and right jaw ends to the nose. Positive yaw: the nose is nearer the
image-right jaw end (the face turns towards the image's right). A coarse
estimate (about ±10°), enough to put templates in bins of 15° or more.

**Low resolution** (:class:`ProbeReduction`, :func:`probe_reduction`). Each
image is reduced by the factor that brings the reference inter-ocular distance
(distance between the two eye centres of the reference's five points, original
pixels) to ``target_iod``: decoded with the area-average reduction of
:func:`facealign.imageio.read_image_reduced`, so the factor is exact up to one
pixel of the image's longer side. Images whose face is already that small are
left as they are (counted). Detection and alignment then run on the reduced
image (:class:`recognition.caches.DetectionCache` and
:func:`recognition.face_inputs.read_face_inputs` take the reduction); the PCA
training images are not reduced.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facealign.constants import WORK_MAX_SIDE
from facealign.geometry import from_resized
from facealign.imageio import read_image_reduced, write_bytes_atomic

from .digests import file_digest, text_digest
from .face_inputs import read_face_inputs

__all__ = [
    "REFERENCE_ALIGNER",
    "ReferenceLandmarks",
    "reference_landmarks",
    "yaw_from_68",
    "inter_ocular_distance",
    "ProbeReduction",
    "probe_reduction",
    "read_reduced",
]

#: The fixed landmark step that decides the conditions (never an aligner's own points).
REFERENCE_ALIGNER = "dlib-ert"


def yaw_from_68(points68: np.ndarray) -> np.ndarray:
    """Yaw in degrees of iBUG 68-point shapes (cylinder model, see the module notes).

    Parameters
    ----------
    points68 : array_like
        ``(68, 2)`` or ``(N, 68, 2)`` points.

    Returns
    -------
    numpy.ndarray
        ``()`` or ``(N,)`` yaw in degrees, in ``[-90, 90]``.
    """
    pts = np.asarray(points68, np.float64)
    if pts.shape[-2:] != (68, 2):
        raise ValueError(f"expected (68, 2) or (N, 68, 2) points, got {pts.shape}")
    left_eye = pts[..., 36:42, :].mean(-2)
    right_eye = pts[..., 42:48, :].mean(-2)
    axis = right_eye - left_eye
    axis = axis / np.maximum(np.linalg.norm(axis, axis=-1, keepdims=True), 1e-9)
    a = ((pts[..., 30, :] - pts[..., 0, :]) * axis).sum(-1)
    b = ((pts[..., 16, :] - pts[..., 30, :]) * axis).sum(-1)
    ratio = (a - b) / np.maximum(a + b, 1e-9)
    return np.degrees(np.arcsin(np.clip(ratio, -1.0, 1.0)))


def inter_ocular_distance(points5: np.ndarray) -> np.ndarray:
    """Distance between the two eye centres of MTFL-order five-point shapes (``(5, 2)`` or ``(N, 5, 2)``)."""
    pts = np.asarray(points5, np.float64)
    return np.linalg.norm(pts[..., 1, :] - pts[..., 0, :], axis=-1)


@dataclass
class ReferenceLandmarks:
    """The reference aligner's 68 points of every image.

    Attributes
    ----------
    key : str
        Identifies the model and the detections (cache names, protocol records).
    points68 : dict
        ``file -> (68, 2)`` points in original-image pixels.
    """

    key: str
    points68: dict[str, np.ndarray]

    def five(self, file: str) -> np.ndarray:
        """The five MTFL points of ``file`` (eye centres, nose tip, mouth corners)."""
        from facealign.research.peers import reduce_68_to_5

        return reduce_68_to_5(self.points68[file])

    def iod(self, file: str) -> float:
        """Inter-ocular distance of ``file``'s face, original pixels."""
        return float(inter_ocular_distance(self.five(file)))

    def yaw(self, file: str) -> float:
        """Yaw of ``file``'s face, degrees (:func:`yaw_from_68`)."""
        return float(yaw_from_68(self.points68[file]))


def reference_landmarks(
    files: Sequence[str],
    images_root: str | Path,
    boxes: Mapping[str, np.ndarray],
    cache_dir: Path,
    detections_key: str,
    progress: Callable[[int, int], None] | None = None,
) -> ReferenceLandmarks:
    """dlib's 68-point ERT on the face box of every image (cached; see the module notes).

    Raises
    ------
    ImportError
        Without the ``face-recognition-models`` package (the recognition extra).
    """
    from facealign.research.peers import DlibShapePredictor

    predictor = DlibShapePredictor()
    key = f"{REFERENCE_ALIGNER}-{file_digest(predictor.model_path)}-{detections_key}"
    path = Path(cache_dir) / f"reference-{key}.npz"
    cached: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if path.is_file():
        with np.load(path) as data:
            for f, b, p in zip(data["files"].tolist(), data["boxes"], data["points"]):
                cached[f] = (b, p)
    files = list(dict.fromkeys(files))
    points: dict[str, np.ndarray] = {}
    todo = []
    for f in files:
        if f in cached and np.allclose(cached[f][0], boxes[f], atol=1e-3):
            points[f] = cached[f][1]
        else:
            todo.append(f)
    root = Path(images_root)
    for start in range(0, len(todo), 64):
        batch = todo[start : start + 64]
        for face in read_face_inputs(root, batch, boxes):
            found = predictor.predict68(face.image, face.working_box[None])[0]
            points[face.file] = from_resized(found, face.scale, face.scale)
        if progress is not None:
            progress(start + len(batch), len(todo))
    if todo:
        merged = {f: v for f, v in cached.items()}
        merged.update({f: (np.asarray(boxes[f], np.float64), points[f]) for f in points})
        names = sorted(merged)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            files=np.asarray(names, dtype=str),
            boxes=np.stack([merged[n][0] for n in names]),
            points=np.stack([merged[n][1] for n in names]),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, buffer.getvalue())
    return ReferenceLandmarks(key, {f: points[f] for f in files})


def read_reduced(path: str | Path, factor: float) -> tuple[np.ndarray, float]:
    """Decode an image reduced by ``factor`` (<= 1; capped at the working size).

    Returns the image and its exact scale relative to the original (pixel-centre
    rule, as :func:`facealign.imageio.read_image_reduced`).
    """
    if not 0 < factor <= 1:
        raise ValueError(f"reduction factor must be in (0, 1], got {factor}")
    if factor == 1:
        return read_image_reduced(path, WORK_MAX_SIDE)

    def side(width: int, height: int) -> int:
        return max(1, min(WORK_MAX_SIDE, math.floor(max(width, height) * factor + 1e-9)))

    return read_image_reduced(path, side)


@dataclass(frozen=True)
class ProbeReduction:
    """How much every image is reduced for a low-resolution condition.

    Attributes
    ----------
    target_iod : float
        Inter-ocular distance aimed at, pixels of the reduced image.
    factors : dict
        ``file -> factor`` in ``(0, 1]`` (1: the face is already at most that small).
    reference_key : str
        The reference landmarks the factors come from.
    """

    target_iod: float
    factors: Mapping[str, float]
    reference_key: str
    key: str = field(init=False)

    def __post_init__(self) -> None:
        digest = text_digest(self.reference_key + repr(sorted(self.factors.items())), 8)
        object.__setattr__(self, "key", f"iod{self.target_iod:g}-{digest}")

    def read(self, root: str | Path, file: str) -> tuple[np.ndarray, float]:
        """The reduced image of ``file`` and its scale relative to the original."""
        return read_reduced(Path(root) / file, self.factors[file])

    def summary(self) -> dict[str, float | int]:
        """JSON-ready: target, how many images were reduced and the factors' range."""
        values = np.asarray(list(self.factors.values()), np.float64)
        reduced = values[values < 1]
        return {
            "target_iod": self.target_iod,
            "images": int(len(values)),
            "reduced": int(len(reduced)),
            "already_small": int((values >= 1).sum()),
            "median_factor": float(np.median(reduced)) if len(reduced) else 1.0,
        }


def probe_reduction(target_iod: float, reference: ReferenceLandmarks, files: Sequence[str]) -> ProbeReduction:
    """The reduction that brings every face of ``files`` to ``target_iod`` pixels between the eyes.

    Raises
    ------
    ValueError
        If ``target_iod`` is not positive.
    """
    if not target_iod > 0:
        raise ValueError(f"target inter-ocular distance must be positive, got {target_iod}")
    factors = {}
    for f in dict.fromkeys(files):
        iod = reference.iod(f)
        factors[f] = min(1.0, target_iod / iod) if iod > 0 else 1.0
    return ProbeReduction(float(target_iod), factors, reference.key)
