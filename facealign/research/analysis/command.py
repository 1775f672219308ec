"""``facealign analyze``: the click command and :func:`run_analysis`, the whole analysis.

:func:`run_analysis` loads the MTFL training faces, detects and crops them,
extracts the layer inputs (:mod:`.features`), clusters them and computes the
statistics (:mod:`.representations`), and writes the figures (:mod:`.figures`)
and the report (:mod:`.report`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
import numpy as np

from ...imageio import to_jsonable
from ..model_cli import _default_data, cache_dir_option
from .features import EXTRA_LAYERS, LAYER_LABELS, PAPER_LAYERS, extract_layer_inputs
from .figures import mosaic, plot_attribute_variance, plot_cluster_means, plot_cluster_scatter, plot_landmark_variance
from .report import (
    ASSIGNMENTS,
    FIG1,
    FIG3,
    FIG3_SCATTER,
    FIG4,
    PAPER_RATIO,
    REPORT_JSON,
    REPORT_MD,
    _fmt,
    build_report,
    report_markdown,
)
from .representations import AnalysisSettings, analyze_representations
from .statistics import cluster_mean_images

#: ``progress(done, total, label)``: ``done`` of ``total`` steps are finished and
#: step ``label`` starts (``label`` is ``"done"`` at the end).
Progress = Callable[[int, int, str], None]


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
        Detector-box cache (:func:`facealign.research.data.cached_boxes`).
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
    from ...constants import INPUT_SIZE, shipped_weights
    from ...cropping import crop_faces, to_box_coordinates
    from ...detection import DEFAULT_DETECTOR
    from ...imageio import write_bytes_atomic
    from ..data import cached_boxes, load_mtfl
    from ..evaluation import write_json
    from ..model import LAYER_NAMES
    from ..training_weights import load_weights, weights_settings

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
            detector = weights_settings(wmeta).get("detector") or DEFAULT_DETECTOR
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
    rep = to_jsonable(rep)
    write_json(rep, out_dir / REPORT_JSON)
    write_bytes_atomic(out_dir / REPORT_MD, report_markdown(rep).encode())
    if progress is not None:
        progress(len(steps), len(steps), "done")
    return rep


# --------------------------------------------------------------------------- #
# Command line
# --------------------------------------------------------------------------- #


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
    from ...progress import Progress

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
