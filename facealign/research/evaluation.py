"""Landmark accuracy as in the paper's section 5.1.

* Error of a face: mean Euclidean distance between predicted and ground-truth
  points, divided by the ground-truth inter-ocular distance (eye centre to eye
  centre), reported in percent.
* ``nme``: mean of that error over the faces the detector found.
* ``failure_rate``: fraction of *all* faces whose error exceeds 10%, where a face
  the detector missed counts as a failure (paper: "counting such test images as
  failures").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..constants import (  # the threshold's owner is the run time
    DEFAULT_DETECTOR,
    FAILURE_THRESHOLD,
    LEFT_EYE,
    RIGHT_EYE,
)
from ..imageio import write_json  # noqa: F401  (the owner; imported here for the research modules)

if TYPE_CHECKING:
    from .data import LandmarkSet

logger = logging.getLogger(__name__)


def normalized_errors(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-face mean point error over inter-ocular distance (a fraction, not %).

    ``pred`` and ``truth`` are ``N x 5 x 2`` in the same frame (any frame with equal
    x and y units).
    """
    pred = np.asarray(pred, np.float64)
    truth = np.asarray(truth, np.float64)
    if pred.shape != truth.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} must both be N x P x 2")
    iod = np.linalg.norm(truth[:, RIGHT_EYE] - truth[:, LEFT_EYE], axis=1)
    if np.any(iod <= 0):
        raise ValueError("ground truth with coincident eyes")
    return np.linalg.norm(pred - truth, axis=2).mean(1) / iod


def summarize(errors: np.ndarray, misses: int) -> dict:
    """Figures for per-face errors (fractions) of the detected faces plus ``misses``."""
    errors = np.asarray(errors, np.float64)
    n = len(errors) + misses
    fails = int((errors > FAILURE_THRESHOLD).sum()) + misses
    return {
        "n": int(n),
        "detected": int(len(errors)),
        "misses": int(misses),
        "nme": float(errors.mean() * 100) if len(errors) else float("nan"),
        "median": float(np.median(errors) * 100) if len(errors) else float("nan"),
        "failure_rate": float(fails / n) if n else float("nan"),
        "failures": fails,
    }


#: Groupings of :func:`grouped_summaries` (``facealign evaluate --by``).
GROUPINGS = ("pose", "size")

#: Default face-width bin edges (px of the detector's own box in the evaluated
#: image) of ``--by size``. MTFL images are 80 x 80, so faces are 25-65 px wide
#: (validation median ~34 px, AFLW ~52 px with RetinaFace): bins of 10 px there.
DEFAULT_SIZE_BINS = (30.0, 40.0, 50.0, 60.0)

#: MTFL pose labels (1 left profile .. 5 right profile; -1 unknown) and the
#: aggregate groups reported with them.
POSE_GROUPS = {
    "1": (1,),
    "2": (2,),
    "3": (3,),
    "4": (4,),
    "5": (5,),
    "unknown": (-1,),
    "profile (1, 5)": (1, 5),
    "half (2, 4)": (2, 4),
    "frontal (3)": (3,),
}


def size_bin_labels(edges) -> list[str]:
    """Names of the bins ``< e0``, ``e0-e1``, ..., ``>= e_last`` (px)."""
    edges = [float(e) for e in edges]
    fmt = lambda v: f"{v:g}"  # noqa: E731
    names = [f"<{fmt(edges[0])}"] + [f"{fmt(a)}-{fmt(b)}" for a, b in zip(edges, edges[1:])]
    return names + [f">={fmt(edges[-1])}"]


def grouped_summaries(
    errors: np.ndarray,
    found: np.ndarray,
    n_total: int,
    by: str,
    pose: np.ndarray | None = None,
    widths: np.ndarray | None = None,
    size_bins=DEFAULT_SIZE_BINS,
) -> dict[str, dict]:
    """:func:`summarize` per group of faces.

    ``errors`` are those of the detected faces ``found`` (indices into the
    ``n_total`` faces). ``by="pose"``: groups of :data:`POSE_GROUPS` from the MTFL
    pose label of every face (``pose``, length ``n_total``); a missed face is a
    failure of its pose group. ``by="size"``: bins of the detector box width
    (``widths``, one per *detected* face; see :func:`size_bin_labels`); a missed
    face has no box, so misses form their own group ``"missed"`` (each a failure).
    Groups without a face are left out.
    """
    errors = np.asarray(errors, np.float64)
    found = np.asarray(found, np.intp)
    if len(errors) != len(found):
        raise ValueError(f"{len(errors)} errors for {len(found)} detected faces")
    out: dict[str, dict] = {}
    if by == "pose":
        pose = np.asarray(pose).reshape(-1)
        if len(pose) != n_total:
            raise ValueError(f"{len(pose)} pose labels for {n_total} faces")
        missed = np.ones(n_total, bool)
        missed[found] = False
        for name, values in POSE_GROUPS.items():
            member = np.isin(pose, values)
            if not member.any():
                continue
            out[name] = summarize(errors[member[found]], int((member & missed).sum()))
    elif by == "size":
        widths = np.asarray(widths, np.float64).reshape(-1)
        if len(widths) != len(found):
            raise ValueError(f"{len(widths)} widths for {len(found)} detected faces")
        edges = np.asarray(sorted(float(e) for e in size_bins))
        which = np.searchsorted(edges, widths, side="right")  # 0: < e0, ..., len: >= e_last
        for k, name in enumerate(size_bin_labels(edges)):
            member = which == k
            if member.any():
                out[name] = summarize(errors[member], 0)
        misses = n_total - len(found)
        if misses:
            out["missed"] = summarize(np.zeros(0), misses)
    else:
        raise ValueError(f"by must be one of {GROUPINGS}, got {by!r}")
    return out


def cumulative_error_curve(errors: np.ndarray, n_total: int, max_error: float = 0.2, steps: int = 201):
    """Fraction of all faces (misses never count) with error <= each threshold."""
    thr = np.linspace(0, max_error, steps)
    errors = np.sort(np.asarray(errors))
    frac = np.searchsorted(errors, thr, side="right") / max(n_total, 1)
    return thr, frac


def plot_cumulative_error(curves: dict[str, tuple[np.ndarray, int]], path: str | Path) -> None:
    """Write a cumulative-error-curve PNG; ``curves`` maps a label to (errors, n_total)."""
    from .figures import subplots

    fig, ax = subplots(figsize=(5.5, 4.2), dpi=120)
    for label, (errors, n_total) in curves.items():
        thr, frac = cumulative_error_curve(errors, n_total)
        nme = 100 * np.mean(errors) if len(errors) else float("nan")
        ax.plot(thr * 100, frac, label=f"{label} ({nme:.2f}%)")
    ax.set_xlabel("mean point error (% of inter-ocular distance)")
    ax.set_ylabel("fraction of test faces")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("Cumulative error, MTFL AFLW test set")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


@dataclass
class DetectedFaces:
    """The faces of an MTFL split and what the detector found of them (see :func:`detected_faces`)."""

    data: LandmarkSet  # the split's faces (points, attributes)
    images: np.ndarray  # their images, N x H x W x 3
    found: np.ndarray  # indices of the detected faces
    boxes: np.ndarray  # their boxes in the training convention, len(found) x 4
    detections: np.ndarray  # the detector's own output, N rows (NaN: missed)

    @property
    def misses(self) -> int:
        return len(self.data) - len(self.found)


def detected_faces(
    mtfl_root: str | Path, cache_dir: str | Path, detector: str = DEFAULT_DETECTOR, split: str = "test"
) -> DetectedFaces:
    """The faces of ``split`` (``"validation"``: the fixed validation split of the training
    faces; else an MTFL listing) with ``detector``'s boxes (cached in ``cache_dir``),
    mapped to the training convention as ``facealign crop`` maps them."""
    from ..reboxing import training_boxes
    from .data import cached_boxes, detection_points, load_mtfl, train_validation_split

    if split == "validation":
        data = load_mtfl(mtfl_root, "train")
        data = data.subset(train_validation_split(len(data))[1])
    else:
        data = load_mtfl(mtfl_root, split)
    images = data.load_images()
    detections = cached_boxes(data, images, cache_dir, detector)
    found = np.flatnonzero(np.isfinite(detections[:, 0]))
    logger.info(f"{detector}: {len(found)} of {len(data)} faces detected, {len(data) - len(found)} misses")
    points = detection_points(detections)
    boxes = training_boxes(detector, detections[found, :4], None if points is None else points[found])
    return DetectedFaces(data, images, found, boxes, detections)


def score_points(
    faces: DetectedFaces, points: np.ndarray, by: tuple[str, ...] = (), size_bins=DEFAULT_SIZE_BINS
) -> dict:
    """:func:`summarize` of predicted ``points`` (``len(faces.found) x 5 x 2``, image pixels), with
    the raw per-face ``errors`` list and, for each grouping in ``by``, ``by_<grouping>``
    (:func:`grouped_summaries`; sizes: the width of the detector's own box)."""
    found = faces.found
    errors = normalized_errors(points, faces.data.points[found]) if len(found) else np.zeros(0)
    res = summarize(errors, faces.misses)
    res["errors"] = errors.tolist()
    for grouping in by:
        res[f"by_{grouping}"] = grouped_summaries(
            errors,
            found,
            len(faces.data),
            grouping,
            pose=faces.data.attributes[:, 3],
            widths=faces.detections[found, 2] - faces.detections[found, 0],
            size_bins=size_bins,
        )
    return res


def evaluate_engines(
    engines: dict,
    mtfl_root: str | Path,
    cache_dir: str | Path,
    detector: str = DEFAULT_DETECTOR,
    split: str = "test",
    with_quality: bool = False,
    by: tuple[str, ...] = (),
    size_bins=DEFAULT_SIZE_BINS,
) -> dict:
    """Evaluate several :class:`~facealign.engine.LandmarkEngine` on the same detected faces.

    Returns a dict ``label -> summary`` (:func:`score_points`: the figures of
    :func:`summarize`, the raw per-face ``errors`` list for curves and
    ``by_<grouping>`` for each grouping in ``by``). With ``with_quality``, each
    also holds ``quality``: the per-face quality arrays of
    :meth:`~facealign.engine.LandmarkEngine.predict_faces` and ``detector_score``.
    """
    faces = detected_faces(mtfl_root, cache_dir, detector, split)
    results = {}
    for label, engine in engines.items():
        pred = engine.predict_faces(faces.images, faces.found, faces.boxes, return_quality=with_quality)
        if with_quality:
            pred, quality = pred
        res = score_points(faces, pred, by, size_bins)
        if with_quality:
            res["quality"] = {**quality, "detector_score": faces.detections[faces.found, 4]}
        results[label] = res
    return results
