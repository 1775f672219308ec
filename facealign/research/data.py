"""The MTFL landmark data set, its fixed train/validation split, and its detector boxes.

MTFL (Zhang et al., ECCV 2014) ships 80 x 80 RGB images with five points in
MTFL order (:data:`facealign.constants.POINT_NAMES`), pixel-centre coordinates.
``train.txt`` rows read ``path x1..x5 y1..y5 gender smile glasses pose``.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..constants import NUM_POINTS
from ..detection import Detector, get_detector
from ..imageio import read_image, write_bytes_atomic

#: Attribute columns of MTFL, in file order. Values: gender 1 male / 2 female;
#: smile, glasses 1 yes / 2 no; pose 1..5 (left profile .. right profile); -1 unknown.
ATTRIBUTE_NAMES: tuple[str, ...] = ("gender", "smile", "glasses", "pose")

SPLIT_FILES = {"train": "train.txt", "test": "test_aflw.txt"}

#: Fraction of the training faces held out for validation (paper: 90/10).
VALIDATION_FRACTION = 0.1
#: Seed of the fixed train/validation split.
SPLIT_SEED = 20160101


@dataclass
class LandmarkSet:
    """Faces with ground-truth landmarks.

    Attributes
    ----------
    root : Path
        Folder the image paths are relative to.
    paths : list of str
    points : ndarray, shape (N, 5, 2), float64 -- (x, y) pixel coordinates.
    attributes : ndarray, shape (N, 4), int -- see :data:`ATTRIBUTE_NAMES`.
    """

    root: Path
    paths: list[str]
    points: np.ndarray
    attributes: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: np.ndarray) -> LandmarkSet:
        index = np.asarray(index)
        return LandmarkSet(self.root, [self.paths[i] for i in index], self.points[index], self.attributes[index])

    def load_images(self) -> np.ndarray:
        """Decode every image once; returns ``N x H x W x 3`` uint8 RGB (MTFL images are all 80 x 80)."""
        images = [read_image(self.root / p) for p in self.paths]
        return np.stack(images)

    def fingerprint(self) -> str:
        """Short hash of the paths, to key caches."""
        return hashlib.sha1("\n".join(self.paths).encode()).hexdigest()[:12]


def default_datasets_root(beside: str | Path | None = None) -> Path:
    """The read-only data sets: ``$FACEALIGN_DATASETS``, else ``../shared/datasets`` beside
    ``beside`` (default: the current folder, i.e. a checkout's root). Every default data
    path (MTFL, LFW, celeba_wild; the commands, ``recognition`` and ``bench/``) starts here."""
    env = os.environ.get("FACEALIGN_DATASETS")
    if env:
        return Path(env)
    return Path(beside if beside is not None else Path.cwd()).resolve().parent / "shared" / "datasets"


def default_mtfl_root() -> Path:
    """``$FACEALIGN_MTFL``, else ``mtfl/`` in :func:`default_datasets_root`."""
    env = os.environ.get("FACEALIGN_MTFL")
    return Path(env) if env else default_datasets_root() / "mtfl"


def default_cache_dir() -> Path:
    """Where the detector-box caches go by default: ``$FACEALIGN_CACHE``, else
    ``$XDG_CACHE_HOME/facealign``, else ``~/.cache/facealign`` (never the current folder)."""
    env = os.environ.get("FACEALIGN_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "facealign"


def load_mtfl(root: str | Path, split: str = "train") -> LandmarkSet:
    """Read ``train.txt`` (``split="train"``) or ``test_aflw.txt`` (``split="test"``)."""
    root = Path(root)
    try:
        listing = root / SPLIT_FILES[split]
    except KeyError:
        raise ValueError(f"split must be one of {sorted(SPLIT_FILES)}, got {split!r}") from None
    if not listing.is_file():
        raise FileNotFoundError(f"no MTFL listing at {listing}")
    paths, coords, attrs = [], [], []
    for line in listing.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        paths.append(parts[0])
        coords.append([float(v) for v in parts[1 : 1 + 2 * NUM_POINTS]])
        attrs.append([int(v) for v in parts[1 + 2 * NUM_POINTS : 5 + 2 * NUM_POINTS]])
    xy = np.asarray(coords, np.float64).reshape(-1, 2, NUM_POINTS).transpose(0, 2, 1)
    return LandmarkSet(root, paths, np.ascontiguousarray(xy), np.asarray(attrs, np.int64))


def train_validation_split(
    n: int, fraction: float = VALIDATION_FRACTION, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed, seeded split of ``range(n)`` into sorted train and validation indices."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def match_detection(boxes: np.ndarray, points: np.ndarray) -> int:
    """Index of the box that holds the face annotated by ``points``, or -1.

    A box matches when it contains the centroid of the five points; among several,
    the one whose centre is closest to that centroid wins.
    """
    if len(boxes) == 0:
        return -1
    c = points.mean(0)
    inside = (boxes[:, 0] < c[0]) & (c[0] < boxes[:, 2]) & (boxes[:, 1] < c[1]) & (c[1] < boxes[:, 3])
    if not inside.any():
        return -1
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    dist = np.where(inside, np.linalg.norm(centres - c, axis=1), np.inf)
    return int(np.argmin(dist))


#: Columns of :func:`detect_boxes`' result: box (4), score (1), the detector's own
#: five points (10, x and y interleaved; NaN for back-ends without points).
DETECTION_COLUMNS = 15


def _detect_chunk(detector: Detector, images: np.ndarray, points: np.ndarray) -> np.ndarray:
    out = np.full((len(images), DETECTION_COLUMNS), np.nan, np.float64)
    for i, (image, pts) in enumerate(zip(images, points)):
        det = detector.detect(image)
        k = match_detection(det.boxes, pts)
        if k >= 0:
            out[i, :4] = det.boxes[k]
            out[i, 4] = det.scores[k]
            if det.landmarks is not None:
                out[i, 5:] = det.landmarks[k].reshape(-1)
    return out


def detection_points(detections: np.ndarray) -> np.ndarray | None:
    """The detector's own points ``N x 5 x 2`` from :func:`detect_boxes` rows, or None when it gives none."""
    points = np.asarray(detections, np.float64)[:, 5:DETECTION_COLUMNS].reshape(-1, 5, 2)
    found = np.isfinite(detections[:, 0])
    return points if np.isfinite(points[found]).all() and found.any() else None


def detect_boxes(
    images: np.ndarray,
    points: np.ndarray,
    detector: str | Detector | None = None,
    jobs: int = -1,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Run the detector on every image and keep the box of the annotated face.

    Returns
    -------
    ndarray, shape (N, 15)
        ``x1, y1, x2, y2, score`` and the detector's own five points (x, y
        interleaved; NaN for detectors without points) per image; NaN where the
        detector missed the face (such faces are dropped from training and count
        as failures in evaluation). See :data:`DETECTION_COLUMNS`.
    """
    from .parallel import parallel_map

    detector = get_detector(detector)
    chunk = 256
    starts = list(range(0, len(images), chunk))
    parts: list[np.ndarray] = []
    tasks = [(detector, images[s : s + chunk], points[s : s + chunk]) for s in starts]
    for part in parallel_map(_detect_chunk, tasks, jobs):
        parts.append(part)
        if progress is not None:
            progress(len(part))
    return np.concatenate(parts) if parts else np.zeros((0, DETECTION_COLUMNS))


def _detector_fingerprint(name: str) -> str:
    """Short hash of a detector's settings, so that changed settings never reuse stale boxes."""
    detector = get_detector(name)
    settings = {
        k: getattr(detector, k)
        for k in sorted(dir(detector))
        if not k.startswith("_") and not callable(getattr(detector, k)) and k != "threads"
    }
    return hashlib.sha1(repr(settings).encode()).hexdigest()[:8]


def cached_boxes(
    data: LandmarkSet,
    images: np.ndarray,
    cache_dir: str | Path,
    detector_name: str,
    jobs: int = -1,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """:func:`detect_boxes` with the result cached in ``cache_dir`` by data set and detector."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = f"detections-{detector_name}-{_detector_fingerprint(detector_name)}-{data.fingerprint()}.npy"
    path = cache_dir / name
    if path.exists():
        return np.load(path)
    boxes = detect_boxes(images, data.points, detector_name, jobs=jobs, progress=progress)
    buffer = io.BytesIO()
    np.save(buffer, boxes)
    write_bytes_atomic(path, buffer.getvalue())
    return boxes
