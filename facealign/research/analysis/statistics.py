"""Cluster statistics of the section 2.2 analysis: small pure functions.

Table 1's cluster sizes (:func:`cluster_sizes`, :func:`size_summary`), Eq. 3's
landmark variances (:func:`landmark_cluster_variances`), Eq. 4's label variances
(:func:`label_cluster_variances`), their means over clusters (:func:`mean_se`),
the MTFL attribute coding (:func:`binary_attribute_labels`) and Fig. 1's
cluster-average crops (:func:`cluster_mean_images`).
"""

from __future__ import annotations

import math

import numpy as np

#: Binary MTFL attributes analysed by Eq. 4 (a subset of ``data.ATTRIBUTE_NAMES``).
BINARY_ATTRIBUTES: tuple[str, ...] = ("gender", "smile", "glasses")
#: What label 1 means for each binary attribute (MTFL code 1).
ATTRIBUTE_POSITIVE: dict[str, str] = {"gender": "male", "smile": "smiling", "glasses": "wearing glasses"}


#: Landmark coordinate frames of Eq. 3: name -> description.
LANDMARK_FRAMES: dict[str, str] = {
    "input40": "detector-box-normalised coordinates x 40 (pixels of the 40 x 40 network input)",
    "image80": "raw pixels of the 80 x 80 MTFL image",
}


def _check_labels(labels: np.ndarray, k: int, n: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"expected {n} cluster labels, got shape {labels.shape}")
    if k < 1:
        raise ValueError(f"the number of clusters must be at least 1, got {k}")
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"cluster labels must lie in [0, {k}), got {labels.min()}..{labels.max()}")
    return labels.astype(np.int64)


def cluster_sizes(labels: np.ndarray, k: int) -> np.ndarray:
    """Number of faces in each of the ``k`` clusters (``k`` ints, empty ones 0)."""
    labels = _check_labels(labels, k, len(np.asarray(labels)))
    return np.bincount(labels, minlength=k)


def size_summary(sizes: np.ndarray) -> dict[str, float]:
    """Table 1 entry: ``{"median", "sd"}`` of cluster sizes (population SD), plus min and max.

    Parameters
    ----------
    sizes : array of int
        The sizes of all K clusters of a layer, empty clusters included.
    """
    sizes = np.asarray(sizes, np.float64)
    if sizes.ndim != 1 or len(sizes) == 0:
        raise ValueError(f"expected a non-empty 1-D array of cluster sizes, got shape {sizes.shape}")
    return {
        "median": float(np.median(sizes)),
        "sd": float(np.std(sizes)),
        "min": int(sizes.min()),
        "max": int(sizes.max()),
        "empty": int((sizes == 0).sum()),
    }


def principal_axis_variance(points: np.ndarray) -> float:
    """Variance of 2-D ``points`` (``n x 2``) along their principal axis.

    The largest eigenvalue of their population covariance matrix; 0 for a
    single point.
    """
    p = np.asarray(points, np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or len(p) == 0:
        raise ValueError(f"expected a non-empty n x 2 array of points, got shape {p.shape}")
    d = p - p.mean(0)
    return float(np.linalg.eigvalsh(d.T @ d / len(p))[-1])


def landmark_cluster_variances(points: np.ndarray, labels: np.ndarray, k: int, min_size: int = 2) -> np.ndarray:
    """Eq. 3's ``lambda_{l,k,j}``: principal-axis variance of each landmark in each cluster.

    Parameters
    ----------
    points : ndarray, shape (N, P, 2)
        Ground-truth points of the N faces.
    labels : ndarray, shape (N,)
        Cluster of every face, in ``[0, k)``.
    k : int
        Number of clusters.
    min_size : int
        Clusters with fewer faces give NaN (skipped).

    Returns
    -------
    ndarray, shape (k, P)
        Variance along the principal axis (see :func:`principal_axis_variance`).
    """
    points = np.asarray(points, np.float64)
    if points.ndim != 3 or points.shape[2] != 2:
        raise ValueError(f"expected N x P x 2 points, got shape {points.shape}")
    labels = _check_labels(labels, k, len(points))
    out = np.full((k, points.shape[1]), np.nan)
    for c in range(k):
        pts = points[labels == c]
        if len(pts) < max(min_size, 1):
            continue
        d = pts - pts.mean(0)
        cov = np.einsum("npi,npj->pij", d, d) / len(pts)
        out[c] = np.linalg.eigvalsh(cov)[:, -1]
    return out


def label_cluster_variances(values: np.ndarray, labels: np.ndarray, k: int, min_size: int = 2) -> np.ndarray:
    """Eq. 4's ``sigma^2_{l,k,a}``: variance of a label within each cluster.

    Parameters
    ----------
    values : ndarray, shape (N,)
        One label per face (0/1 for binary attributes); NaN marks an unknown label,
        which is left out.
    labels : ndarray, shape (N,)
        Cluster of every face, in ``[0, k)``.
    k : int
        Number of clusters.
    min_size : int
        Clusters with fewer *labelled* faces give NaN (skipped).

    Returns
    -------
    ndarray, shape (k,)
        Population variance of the known labels in each cluster.
    """
    values = np.asarray(values, np.float64)
    if values.ndim != 1:
        raise ValueError(f"expected one label per face, got shape {values.shape}")
    labels = _check_labels(labels, k, len(values))
    known = np.isfinite(values)
    values, labels = values[known], labels[known]
    n = np.bincount(labels, minlength=k).astype(np.float64)
    s1 = np.bincount(labels, weights=values, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / n
        var = np.bincount(labels, weights=(values - mean[labels]) ** 2, minlength=k) / n
    var[n < max(min_size, 1)] = np.nan
    return var


def mean_se(values: np.ndarray) -> dict[str, float | int]:
    """Mean over clusters, its standard error and the number of clusters, NaNs skipped.

    The standard error is ``std(ddof=1) / sqrt(n)``; NaN when ``n < 2``.
    """
    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v)]
    n = len(v)
    mean = float(v.mean()) if n else float("nan")
    se = float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return {"mean": mean, "se": se, "clusters": n}


def binary_attribute_labels(
    attributes: np.ndarray, names: tuple[str, ...] = BINARY_ATTRIBUTES
) -> dict[str, np.ndarray]:
    """MTFL attribute codes to 0/1 labels: code 1 -> 1.0, code 2 -> 0.0, -1 -> NaN.

    Parameters
    ----------
    attributes : ndarray, shape (N, 4)
        Columns as :data:`facealign.research.data.ATTRIBUTE_NAMES`.
    names : tuple of str
        Which binary attributes to convert.
    """
    from ..data import ATTRIBUTE_NAMES

    attributes = np.asarray(attributes)
    if attributes.ndim != 2 or attributes.shape[1] != len(ATTRIBUTE_NAMES):
        raise ValueError(f"expected N x {len(ATTRIBUTE_NAMES)} attributes, got shape {attributes.shape}")
    out = {}
    for name in names:
        col = attributes[:, ATTRIBUTE_NAMES.index(name)]
        bad = ~np.isin(col, (1, 2, -1))
        if bad.any():
            raise ValueError(f"attribute {name!r} must be coded 1, 2 or -1, found {sorted(set(col[bad].tolist()))}")
        out[name] = np.where(col == 1, 1.0, np.where(col == 2, 0.0, np.nan))
    return out


def cluster_mean_images(crops: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Average crop of every cluster: ``k x H x W x 3`` float64, NaN for empty clusters."""
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[-1] != 3:
        raise ValueError(f"expected N x H x W x 3 crops, got shape {crops.shape}")
    labels = _check_labels(labels, k, len(crops))
    out = np.full((k, *crops.shape[1:]), np.nan)
    for c in range(k):
        members = crops[labels == c]
        if len(members):
            out[c] = members.mean(0, dtype=np.float64)
    return out
