"""What is the vanilla network learning? The analysis of the paper's section 2.2.

``facealign analyze`` takes every MTFL training face (``train.txt``) that the
detector finds, crops it to the 40 x 40 network input, and extracts the
representation at the *input* of each layer of the vanilla CNN
(:meth:`facealign.model.VanillaCNN.layer_inputs`). Layers carry the paper's
names: ``CL1`` is the normalised RGB input (shown as "RGB (CL1 input)"),
``CL2`` .. ``CL4`` the outputs of the convolutional layers before them, ``FC5``
the CL4 output that TCNN clusters. ``FC6`` (the FC5 output) is an extra column
that the paper does not show.

Per layer, the representations are clustered into K groups with a Gaussian
mixture fitted by EM (diagonal covariances, seeded k-means start, one run) and
every face goes to the component of highest posterior (Eq. 2). Layers wider
than ``pca_above`` dimensions are first projected onto their first
``pca_dims`` principal components (no whitening), which keeps EM on 10,000
faces within minutes on two cores. Then:

* Table 1 -- :func:`size_summary`: median and SD of the K cluster sizes.
* Eq. 3 / Fig. 3 -- :func:`landmark_cluster_variances`: per cluster and
  landmark the variance along the principal axis of the ground-truth points
  (largest eigenvalue of their 2 x 2 covariance), averaged over clusters with
  its standard error (:func:`mean_se`).
* Eq. 4 / Fig. 4 -- :func:`label_cluster_variances`: per cluster the variance of
  a 0/1 attribute label (gender, smile, glasses), averaged likewise.
* Fig. 1 -- :func:`cluster_mean_images` and :func:`mosaic`: the average input
  crop of every cluster of the RGB input and of the FC5 input.

Conventions
-----------
* Variances are population variances (divide by n), so a cluster of identical
  values has variance 0 and the variance of 0/1 labels is ``p (1 - p)``. The
  SD of Table 1 is the population SD of the K cluster sizes (empty clusters
  count as size 0).
* Clusters with fewer than ``min_cluster_size`` (default 2) faces -- for
  attributes, fewer than 2 *labelled* faces -- are skipped, and the means of
  Eq. 3 and Eq. 4 are taken over the remaining clusters; the report says how
  many were skipped.
* Landmark coordinates for Eq. 3: by default the detector-box-normalised
  frame times 40, i.e. pixels of the 40 x 40 network input, so that the face's
  size in the 80 x 80 MTFL image does not dominate the variances; the report
  also gives them in raw 80 x 80 image pixels.
* Attribute labels: MTFL codes 1/2 become 1/0 (1 = male, smiling, wearing
  glasses); -1 (unknown) is dropped.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from .model_cli import cache_dir_option

#: Binary MTFL attributes analysed by Eq. 4 (a subset of ``data.ATTRIBUTE_NAMES``).
BINARY_ATTRIBUTES: tuple[str, ...] = ("gender", "smile", "glasses")
#: What label 1 means for each binary attribute (MTFL code 1).
ATTRIBUTE_POSITIVE: dict[str, str] = {"gender": "male", "smile": "smiling", "glasses": "wearing glasses"}
#: Layers of the paper's Table 1 / Figs 3 and 4 (the inputs of these layers).
PAPER_LAYERS: tuple[str, ...] = ("CL1", "CL2", "CL3", "CL4", "FC5")
#: Extra layer input we also analyse (FC5 output), not in the paper.
EXTRA_LAYERS: tuple[str, ...] = ("FC6",)
#: Display names of the layer inputs.
LAYER_LABELS: dict[str, str] = {
    "CL1": "RGB (CL1 input)",
    "CL2": "CL2",
    "CL3": "CL3",
    "CL4": "CL4",
    "FC5": "FC5",
    "FC6": "FC6 (extra)",
}
#: Landmark coordinate frames of Eq. 3: name -> description.
LANDMARK_FRAMES: dict[str, str] = {
    "input40": "detector-box-normalised coordinates x 40 (pixels of the 40 x 40 network input)",
    "image80": "raw pixels of the 80 x 80 MTFL image",
}
#: Paper's observation for the landmark variance ratio FC5 / RGB.
PAPER_RATIO = 0.5

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
FIG1 = "fig1_cluster_means.png"
FIG3 = "fig3_landmark_variance.png"
FIG3_SCATTER = "fig3_scatter.png"
FIG4 = "fig4_attribute_variance.png"
ASSIGNMENTS = "assignments.npz"

#: ``progress(done, total, label)``: ``done`` of ``total`` steps are finished and
#: step ``label`` starts (``label`` is ``"done"`` at the end).
Progress = Callable[[int, int, str], None]


# --------------------------------------------------------------------------- #
# Statistics: small pure functions
# --------------------------------------------------------------------------- #


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


def landmark_cluster_variances(
    points: np.ndarray, labels: np.ndarray, k: int, min_size: int = 2
) -> np.ndarray:
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
        Columns as :data:`facealign.data.ATTRIBUTE_NAMES`.
    names : tuple of str
        Which binary attributes to convert.
    """
    from .data import ATTRIBUTE_NAMES

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


# --------------------------------------------------------------------------- #
# Dimension reduction and clustering
# --------------------------------------------------------------------------- #


def reduce_features(x: np.ndarray, dims: int, above: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """PCA-project ``x`` (``N x D``) to ``dims`` components when ``D > above``; else keep it.

    Returns the (float64) features and ``{"input_dims", "dims", "pca",
    "explained_variance"}`` (the fraction of the total variance kept, None
    without PCA). Randomised SVD, seeded; no whitening.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected N x D features, got shape {x.shape}")
    n, d = x.shape
    if d <= above:
        return x.astype(np.float64), {"input_dims": d, "dims": d, "pca": False, "explained_variance": None}
    from sklearn.decomposition import PCA

    dims = int(min(dims, n, d))
    pca = PCA(n_components=dims, whiten=False, svd_solver="randomized", random_state=seed)
    y = pca.fit_transform(x.astype(np.float32)).astype(np.float64)
    info = {
        "input_dims": d,
        "dims": dims,
        "pca": True,
        "explained_variance": float(pca.explained_variance_ratio_.sum()),
    }
    return y, info


def cluster_features(
    x: np.ndarray, k: int, seed: int, max_iter: int = 100, reg_covar: float = 1e-3
) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit a K-component diagonal Gaussian mixture by EM and assign by maximum posterior (Eq. 2).

    Parameters
    ----------
    x : ndarray, shape (N, D)
    k : int
        Components; at most N.
    seed : int
        Seeds the k-means initialisation.
    max_iter : int
        EM iterations at most (one initialisation).
    reg_covar : float
        Added to every variance, *relative* to the mean per-dimension variance of
        ``x`` (so it does not depend on the features' scale); keeps components on
        near-constant dimensions (e.g. saturated ``abs(tanh)`` units) finite.

    Returns
    -------
    labels : ndarray of int, shape (N,)
    info : dict
        ``converged``, ``n_iter``, ``reg_covar`` (absolute), ``lower_bound``.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected N x D features, got shape {x.shape}")
    if not 1 <= k <= len(x):
        raise ValueError(f"cannot fit {k} clusters to {len(x)} faces")
    reg = max(reg_covar * float(x.var(0).mean()), 1e-9)
    gmm = GaussianMixture(
        n_components=k,
        covariance_type="diag",
        reg_covar=reg,
        max_iter=max_iter,
        n_init=1,
        init_params="kmeans",
        random_state=seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm.fit(x)
    labels = gmm.predict(x)
    info = {
        "converged": bool(gmm.converged_),
        "n_iter": int(gmm.n_iter_),
        "reg_covar": reg,
        "lower_bound": float(gmm.lower_bound_),
    }
    return labels.astype(np.int64), info


# --------------------------------------------------------------------------- #
# Cluster images
# --------------------------------------------------------------------------- #


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


def mosaic(images: np.ndarray, cols: int | None = None, pad: int = 2, scale: int = 2, fill: int = 255) -> np.ndarray:
    """Tile ``images`` (``K x H x W x 3``, floats in [0, 255], NaN = blank) on a grid.

    The grid is ``ceil(sqrt(K))`` columns wide unless ``cols`` is given; tiles are
    enlarged ``scale`` times (bicubic) for display and separated by ``pad``
    pixels of ``fill``. Blank (all-NaN) tiles are mid-grey. Returns uint8.
    """
    from PIL import Image

    images = np.asarray(images, np.float64)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"expected K x H x W x 3 images, got shape {images.shape}")
    k, h, w, _ = images.shape
    cols = cols or math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    th, tw = h * scale, w * scale
    canvas = np.full((rows * th + (rows + 1) * pad, cols * tw + (cols + 1) * pad, 3), fill, np.uint8)
    for i, img in enumerate(images):
        if np.isnan(img).all():
            tile = np.full((th, tw, 3), 128, np.uint8)
        else:
            tile8 = np.clip(np.round(np.nan_to_num(img, nan=128.0)), 0, 255).astype(np.uint8)
            tile = np.asarray(Image.fromarray(tile8).resize((tw, th), Image.Resampling.BICUBIC))
        r, c = divmod(i, cols)
        y, x = pad + r * (th + pad), pad + c * (tw + pad)
        canvas[y : y + th, x : x + tw] = tile
    return canvas


# --------------------------------------------------------------------------- #
# Features and the whole analysis
# --------------------------------------------------------------------------- #


def extract_layer_inputs(
    weights, crops: np.ndarray, layers: tuple[str, ...], batch_size: int = 500
) -> dict[str, np.ndarray]:
    """Representations at the input of ``layers`` for uint8 crops (``N x 40 x 40 x 3``).

    ``weights`` is a training weights file (``.pt``) of the vanilla network; its
    normalisation (training mean and std images) is applied, as for a
    prediction. Returns ``layer -> N x D`` float32 arrays.
    """
    import torch

    from .engine import load_weights
    from .export import load_network
    from .tweak import to_tensor

    model, mean, std = load_network(load_weights(weights))
    parts: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    with torch.inference_mode():
        for s in range(0, len(crops), batch_size):
            feats = model.layer_inputs(to_tensor(crops[s : s + batch_size], mean, std))
            for name in layers:
                parts[name].append(feats[name].float().numpy())
    return {name: np.concatenate(p) if p else np.zeros((0, 0), np.float32) for name, p in parts.items()}


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
        MTFL attribute codes (:data:`facealign.data.ATTRIBUTE_NAMES`).
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
    from .constants import POINT_NAMES
    from .data import ATTRIBUTE_NAMES

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


# --------------------------------------------------------------------------- #
# Figures
# --------------------------------------------------------------------------- #


def _errorbar_figure(
    series: dict[str, tuple[list[float], list[float]]],
    layers: list[str],
    ylabel: str,
    title: str,
    path: Path,
    references: dict[str, float] | None = None,
) -> None:
    from .research.figures import subplots

    fig, ax = subplots(figsize=(8.2, 4.4), dpi=120)
    xs = np.arange(len(layers))
    for i, (name, (mean, se)) in enumerate(series.items()):
        color = f"C{i}"
        ax.errorbar(xs, mean, yerr=np.nan_to_num(se), marker="o", capsize=3, label=name, color=color)
        if references and name in references:
            ax.axhline(references[name], color=color, ls=":", lw=1)
    if references:
        ax.plot([], [], color="grey", ls=":", lw=1, label="all faces, one cluster")
    ax.set_xticks(xs)
    ax.set_xticklabels([LAYER_LABELS.get(layer, layer) for layer in layers], rotation=15)
    ax.set_xlabel("representation clustered (input of layer)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path)


def plot_landmark_variance(stats: dict[str, Any], frame: str, path: Path, k: int) -> None:
    """Fig. 3: one line per landmark across layers, mean of Eq. 3 +- SE."""
    layers = list(stats["layers"])
    names = list(stats["layers"][layers[0]]["landmark"][frame]["per_landmark"])
    series = {
        j: (
            [stats["layers"][layer]["landmark"][frame]["per_landmark"][j]["mean"] for layer in layers],
            [stats["layers"][layer]["landmark"][frame]["per_landmark"][j]["se"] for layer in layers],
        )
        for j in names
    }
    unit = "px² of the 40x40 input" if frame == "input40" else "px² of the 80x80 image"
    _errorbar_figure(
        series, layers, f"principal-axis variance ({unit})",
        f"Landmark position variance in clusters (Eq. 3), K={k}", path,
    )  # fmt: skip


def plot_attribute_variance(stats: dict[str, Any], path: Path, k: int) -> None:
    """Fig. 4: one line per binary attribute across layers, mean of Eq. 4 +- SE."""
    layers = list(stats["layers"])
    names = list(stats["layers"][layers[0]]["attribute"])
    series = {
        a: (
            [stats["layers"][layer]["attribute"][a]["mean"] for layer in layers],
            [stats["layers"][layer]["attribute"][a]["se"] for layer in layers],
        )
        for a in names
    }
    refs = {a: stats["reference"]["attribute"][a]["variance"] for a in names}
    _errorbar_figure(
        series, layers, "variance of 0/1 label", f"Attribute variance in clusters (Eq. 4), K={k}", path, refs
    )


def plot_cluster_means(panels: dict[str, np.ndarray], path: Path) -> None:
    """Fig. 1: mosaics of cluster-average crops, one panel per layer, largest cluster first."""
    from .research.figures import subplots

    fig, axes = subplots(1, len(panels), figsize=(6.0 * len(panels), 6.4), dpi=110)
    axes = np.atleast_1d(axes)
    for ax, (title, img) in zip(axes, panels.items()):
        ax.imshow(img)
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)


def plot_cluster_scatter(
    points: np.ndarray, stats: dict[str, Any], labels: dict[str, np.ndarray], layers: tuple[str, ...],
    frame: str, path: Path, seed: int, faces: int = 15,
) -> dict[str, int]:  # fmt: skip
    """Fig. 3 insets: ground-truth points of ``faces`` faces of each layer's most variable cluster.

    Returns the chosen cluster of each layer.
    """
    from .constants import POINT_NAMES
    from .research.figures import subplots

    rng = np.random.default_rng(seed)
    fig, axes = subplots(1, len(layers), figsize=(4.0 * len(layers), 4.2), dpi=110)
    axes = np.atleast_1d(axes)
    chosen = {}
    for ax, layer in zip(axes, layers):
        lam = stats["layers"][layer]["landmark"][frame]["per_cluster"]
        score = np.nanmean(lam, axis=1) if np.isfinite(lam).any() else np.zeros(len(lam))
        c = int(np.nanargmax(np.where(np.isfinite(score), score, -np.inf)))
        chosen[layer] = c
        members = np.flatnonzero(labels[layer] == c)
        pick = rng.choice(members, size=min(faces, len(members)), replace=False)
        for j, name in enumerate(POINT_NAMES):
            ax.scatter(points[pick, j, 0], points[pick, j, 1], s=12, color=f"C{j}", label=name)
        ax.set_xlim(0, 40 if frame == "input40" else 80)
        ax.set_ylim(40 if frame == "input40" else 80, 0)
        ax.set_aspect("equal")
        ax.set_title(f"{LAYER_LABELS.get(layer, layer)}: cluster {c} ({len(members)} faces)", fontsize=9)
        ax.set_xlabel("x (px)")
        ax.set_ylabel("y (px)")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    return chosen


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #


def _jsonable(obj: Any) -> Any:
    """Numpy scalars and arrays to Python; NaN and infinities to None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def build_report(stats: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The ``report.json`` content from :func:`analyze_representations` output and run facts."""
    layers = list(stats["layers"])
    rep: dict[str, Any] = dict(meta)
    rep["layers"] = layers
    rep["layer_labels"] = {layer: LAYER_LABELS.get(layer, layer) for layer in layers}
    rep["reduction"] = {layer: stats["layers"][layer]["reduction"] for layer in layers}
    rep["gmm"] = {layer: stats["layers"][layer]["gmm"] for layer in layers}
    rep["cluster_sizes"] = {layer: stats["layers"][layer]["sizes"] for layer in layers}
    rep["table1"] = {layer: stats["layers"][layer]["table1"] for layer in layers}
    rep["landmark_variance"] = {
        frame: {
            layer: {
                key: stats["layers"][layer]["landmark"][frame][key]
                for key in ("per_landmark", "mean", "skipped_clusters")
            }
            for layer in layers
        }
        for frame in LANDMARK_FRAMES
        if frame in stats["layers"][layers[0]]["landmark"]
    }
    rep["landmark_frames"] = {f: LANDMARK_FRAMES[f] for f in rep["landmark_variance"]}
    if "CL1" in layers and "FC5" in layers:
        rep["landmark_variance_ratio"] = {
            "definition": "mean landmark variance (Eq. 3, averaged over the 5 landmarks) "
            "at FC5 input / at RGB (CL1 input)",
            "paper": PAPER_RATIO,
            **{f: landmark_ratio(stats, f) for f in rep["landmark_variance"]},
        }
    rep["attribute_variance"] = {layer: stats["layers"][layer]["attribute"] for layer in layers}
    rep["attribute_coding"] = {a: f"1 = {p}, 0 = not; unknown (-1) dropped" for a, p in ATTRIBUTE_POSITIVE.items()}
    rep["pose_variance"] = {
        "note": "extra, not in the paper: variance of the MTFL pose index 1..5 within clusters",
        **{layer: stats["layers"][layer]["pose"] for layer in layers},
    }
    rep["reference_one_cluster"] = stats["reference"]
    return rep


def _fmt(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def report_markdown(rep: dict[str, Any]) -> str:
    """A short ``report.md`` for a :func:`build_report` dictionary (PNGs are referenced by name)."""
    layers = rep["layers"]
    labels = [rep["layer_labels"][layer] for layer in layers]
    s = rep["settings"]
    f = rep["faces"]
    lines = [
        "# What is the vanilla network learning? (paper section 2.2)",
        "",
        f"Weights: `{rep['weights']['path']}`"
        + (f" (validation NME {rep['weights']['val_nme']:.2f}%)" if rep["weights"].get("val_nme") is not None else "")
        + ".",
    ]
    if rep["weights"].get("placeholder"):
        lines.append(
            "**These weights are an untrained placeholder: the figures below say nothing about a trained network.**"
        )
    lines += [
        "",
        f"Faces: {f['listed']} listed in `train.txt`"
        + (f", a seeded sample of {f['sampled']}" if f["sampled"] != f["listed"] else "")
        + f"; the {s['detector']} detector missed {f['missed']}, which are skipped; "
        f"**{f['analysed']} faces analysed**.",
        f"Clustering: Gaussian mixture by EM, K = {s['clusters']}, diagonal covariances, one k-means-seeded run "
        f"(seed {s['seed']}), at most {s['max_iter']} iterations, reg_covar {s['reg_covar']:g} x the mean feature "
        "variance; each face goes to the component of highest posterior (Eq. 2).",
    ]
    red = rep["reduction"]
    pca = [layer for layer in layers if red[layer]["pca"]]
    raw = [layer for layer in layers if not red[layer]["pca"]]
    if pca:
        lines.append(
            "PCA (no whitening) before clustering: "
            + ", ".join(
                f"{rep['layer_labels'][layer]} {red[layer]['input_dims']} -> {red[layer]['dims']} dims "
                f"({100 * red[layer]['explained_variance']:.1f}% of the variance)"
                for layer in pca
            )
            + "."
        )
    if raw:
        lines.append(
            "Clustered in full: "
            + ", ".join(f"{rep['layer_labels'][layer]} ({red[layer]['input_dims']} dims)" for layer in raw)
            + "."
        )
    nconv = [layer for layer in layers if not rep["gmm"][layer]["converged"]]
    if nconv:
        lines.append("EM stopped at the iteration limit before converging for: " + ", ".join(nconv) + ".")
    lines += ["", "## Table 1: cluster sizes (median ± SD over the K clusters)", ""]
    lines.append("| | " + " | ".join(labels) + " |")
    lines.append("|---" * (len(layers) + 1) + "|")
    t1 = rep["table1"]
    lines.append(
        "| size | "
        + " | ".join(f"{_fmt(t1[layer]['median'], 1)} ± {_fmt(t1[layer]['sd'], 1)}" for layer in layers)
        + " |"
    )
    lines.append("| empty clusters | " + " | ".join(str(t1[layer]["empty"]) for layer in layers) + " |")
    lines.append("")
    lines.append("Paper (K = 64, 7,571 faces): 92.0 ± 98.3, 110.5 ± 55.1, 116.0 ± 70.0, 118.5 ± 81.6, 110.0 ± 58.3.")

    lv = rep["landmark_variance"]["input40"]
    lines += ["", "## Landmark positions (Eq. 3, Fig. 3)", "", f"![Fig. 3]({FIG3})", ""]
    lines.append(
        "Variance along the principal axis of each landmark's ground-truth points in a cluster, averaged over "
        f"clusters (± SE), in {LANDMARK_FRAMES['input40']}; clusters with fewer than {s['min_cluster_size']} faces "
        "are skipped. `report.json` also has them in raw 80 x 80 image pixels (`image80`)."
    )
    lines.append("")
    names = list(lv[layers[0]]["per_landmark"])
    lines.append("| landmark | " + " | ".join(labels) + " |")
    lines.append("|---" * (len(layers) + 1) + "|")
    for j in names:
        lines.append(
            f"| {j} | "
            + " | ".join(
                f"{_fmt(lv[layer]['per_landmark'][j]['mean'])} ± {_fmt(lv[layer]['per_landmark'][j]['se'])}"
                for layer in layers
            )
            + " |"
        )
    lines.append("| **mean** | " + " | ".join(_fmt(lv[layer]["mean"]) for layer in layers) + " |")
    lines.append("| skipped clusters | " + " | ".join(str(lv[layer]["skipped_clusters"]) for layer in layers) + " |")
    ratio = rep.get("landmark_variance_ratio")
    if ratio:
        r40, r80 = ratio["input40"]["mean"], ratio.get("image80", {}).get("mean")
        lines += [
            "",
            f"**Measured ratio of mean landmark variance FC5 / RGB: {_fmt(r40, 3)}** "
            f"(mean variance {_fmt(lv['CL1']['mean'])} -> {_fmt(lv['FC5']['mean'])} px²; "
            f"in 80 x 80 image pixels: {_fmt(r80, 3)}). "
            f"The paper reports that it roughly halves (ratio about {PAPER_RATIO}).",
            "In 80 x 80 image pixels the variances also hold where the detector put the face box and how large it "
            "made it, which no layer sees: every layer works on the box crop.",
        ]
    lines += ["", f"![Fig. 3 scatter]({FIG3_SCATTER})", ""]
    lines.append(
        "Ground-truth points (40 x 40 input frame) of 15 faces from the cluster with the largest mean landmark "
        "variance of the RGB input and of the FC5 input."
    )

    av = rep["attribute_variance"]
    ref = rep["reference_one_cluster"]["attribute"]
    lines += ["", "## Facial attributes (Eq. 4, Fig. 4)", "", f"![Fig. 4]({FIG4})", ""]
    lines.append(
        "Variance of the 0/1 label within a cluster, averaged over clusters (± SE). The last column is the "
        "variance over all faces, p (1 - p), i.e. what clusters unrelated to the attribute would give."
    )
    lines.append("")
    lines.append("| attribute | " + " | ".join(labels) + " | all faces (p) |")
    lines.append("|---" * (len(layers) + 2) + "|")
    for a in av[layers[0]]:
        lines.append(
            f"| {a} | "
            + " | ".join(f"{_fmt(av[layer][a]['mean'], 3)} ± {_fmt(av[layer][a]['se'], 3)}" for layer in layers)
            + f" | {_fmt(ref[a]['variance'], 3)} (p = {_fmt(ref[a]['positive_fraction'], 3)}) |"
        )
    if "CL1" in layers and "FC5" in layers:
        lines.append("")
        for a in av["CL1"]:
            lo, hi = av["CL1"][a]["mean"], av["FC5"][a]["mean"]
            change = (hi - lo) / lo if lo else float("nan")
            lines.append(
                f"- {a}: {_fmt(lo, 3)} at the RGB input -> {_fmt(hi, 3)} at the FC5 input ({100 * change:+.0f}%)."
            )

    lines += [
        "",
        "## Cluster means (Fig. 1)",
        "",
        f"![Fig. 1]({FIG1})",
        "",
        "Average 40 x 40 input crop of every cluster (largest cluster first, empty clusters grey) when clustering "
        "the RGB input (left) and the FC5 input (right); the same faces in both.",
        "",
        "## Run",
        "",
        f"Seconds: {', '.join(f'{k} {v:.1f}' for k, v in rep['timing_s'].items())}.",
        "",
    ]
    return "\n".join(lines)


def run_analysis(
    data_root: str | Path,
    out_dir: str | Path,
    weights: str | Path | None = None,
    cache_dir: str | Path = "cache",
    settings: AnalysisSettings | None = None,
    detector: str | None = None,
    include_fc6: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the whole section 2.2 analysis on MTFL ``train.txt`` and write the report.

    Parameters
    ----------
    data_root : path
        The MTFL folder.
    out_dir : path
        Receives ``report.json``, ``report.md``, the figures and
        ``assignments.npz`` (listing row and cluster of every face, per layer).
    weights : path, optional
        Vanilla engine weights; the shipped ``vanilla.pt`` by default.
    cache_dir : path
        Detector-box cache (:func:`facealign.data.cached_boxes`).
    settings : AnalysisSettings, optional
    detector : str, optional
        Detector name; by default the one the weights were trained with, else the
        default detector.
    include_fc6 : bool
        Also analyse the FC6 input (not in the paper).
    progress : callable, optional
        ``progress(done, total, label)``, see :data:`Progress`.

    Returns
    -------
    dict
        The content of ``report.json``.
    """
    from .constants import INPUT_SIZE
    from .cropping import crop_faces, to_box_coordinates
    from .data import cached_boxes, load_mtfl
    from .detection import DEFAULT_DETECTOR
    from .engine import load_weights, shipped_weights
    from .evaluation import write_json
    from .imageio import write_bytes_atomic
    from .model import LAYER_NAMES

    settings = settings or AnalysisSettings()
    layers = tuple(layer for layer in LAYER_NAMES if layer in PAPER_LAYERS or (include_fc6 and layer in EXTRA_LAYERS))
    steps = (
        ["loading images", "detecting faces", "extracting features"]
        + [f"clustering {layer}" for layer in layers]
        + ["writing report"]
    )
    done = 0
    timing: dict[str, float] = {}
    t_start = t_step = time.perf_counter()
    current = ""

    def step(label: str) -> None:
        nonlocal done, t_step, current
        now = time.perf_counter()
        if current:
            timing[current] = now - t_step
            done += 1
        t_step, current = now, label
        if progress is not None:
            progress(done, len(steps), label)

    weights_path = Path(weights) if weights is not None else shipped_weights("vanilla")
    wmeta = dict(load_weights(weights_path).get("meta", {}))
    if detector is None:
        try:
            detector = json.loads(wmeta.get("config", "{}")).get("detector") or DEFAULT_DETECTOR
        except (TypeError, ValueError):
            detector = DEFAULT_DETECTOR

    step("loading images")
    data = load_mtfl(data_root, "train")
    listed = len(data)
    rows = np.arange(listed)
    if settings.faces is not None and settings.faces < listed:
        rows = np.sort(np.random.default_rng(settings.seed).choice(listed, settings.faces, replace=False))
        data = data.subset(rows)
    images = data.load_images()

    step("detecting faces")
    boxes = cached_boxes(data, images, cache_dir, detector)
    found = np.flatnonzero(np.isfinite(boxes[:, 0]))
    if len(found) < settings.clusters:
        raise ValueError(f"{len(found)} faces detected, fewer than the {settings.clusters} clusters asked for")

    step("extracting features")
    crops = crop_faces(images[found], boxes[found, :4])
    features = extract_layer_inputs(weights_path, crops, layers)
    pts80 = data.points[found]
    points = {"input40": to_box_coordinates(pts80, boxes[found, :4]) * INPUT_SIZE, "image80": pts80}
    attributes = data.attributes[found]

    stats, labels = analyze_representations(
        features, points, attributes, settings, progress=lambda layer: step(f"clustering {layer}")
    )
    del features

    step("writing report")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    k = settings.clusters
    paper_layers = tuple(layer for layer in layers if layer in ("CL1", "FC5"))
    plot_landmark_variance(stats, "input40", out_dir / FIG3, k)
    plot_attribute_variance(stats, out_dir / FIG4, k)
    scatter_clusters = plot_cluster_scatter(
        points["input40"], stats, labels, paper_layers, "input40", out_dir / FIG3_SCATTER, settings.seed
    )
    panels = {}
    for layer in paper_layers:
        means = cluster_mean_images(crops, labels[layer], k)
        order = np.argsort(-stats["layers"][layer]["sizes"], kind="stable")
        panels[f"clusters of {LAYER_LABELS[layer]} features"] = mosaic(means[order])
    plot_cluster_means(panels, out_dir / FIG1)
    assignments = {layer: labels[layer].astype(np.int16) for layer in layers}
    np.savez_compressed(out_dir / ASSIGNMENTS, rows=rows[found], **assignments)  # type: ignore[arg-type]
    meta = {
        "paper_section": "2.2",
        "weights": {
            "path": str(weights_path),
            "val_nme": wmeta.get("val_nme"),
            "best_epoch": wmeta.get("best_epoch"),
            "placeholder": bool(wmeta.get("placeholder", False)),
        },
        "data": str(data_root),
        "settings": {
            **asdict(settings),
            "detector": detector,
            "covariance_type": "diag",
            "n_init": 1,
            "variance": "population (divide by n)",
            "include_fc6": include_fc6,
        },  # fmt: skip
        "faces": {
            "listed": listed,
            "sampled": len(rows),
            "analysed": int(len(found)),
            "missed": int(len(rows) - len(found)),
        },
        "figures": {"fig1": FIG1, "fig3": FIG3, "fig3_scatter": FIG3_SCATTER, "fig4": FIG4},
        "fig3_scatter_clusters": scatter_clusters,
        "assignments": ASSIGNMENTS,
    }
    rep = build_report(stats, meta)
    timing[current] = time.perf_counter() - t_step
    rep["timing_s"] = {**timing, "total": time.perf_counter() - t_start}
    rep = _jsonable(rep)
    write_json(rep, out_dir / REPORT_JSON)
    write_bytes_atomic(out_dir / REPORT_MD, report_markdown(rep).encode())
    if progress is not None:
        progress(len(steps), len(steps), "done")
    return rep


# --------------------------------------------------------------------------- #
# Command line
# --------------------------------------------------------------------------- #


def _default_data() -> str:
    from .data import default_mtfl_root

    return str(default_mtfl_root())


@click.command("analyze")
@click.option(
    "--data",
    "data_root",
    type=click.Path(file_okay=False, path_type=Path),
    default=_default_data,
    show_default="$FACEALIGN_MTFL or ../shared/datasets/mtfl",
    help="MTFL folder (train.txt and its images).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default="report",
    show_default=True,
    help="Report folder.",
)
@click.option(
    "--weights",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Vanilla engine weights [default: the shipped facealign/weights/vanilla.pt].",
)
@click.option(
    "--clusters",
    "-k",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Gaussian mixture components per layer (K).",
)
@click.option(
    "--faces",
    type=click.IntRange(min=1),
    default=None,
    help="Analyse a seeded random sample of this many listed faces [default: all].",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample, the PCA and EM.")
@click.option(
    "--pca-dims", type=click.IntRange(min=1), default=64, show_default=True, help="PCA dimensions for wide layers."
)
@click.option(
    "--pca-above",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Reduce only layers with more dimensions than this (FC5 input: 256).",
)
@click.option("--max-iter", type=click.IntRange(min=1), default=100, show_default=True, help="EM iterations at most.")
@click.option("--no-fc6", is_flag=True, help="Leave out the extra FC6-input column.")
@click.option(
    "--detector", default=None, help="Face detector [default: the one the weights were trained with, else dlib]."
)
@cache_dir_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
def analyze(
    data_root: Path,
    out_dir: Path,
    weights: Path | None,
    clusters: int,
    faces: int | None,
    seed: int,
    pca_dims: int,
    pca_above: int,
    max_iter: int,
    no_fc6: bool,
    detector: str | None,
    cache_dir: Path,
    quiet: bool,
) -> None:
    """Cluster the vanilla CNN's layer inputs on MTFL training faces (paper section 2.2).

    Writes OUT/report.json (Table 1, Eq. 3 landmark and Eq. 4 attribute
    variances per layer, settings), OUT/report.md and the figures (Figs 1, 3, 4).
    """
    settings = AnalysisSettings(
        clusters=clusters, seed=seed, pca_dims=pca_dims, pca_above=pca_above, max_iter=max_iter, faces=faces
    )
    from .progress import Progress

    progress = Progress("Analysing", enabled=not quiet)
    try:
        rep = run_analysis(
            data_root,
            out_dir,
            weights,
            cache_dir,
            settings,
            detector=detector,
            include_fc6=not no_fc6,
            progress=progress,
        )
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        progress.close()
    if quiet:
        return
    f = rep["faces"]
    click.echo(f"{f['analysed']} faces analysed ({f['missed']} missed by the detector, skipped)", err=True)
    t1 = rep["table1"]
    click.echo("Table 1 (cluster size median ± SD): " + ", ".join(
        f"{layer} {t1[layer]['median']:.1f} ± {t1[layer]['sd']:.1f}" for layer in rep["layers"]), err=True)  # fmt: skip
    ratio = rep.get("landmark_variance_ratio")
    if ratio:
        click.echo(
            f"mean landmark variance FC5 / RGB: {_fmt(ratio['input40']['mean'], 3)} (paper: about {PAPER_RATIO})",
            err=True,
        )
    click.echo(f"report: {Path(out_dir) / REPORT_MD} ({rep['timing_s']['total']:.0f} s)", err=True)
