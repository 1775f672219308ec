"""What a run writes: JSON results, the Table 2 style figure, the ROC plot."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["format_tar", "plot_rocs"]


def format_tar(mean: float, std: float) -> str:
    """Table 2 style ``.718 ± .01``."""

    def short(value: float, digits: int) -> str:
        text = f"{value:.{digits}f}"
        return text[1:] if text.startswith("0.") else text

    return f"{short(mean, 3)} ± {short(std, 2)}"


def plot_rocs(curves: Mapping[str, Mapping[str, Any]], path: str | Path, title: str = "") -> None:
    """Mean ROC (TAR vs log FAR, ±1 std band) of one or several aligners, as PNG."""
    from facealign.research.figures import subplots

    from .evaluate import FAR_TARGETS, ROC_GRID

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
