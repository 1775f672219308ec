"""Figures of the section 2.2 analysis (Figs 1, 3 and 4), with :mod:`facealign.research.figures`.

:func:`mosaic` tiles cluster-average crops for Fig. 1 (:func:`plot_cluster_means`);
:func:`plot_landmark_variance` (Fig. 3), :func:`plot_cluster_scatter` (Fig. 3
insets) and :func:`plot_attribute_variance` (Fig. 4) plot the statistics of
:func:`facealign.research.analysis.representations.analyze_representations`.
Needs matplotlib.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .features import LAYER_LABELS


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


def _errorbar_figure(
    series: dict[str, tuple[list[float], list[float]]],
    layers: list[str],
    ylabel: str,
    title: str,
    path: Path,
    references: dict[str, float] | None = None,
) -> None:
    from ..figures import subplots

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
    from ..figures import subplots

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
    from ...constants import POINT_NAMES
    from ..figures import subplots

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
