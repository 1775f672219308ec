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

from pathlib import Path
from typing import Callable

import numpy as np

from .constants import DEFAULT_DETECTOR, LEFT_EYE, RIGHT_EYE
from .imageio import write_json  # noqa: F401  (the owner; imported here for the research modules)

#: Error above which a face counts as a failure (fraction of inter-ocular distance).
FAILURE_THRESHOLD = 0.10


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


def cumulative_error_curve(errors: np.ndarray, n_total: int, max_error: float = 0.2, steps: int = 201):
    """Fraction of all faces (misses never count) with error <= each threshold."""
    thr = np.linspace(0, max_error, steps)
    errors = np.sort(np.asarray(errors))
    frac = np.searchsorted(errors, thr, side="right") / max(n_total, 1)
    return thr, frac


def plot_cumulative_error(curves: dict[str, tuple[np.ndarray, int]], path: "str | Path") -> None:
    """Write a cumulative-error-curve PNG; ``curves`` maps a label to (errors, n_total)."""
    from .research.figures import subplots

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


def evaluate_engines(
    engines: dict,
    mtfl_root: "str | Path",
    cache_dir: "str | Path",
    detector: str = DEFAULT_DETECTOR,
    split: str = "test",
    log: Callable[[str], None] = lambda s: None,
    with_quality: bool = False,
) -> dict:
    """Evaluate several :class:`~facealign.engine.LandmarkEngine` on the same detected faces.

    Returns a dict ``label -> summary`` (see :func:`summarize`), each with the raw
    per-face ``errors`` list for curves. With ``with_quality``, each also holds
    ``quality``: the per-face quality arrays of
    :meth:`~facealign.engine.LandmarkEngine.predict_faces` and ``detector_score``.
    """
    from .data import cached_boxes, detection_points, load_mtfl, train_validation_split
    from .reboxing import training_boxes

    if split == "validation":
        data = load_mtfl(mtfl_root, "train")
        data = data.subset(train_validation_split(len(data))[1])
    else:
        data = load_mtfl(mtfl_root, split)
    images = data.load_images()
    detections = cached_boxes(data, images, cache_dir, detector)
    found = np.flatnonzero(np.isfinite(detections[:, 0]))
    misses = len(data) - len(found)
    log(f"{detector}: {len(found)} of {len(data)} faces detected, {misses} misses")
    points = detection_points(detections)
    boxes = training_boxes(detector, detections[found, :4], None if points is None else points[found])
    results = {}
    for label, engine in engines.items():
        pred = engine.predict_faces(images, found, boxes, return_quality=with_quality)
        if with_quality:
            pred, quality = pred
        errors = normalized_errors(pred, data.points[found]) if len(found) else np.zeros(0)
        res = summarize(errors, misses)
        res["errors"] = errors.tolist()
        if with_quality:
            res["quality"] = {**quality, "detector_score": detections[found, 4]}
        results[label] = res
    return results


