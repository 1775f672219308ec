"""Shared detection, computed once per image and kept on disk, and the cache folder.

Every image is decoded (at most :data:`~facealign.constants.WORK_MAX_SIDE`
pixels on its longer side) and the detector runs once on it
(:class:`DetectionCache`). The boxes and scores of all faces, in pixels of the
original image, are appended to a JSON-lines file in the cache folder, named
after the detector, a fingerprint of its settings
(``facealign.research.data._detector_fingerprint``, the one facealign's detection caches
use, so a changed setting never reuses
stale boxes) and a hash of the resolved image root, so a rerun (or another
aligner, another protocol on the same images) reuses them. A killed run
resumes where it stopped.

A detector that gives five points (RetinaFace) has them stored too, in pixels
of the original image (``landmarks``), for the ``retinaface`` aligner.

A :class:`~recognition.conditions.ProbeReduction` makes the cache one of the
*reduced* images (low-resolution probes, ``compare-aligners --probe-iod``):
every image is decoded at its own reduction factor before detection, the
records are still in original-image pixels, and the file name carries the
reduction's key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facealign.constants import TRAINING_DETECTOR, WORK_MAX_SIDE
from facealign.geometry import from_resized
from facealign.imageio import ImageReadError, read_image_reduced
from facealign.research.parallel import parallel_map, resolve_jobs

from .digests import text_digest

if TYPE_CHECKING:
    from .conditions import ProbeReduction

__all__ = [
    "DetectionRecord",
    "DetectionCache",
    "default_cache_dir",
]

_DETECTION_CHUNK = 32


def default_cache_dir() -> Path:
    """Cache folder: ``$RECOGNITION_CACHE`` if set, else ``recognition/`` in facealign's
    cache folder (:func:`facealign.research.data.default_cache_dir`: ``$FACEALIGN_CACHE``, else
    ``$XDG_CACHE_HOME/facealign`` or ``~/.cache/facealign``)."""
    from facealign.research.data import default_cache_dir as facealign_cache_dir

    env = os.environ.get("RECOGNITION_CACHE")
    return Path(env) if env else facealign_cache_dir() / "recognition"


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
    landmarks : numpy.ndarray or None
        ``(K, 5, 2)`` the detector's own five points (MTFL order) of every box,
        when it gives them; ``None`` otherwise (or in records written before
        points were stored).
    """

    file: str
    size: tuple[float, float]
    boxes: np.ndarray
    scores: np.ndarray
    error: str | None = None
    landmarks: np.ndarray | None = None

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        row = {
            "file": self.file,
            "size": [round(float(v), 3) for v in self.size],
            "boxes": [[round(float(v), 3) for v in b] for b in self.boxes],
            "scores": [round(float(s), 5) for s in self.scores],
        }
        if self.landmarks is not None:
            row["landmarks"] = [[[round(float(v), 3) for v in p] for p in face] for face in self.landmarks]
        return row

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> DetectionRecord:
        if "error" in row:
            return cls(str(row["file"]), (0.0, 0.0), np.zeros((0, 4)), np.zeros(0), str(row["error"]))
        boxes = np.asarray(row["boxes"], np.float64).reshape(-1, 4)
        scores = np.asarray(row["scores"], np.float64).reshape(-1)
        if len(boxes) != len(scores):
            raise ValueError("boxes and scores differ in length")
        width, height = (float(v) for v in row["size"])
        landmarks = None
        if "landmarks" in row:
            landmarks = np.asarray(row["landmarks"], np.float64).reshape(-1, 5, 2)
            if len(landmarks) != len(boxes):
                raise ValueError("boxes and landmarks differ in length")
        return cls(str(row["file"]), (width, height), boxes, scores, None, landmarks)


def _detect_chunk(
    root: str, files: Sequence[str], detector: str, single_thread: bool, factors: Mapping[str, float] | None = None
) -> list[dict[str, Any]]:
    """Worker: detect faces in ``files`` (relative to ``root``); JSON-ready records.

    ``factors`` (a probe reduction's, by file) reduces the images before detection.
    """
    import cv2

    from facealign.detection import get_detector
    from facealign.reboxing import training_boxes

    from .conditions import read_reduced

    if single_thread:  # a worker process, one of several
        cv2.setNumThreads(1)
    det = get_detector(detector)
    out = []
    for file in files:
        try:
            if factors is None:
                image, scale = read_image_reduced(Path(root) / file, WORK_MAX_SIDE)
            else:
                image, scale = read_reduced(Path(root) / file, factors[file])
        except ImageReadError as exc:
            out.append(DetectionRecord(file, (0.0, 0.0), np.zeros((0, 4)), np.zeros(0), exc.reason).to_json())
            continue
        found = det.detect(image)
        # In the training detector's box convention (identity for dlib), so that
        # every aligner and the box baseline see the same framing whatever the detector.
        boxes = training_boxes(detector, found.boxes, found.landmarks)
        boxes = from_resized(np.asarray(boxes, np.float64).reshape(-1, 2, 2), scale, scale).reshape(-1, 4)
        points = None
        if found.landmarks is not None:
            points = from_resized(np.asarray(found.landmarks, np.float64).reshape(-1, 5, 2), scale, scale)
        h, w = image.shape[:2]
        record = DetectionRecord(file, (w / scale, h / scale), boxes, found.scores.astype(np.float64), None, points)
        out.append(record.to_json())
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
        (the settings hash is ``facealign.research.data._detector_fingerprint``'s, so
        changed detector settings never reuse stale boxes).
    reduction : ProbeReduction, optional
        Detect on the reduced images instead (its key is added to the name).

    Notes
    -----
    Records are keyed by relative path only: if images under the root are
    replaced, delete the cache file.
    """

    def __init__(
        self,
        images_root: str | Path,
        detector: str = TRAINING_DETECTOR,
        cache_dir: str | Path | None = None,
        reduction: ProbeReduction | None = None,
    ) -> None:
        self.images_root = Path(images_root)
        if not self.images_root.is_dir():
            raise FileNotFoundError(f"image root not found: {self.images_root}")
        self.detector = detector
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        from facealign.research.data import _detector_fingerprint

        self.key = f"{detector}-{_detector_fingerprint(detector)}-{text_digest(str(self.images_root.resolve()))}"
        self.reduction = reduction
        if reduction is not None:
            self.key += f"-{reduction.key}"
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
        landmarks: bool = False,
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
        landmarks : bool
            Also re-detect cached records that have faces but no stored points
            (written before points were stored).

        Returns
        -------
        dict
            ``file -> DetectionRecord`` for every requested file.
        """
        records = self.load()
        todo = [
            f
            for f in dict.fromkeys(files)
            if f not in records
            or (landmarks and records[f].landmarks is None and records[f].error is None and len(records[f].boxes))
        ]
        if todo:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if jobs < 1 and jobs != -1:
                raise ValueError(f"jobs must be >= 1 or -1 (all cores), got {jobs}")
            chunks = [todo[i : i + _DETECTION_CHUNK] for i in range(0, len(todo), _DETECTION_CHUNK)]
            root = str(self.images_root)
            in_workers = resolve_jobs(jobs, len(chunks)) > 1
            factors = self.reduction.factors if self.reduction is not None else None
            tasks = [
                (root, c, self.detector, in_workers, None if factors is None else {f: factors[f] for f in c})
                for c in chunks
            ]
            results = parallel_map(_detect_chunk, tasks, jobs)
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
