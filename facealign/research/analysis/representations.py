"""Cluster every layer's representations and compute its statistics.

:class:`AnalysisSettings` (the parameters, recorded in the report),
:func:`analyze_representations` (per layer: :mod:`.clustering`, then the
:mod:`.statistics` of Table 1 and Eqs. 3 and 4) and :func:`landmark_ratio`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .clustering import cluster_features, reduce_features
from .statistics import (
    binary_attribute_labels,
    cluster_sizes,
    label_cluster_variances,
    landmark_cluster_variances,
    mean_se,
    size_summary,
)


@dataclass
class AnalysisSettings:
    """Parameters of :func:`analyze_representations` and :func:`run_analysis` (recorded in the report)."""

    clusters: int = 64
    seed: int = 0
    pca_dims: int = 64
    pca_above: int = 256
    max_iter: int = 100
    reg_covar: float = 1e-3  # relative, see cluster_features
    min_cluster_size: int = 2
    faces: int | None = None  # a seeded random sample of the listing; None: all


def _layer_statistics(
    labels: np.ndarray,
    k: int,
    points: dict[str, np.ndarray],
    attrs: dict[str, np.ndarray],
    pose: np.ndarray,
    min_size: int,
    point_names: tuple[str, ...],
) -> dict[str, Any]:
    sizes = cluster_sizes(labels, k)
    out: dict[str, Any] = {"sizes": sizes, "table1": size_summary(sizes), "landmark": {}, "attribute": {}}
    for frame, pts in points.items():
        lam = landmark_cluster_variances(pts, labels, k, min_size)
        per = {name: mean_se(lam[:, j]) for j, name in enumerate(point_names)}
        out["landmark"][frame] = {
            "per_landmark": per,
            "mean": float(np.mean([v["mean"] for v in per.values()])),
            "skipped_clusters": int(np.isnan(lam[:, 0]).sum()),
            "per_cluster": lam,
        }
    for name, values in attrs.items():
        var = label_cluster_variances(values, labels, k, min_size)
        out["attribute"][name] = {**mean_se(var), "skipped_clusters": int(np.isnan(var).sum())}
    pvar = label_cluster_variances(pose, labels, k, min_size)
    out["pose"] = {**mean_se(pvar), "skipped_clusters": int(np.isnan(pvar).sum())}
    return out


def analyze_representations(
    features: dict[str, np.ndarray],
    points: dict[str, np.ndarray],
    attributes: np.ndarray,
    settings: AnalysisSettings,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Cluster every layer's representations and compute Table 1 and Eqs. 3 and 4.

    Parameters
    ----------
    features : dict
        ``layer -> N x D`` representations, in network order.
    points : dict
        ``frame -> N x 5 x 2`` ground-truth points (e.g. :data:`LANDMARK_FRAMES`).
    attributes : ndarray, shape (N, 4)
        MTFL attribute codes (:data:`facealign.research.data.ATTRIBUTE_NAMES`).
    settings : AnalysisSettings
    progress : callable, optional
        Called with a layer's name before it is clustered.

    Returns
    -------
    stats : dict
        Per layer: ``reduction``, ``gmm``, ``sizes``, ``table1``, ``landmark``
        (per frame), ``attribute``, ``pose``; plus ``reference`` (all faces as one
        cluster).
    labels : dict
        ``layer -> N`` cluster labels.
    """
    from ...constants import POINT_NAMES
    from ..data import ATTRIBUTE_NAMES

    k = settings.clusters
    n = len(attributes)
    attrs = binary_attribute_labels(attributes)
    pose_col = np.asarray(attributes)[:, ATTRIBUTE_NAMES.index("pose")].astype(np.float64)
    pose = np.where(pose_col > 0, pose_col, np.nan)
    stats: dict[str, Any] = {"layers": {}}
    labels: dict[str, np.ndarray] = {}
    for layer, x in features.items():
        if len(x) != n:
            raise ValueError(f"layer {layer} has {len(x)} faces, the labels {n}")
        if progress is not None:
            progress(layer)
        t0 = time.perf_counter()
        reduced, red_info = reduce_features(x, settings.pca_dims, settings.pca_above, settings.seed)
        lab, gmm_info = cluster_features(reduced, k, settings.seed, settings.max_iter, settings.reg_covar)
        gmm_info["seconds"] = time.perf_counter() - t0
        labels[layer] = lab
        entry = _layer_statistics(lab, k, points, attrs, pose, settings.min_cluster_size, POINT_NAMES)
        stats["layers"][layer] = {"reduction": red_info, "gmm": gmm_info, **entry}
    ones = np.zeros(n, np.int64)
    ref = _layer_statistics(ones, 1, points, attrs, pose, 1, POINT_NAMES)
    stats["reference"] = {
        "landmark": {f: {name: v["mean"] for name, v in ref["landmark"][f]["per_landmark"].items()} for f in points},
        "attribute": {
            name: {
                "variance": ref["attribute"][name]["mean"],
                "positive_fraction": float(np.nanmean(attrs[name])),
                "labelled": int(np.isfinite(attrs[name]).sum()),
            }
            for name in attrs
        },
        "pose_variance": ref["pose"]["mean"],
    }
    return stats, labels


def landmark_ratio(stats: dict[str, Any], frame: str, top: str = "FC5", bottom: str = "CL1") -> dict[str, Any]:
    """Ratio of the mean landmark variance (Eq. 3) of layer ``top`` to layer ``bottom``.

    Returns ``{"mean": ratio of the means over landmarks, "per_landmark": {...}}``.
    """
    lt, lb = stats["layers"][top]["landmark"][frame], stats["layers"][bottom]["landmark"][frame]
    return {
        "mean": lt["mean"] / lb["mean"],
        "per_landmark": {j: lt["per_landmark"][j]["mean"] / lb["per_landmark"][j]["mean"] for j in lt["per_landmark"]},
    }
