"""Commands that build and measure the landmark engines: ``train``, ``tweak``, ``evaluate``.

The shipped weights are reproduced from scratch on CPU with::

    facealign train --out runs/vanilla.pt --work-dir runs/vanilla
    facealign tweak --vanilla runs/vanilla.pt --out runs/tcnn.pt --work-dir runs/tcnn

Both resume where they stopped when run again with the same ``--work-dir``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click
import numpy as np

from ..constants import BUILTIN_DETECTORS, DEFAULT_DETECTOR, ENGINE_KINDS, ENGINES, TRAINING_DETECTOR


def _default_data() -> str:
    """Default of ``--data``, looked up when a command runs (imports stay lazy)."""
    from .data import default_mtfl_root

    return str(default_mtfl_root())


def _default_cache() -> str:
    """Default of ``--cache-dir`` (:func:`facealign.research.data.default_cache_dir`), looked up when a command runs."""
    from .data import default_cache_dir

    return str(default_cache_dir())


logger = logging.getLogger(__name__)


def _quiet_logs(quiet: bool) -> None:
    """``--quiet``: only warnings from facealign's loggers (see :func:`facealign.progress.show_logs`)."""
    if quiet:
        from ..progress import show_logs

        show_logs(quiet=True)


def cache_dir_option(f):
    """``--cache-dir`` (detector boxes), shared by every research command that detects."""
    return click.option(
        "--cache-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=_default_cache,
        show_default="$FACEALIGN_CACHE, else $XDG_CACHE_HOME/facealign or ~/.cache/facealign",
        help="Detector-box cache folder.",
    )(f)


def _data_option(f):
    return click.option(
        "--data",
        type=click.Path(file_okay=False, path_type=Path),
        default=_default_data,
        show_default="$FACEALIGN_MTFL or ../shared/datasets/mtfl",
        help="MTFL folder (train.txt, test_aflw.txt and images).",
    )(f)


def _boxes_option(f):
    return click.option(
        "--boxes",
        type=click.Choice(["refined", "detector"]),
        default="refined",
        show_default=True,
        help="Crops the heads are tweaked on: re-boxed after a vanilla first pass (as at run time; such heads "
        "are evaluated with re-boxing), or detector boxes (the paper; evaluated without).",
    )(f)


def _parse_channels(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        channels = tuple(int(v) for v in value.split(","))
    except ValueError:
        channels = ()
    if len(channels) != 4 or min(channels) < 1:
        raise click.BadParameter(f"expected 4 positive comma-separated widths like 16,48,64,64, got {value!r}")
    return channels


def _width_options(command):
    """``--channels`` and ``--fc5`` (the network's widths; None: the paper's), for the training commands."""
    command = click.option(
        "--fc5", "fc5_dim", type=click.IntRange(min=1), help="Width of FC5. [default: the paper's 100]"
    )(command)
    return click.option(
        "--channels",
        callback=_parse_channels,
        help="Output channels of CL1-CL4, e.g. 16,48,128,128 ('beyond the paper'). [default: the paper's 16,48,64,64]",
    )(command)


def _widths(channels: tuple[int, ...] | None, fc5_dim: int | None) -> dict:
    """The config fields the width options set (the dataclass defaults, the paper's, otherwise)."""
    return {k: v for k, v in {"channels": channels, "fc5_dim": fc5_dim}.items() if v is not None}


def _training_run_options(command):
    """``--data``, ``--out`` and ``--work-dir``, shared by the training commands."""
    command = click.option(
        "--work-dir",
        type=click.Path(file_okay=False, path_type=Path),
        required=True,
        help="Checkpoint and detector-box cache; rerun with the same folder to resume.",
    )(command)
    command = click.option(
        "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Weights file to write."
    )(command)
    return _data_option(command)


def _check_data(data: Path) -> None:
    if not (data / "train.txt").is_file():
        raise click.ClickException(f"{data} is not an MTFL folder (no train.txt); pass --data")


@click.command("train")
@_training_run_options
@click.option("--epochs", type=click.IntRange(min=1), default=150, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--lr", type=float, default=2e-3, show_default=True, help="Adam learning rate (cosine decay).")
@click.option(
    "--augment",
    type=click.Choice(["full", "paper"]),
    default="full",
    show_default=True,
    help="'paper': box jitter only; 'full': also mirroring, rotation and brightness.",
)
@_width_options
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--limit", type=click.IntRange(min=10), default=None, help="Use only the first N training faces.")
@click.option(
    "--threads", type=click.IntRange(min=0), default=1, show_default=True, help="torch threads (0: torch default)."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def train_command(
    data, out, work_dir, epochs, batch_size, lr, augment, channels, fc5_dim, seed, limit, threads, quiet
) -> None:
    """Train the vanilla CNN (paper section 2.1) on MTFL, resumable.

    \b
    Examples:
      facealign train --out runs/vanilla.pt --work-dir runs/vanilla
      facealign train --channels 16,48,128,128 --fc5 200 --epochs 500 --out runs/wide.pt --work-dir runs/wide
    """
    from .training import TrainConfig, train_vanilla

    _check_data(data)
    cfg = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, augment=augment, seed=seed, threads=threads,
        **_widths(channels, fc5_dim),
    )  # fmt: skip
    try:
        _quiet_logs(quiet)
        train_vanilla(data, out, work_dir, cfg, resume=True, limit=limit)
    except ValueError as err:
        raise click.ClickException(str(err)) from err


@click.command("train-compact")
@_training_run_options
@click.option("--epochs", type=click.IntRange(min=1), default=80, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=64, show_default=True)
@click.option("--lr", type=float, default=2e-3, show_default=True, help="AdamW learning rate (cosine decay).")
@click.option(
    "--input-size",
    type=click.IntRange(min=32),
    default=64,
    show_default=True,
    help="Side of the network input, a multiple of 16.",
)
@click.option("--loss", type=click.Choice(["l1", "eq1"]), default="l1", show_default=True)
@click.option(
    "--augment",
    type=click.Choice(["strong", "light"]),
    default="strong",
    show_default=True,
    help="strong: rotation, jitter, low resolution, blur, JPEG, occlusion, grey; light: jitter, small rotations, "
    "mirroring and colour (a clean fine-tune after --init).",
)
@click.option(
    "--init",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Compact weights to fine-tune from (their network, normalisation and box model).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--limit", type=click.IntRange(min=10), default=None, help="Use only the first N training faces.")
@click.option(
    "--threads", type=click.IntRange(min=0), default=1, show_default=True, help="torch threads (0: torch default)."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def train_compact_command(
    data, out, work_dir, epochs, batch_size, lr, input_size, loss, augment, init, seed, limit, threads, quiet
) -> None:
    """Train the compact network (engine v3, facealign.research.compact) on MTFL, resumable.

    \b
    Examples (C1, then C1 fine-tuned on clean crops, of docs/hard/engine-v3.md):
      facealign train-compact --out runs/c64/compact.pt --work-dir runs/c64
      facealign train-compact --init runs/c64/compact.pt --augment light --epochs 12 --lr 2e-4 \\
          --out runs/c64ft/compact.pt --work-dir runs/c64ft
    """
    from .compact import LIGHT_AUGMENTATION, CompactTrainConfig, train_compact

    _check_data(data)
    cfg = CompactTrainConfig(
        init=None if init is None else str(init), epochs=epochs, batch_size=batch_size, lr=lr,
        input_size=input_size, loss=loss, seed=seed, threads=threads,
        **(LIGHT_AUGMENTATION if augment == "light" else {}),  # type: ignore[arg-type]
    )  # fmt: skip
    try:
        _quiet_logs(quiet)
        train_compact(data, out, work_dir, cfg, resume=True, limit=limit)
    except ValueError as err:
        raise click.ClickException(str(err)) from err


@click.command("train-hard")
@_training_run_options
@click.option("--init", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="Weights to fine-tune from.")
@click.option("--epochs", type=click.IntRange(min=1), default=40, show_default=True)
@click.option("--lr", type=float, default=5e-4, show_default=True, help="Adam learning rate (cosine decay).")
@click.option(
    "--detectors",
    default="retinaface,dlib",
    show_default=True,
    help="Detectors whose (mapped) boxes the faces are trained on, comma-separated; the first is validated on.",
)
@click.option("--augment", type=click.Choice(["full", "hard"]), default="hard", show_default=True)
@click.option("--rotation", type=float, default=30.0, show_default=True, help="Largest in-plane rotation, degrees.")
@click.option(
    "--jitter-shift", type=float, default=0.08, show_default=True, help="Largest box shift, fraction of its size."
)
@click.option(
    "--jitter-scale", type=float, default=0.15, show_default=True, help="Largest log scale change of the box."
)
@click.option(
    "--pose-balance", type=float, default=0.5, show_default=True, help="Sample with count(pose)^-P (0: uniform)."
)
@click.option("--loss", type=click.Choice(["eq1", "wing"]), default="eq1", show_default=True)
@_width_options
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--limit", type=click.IntRange(min=10), default=None, help="Use only the first N faces of train.txt.")
@click.option(
    "--threads", type=click.IntRange(min=0), default=1, show_default=True, help="torch threads (0: torch default)."
)
@click.option("--quiet", "-q", is_flag=True)
def train_hard_command(
    data,
    out,
    work_dir,
    init,
    epochs,
    lr,
    detectors,
    augment,
    rotation,
    jitter_shift,
    jitter_scale,
    pose_balance,
    loss,
    channels,
    fc5_dim,
    seed,
    limit,
    threads,
    quiet,
):
    """Train the vanilla network for hard faces (issue 16; facealign.research.hard_training), resumable."""
    from .hard_training import HardTrainConfig, train_hard

    _check_data(data)
    names = tuple(d.strip() for d in detectors.split(",") if d.strip())
    unknown = [d for d in names if d not in BUILTIN_DETECTORS]
    if not names or unknown:
        raise click.ClickException(f"--detectors: unknown {unknown}; choose from {list(BUILTIN_DETECTORS)}")
    cfg = HardTrainConfig(
        init=None if init is None else str(init),
        epochs=epochs,
        lr=lr,
        detectors=names,
        augment=augment,
        rotation_deg=rotation,
        jitter_shift=jitter_shift,
        jitter_scale=jitter_scale,
        pose_balance=pose_balance,
        loss=loss,
        seed=seed,
        threads=threads,
        **_widths(channels, fc5_dim),
    )
    try:
        _quiet_logs(quiet)
        train_hard(data, out, work_dir, cfg, limit=limit)
    except ValueError as err:
        raise click.ClickException(str(err)) from err


@click.command("tweak")
@_data_option
@click.option(
    "--vanilla", "vanilla_weights", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="TCNN weights file to write."
)
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), required=True, help="Resumable state.")
@click.option("--clusters", "-k", type=click.IntRange(min=1), default=48, show_default=True, help="K, GMM components.")
@click.option(
    "--target",
    type=click.IntRange(min=0),
    default=5000,
    show_default=True,
    help="Faces per cluster after augmentation (0: none).",
)
@click.option(
    "--labels",
    type=click.Choice(["warped", "paper"]),
    default="warped",
    show_default=True,
    help="Label of an augmented face: A's landmarks warped by H (exact), or B's landmarks (paper).",
)
@_boxes_option
@click.option(
    "--patience", type=click.IntRange(min=1), default=50, show_default=True, help="Early-stopping patience, epochs."
)
@click.option("--max-epochs", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--lr", type=float, default=1e-4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--jobs", "-j", type=int, default=-1, show_default=True, help="Clusters tweaked in parallel (-1: all cores)."
)
@click.option("--limit", type=click.IntRange(min=10), default=None, help="Use only the first N training faces.")
@click.option("--quiet", "-q", is_flag=True)
def tweak_command(
    data,
    vanilla_weights,
    out,
    work_dir,
    clusters,
    target,
    labels,
    boxes,
    patience,
    max_epochs,
    lr,
    seed,
    jobs,
    limit,
    quiet,
):
    """Build the Tweaked CNN (paper section 3) from vanilla weights, resumable."""
    from .tweak import TweakConfig, tweak

    _check_data(data)
    cfg = TweakConfig(
        clusters=clusters,
        target=target,
        labels=labels,
        boxes=boxes,
        patience=patience,
        max_epochs=max_epochs,
        lr=lr,
        seed=seed,
    )
    _quiet_logs(quiet)
    tweak(vanilla_weights, data, out, work_dir, cfg, jobs=jobs, limit=limit)


@click.command("evaluate")
@_data_option
@click.option(
    "--engine",
    "engines",
    multiple=True,
    type=click.Choice(list(ENGINE_KINDS)),
    default=("tcnn",),
    show_default=True,
    help="Engine(s) to evaluate on the same faces; repeatable.",
)
@click.option(
    "--weights", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="Weights file (one engine only)."
)
@click.option("--no-mirror", is_flag=True, help="TCNN without the mirrored-image average.")
@click.option(
    "--refine/--no-refine",
    default=None,
    help="Re-box from a first pass before the reported one [default: on when the weights carry a box model].",
)
@click.option("--detector", type=click.Choice(BUILTIN_DETECTORS), default=DEFAULT_DETECTOR, show_default=True)
@click.option(
    "--split",
    type=click.Choice(["test", "validation", "train"]),
    default="test",
    show_default=True,
    help="test: the AFLW test set; validation: the held-out 10% of train.txt; train: all of train.txt.",
)
@cache_dir_option
@click.option(
    "--curve", type=click.Path(dir_okay=False, path_type=Path), help="Write the cumulative error curve PNG here."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (per engine when several).")
@click.option(
    "--by",
    "groupings",
    multiple=True,
    type=click.Choice(["pose", "size"]),
    help="Also report per group, repeatable: pose (MTFL labels 1-5, profiles 1 and 5; misses counted in "
    "their pose) or size (width of the detector's own box in px of the image, --size-bins; misses in "
    "a group of their own).",
)
@click.option(
    "--size-bins",
    default="30,40,50,60",
    show_default=True,
    help="Face-width bin edges for --by size, px, comma-separated (bins <e0, e0-e1, ..., >=last).",
)
def evaluate_command(
    data, engines, weights, no_mirror, refine, detector, split, cache_dir, curve, as_json, groupings, size_bins
) -> None:
    """Mean error (% inter-ocular distance) and failure rate on the MTFL AFLW test set.

    Faces the detector misses count as failures; the mean error is over the
    detected faces.
    """
    from ..engine import LandmarkEngine
    from .evaluation import evaluate_engines, plot_cumulative_error

    _check_data(data)
    if weights is not None and len(engines) != 1:
        raise click.ClickException("--weights needs exactly one --engine")
    models = {}
    for name in dict.fromkeys(engines):
        mirror = False if no_mirror else None
        try:
            models[name] = LandmarkEngine(name, weights=weights, mirror=mirror, refine=refine)
        except (ValueError, FileNotFoundError) as err:
            raise click.ClickException(str(err)) from err
    try:
        edges = tuple(sorted(float(v) for v in size_bins.split(",") if v.strip()))
    except ValueError:
        raise click.ClickException(f"--size-bins must be numbers separated by commas, got {size_bins!r}") from None
    if not edges:
        raise click.ClickException("--size-bins needs at least one edge")
    groupings = tuple(dict.fromkeys(groupings))
    results = evaluate_engines(models, data, cache_dir, detector, split, by=groupings, size_bins=edges)
    if curve is not None:
        plot_cumulative_error({k: (v["errors"], v["n"]) for k, v in results.items()}, curve)
    public = {k: {kk: vv for kk, vv in v.items() if kk != "errors"} for k, v in results.items()}
    for v in public.values():
        v["detector"] = detector
    if as_json:
        click.echo(json.dumps(public[engines[0]] if len(public) == 1 else public))
    else:
        for name, r in public.items():
            click.echo(
                f"{name}: NME {r['nme']:.2f}% (median {r['median']:.2f}%), failure rate {100 * r['failure_rate']:.2f}% "
                f"(>10% or missed), {r['misses']} of {r['n']} faces missed by the detector"
            )
        for grouping in groupings:
            click.echo(_group_table(grouping, {name: r[f"by_{grouping}"] for name, r in public.items()}))


def _group_table(grouping: str, by_engine: dict[str, dict]) -> str:
    """Markdown table of per-group NME and failure rate, one column pair per engine."""
    names = list(by_engine)
    groups = list(dict.fromkeys(g for groups in by_engine.values() for g in groups))
    title = "pose (MTFL label)" if grouping == "pose" else "detector box width, px"
    head = f"| {title} | faces | missed | " + " | ".join(f"{n} NME | {n} failures" for n in names) + " |"
    rule = "|---" * (3 + 2 * len(names)) + "|"
    rows = [head, rule]
    for g in groups:
        first = next(by_engine[n][g] for n in names if g in by_engine[n])
        cells = []
        for n in names:
            r = by_engine[n].get(g)
            nme = "-" if r is None or r["detected"] == 0 else f"{r['nme']:.2f}%"
            cells.append(f"{nme} | {100 * r['failure_rate']:.1f}%" if r else "- | -")
        rows.append(f"| {g} | {first['n']} | {first['misses']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


@click.command("sweep-k")
@_data_option
@click.option(
    "--vanilla", "vanilla_weights", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True
)
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), required=True, help="Resumable state.")
@click.option("--ks", default="1,8,16,32,48,64", show_default=True, help="Comma-separated values of K.")
@click.option("--target", type=click.IntRange(min=0), default=5000, show_default=True)
@_boxes_option
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder for sweep-k.json and .png."
)
@click.option("--jobs", "-j", type=int, default=-1, show_default=True)
@click.option("--quiet", "-q", is_flag=True)
def sweep_k_command(data, vanilla_weights, work_dir, ks, target, boxes, out, jobs, quiet) -> None:
    """Sweep K, the number of clusters (paper Fig. 7): tweak per K, test on AFLW.

    Slow (one full tweak per K); resumable through --work-dir. K was fixed to 48
    from the paper, not chosen with this sweep.
    """
    from ..engine import LandmarkEngine
    from .evaluation import evaluate_engines, write_json
    from .figures import subplots
    from .tweak import TweakConfig, tweak

    _check_data(data)
    try:
        values = sorted({int(k) for k in ks.split(",") if k.strip()})
    except ValueError:
        raise click.ClickException(f"--ks must be integers separated by commas, got {ks!r}") from None
    _quiet_logs(quiet)
    rows = []
    for k in values:
        weights = work_dir / f"tcnn-K{k}-T{target}-{boxes}.pt"
        if not weights.exists():
            cfg = TweakConfig(clusters=k, target=target, boxes=boxes)
            tweak(vanilla_weights, data, weights, work_dir, cfg, jobs=jobs)
        refine = boxes == "refined"
        engines = {
            "mirror": LandmarkEngine("tcnn", weights=weights, refine=refine),
            "no_mirror": LandmarkEngine("tcnn", weights=weights, mirror=False, refine=refine),
        }
        res = evaluate_engines(engines, data, work_dir)
        rows.append(
            {"K": k, **{f"nme_{m}": r["nme"] for m, r in res.items()}, "failure_rate": res["mirror"]["failure_rate"]}
        )
        logger.info(f"K={k}: NME {res['mirror']['nme']:.3f}% (no mirror {res['no_mirror']['nme']:.3f}%)")
    out.mkdir(parents=True, exist_ok=True)
    write_json({"target": target, "boxes": boxes, "rows": rows}, out / "sweep-k.json")
    fig, ax = subplots(figsize=(5, 3.6), dpi=120)
    ax.plot([r["K"] for r in rows], [r["nme_mirror"] for r in rows], "o-", label="TCNN with mirroring")
    ax.plot([r["K"] for r in rows], [r["nme_no_mirror"] for r in rows], "s--", label="TCNN without mirroring")
    ax.set_xlabel("number of clusters K")
    ax.set_ylabel("AFLW mean error (% IOD)")
    ax.set_title("Effect of K (MTFL AFLW test set)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "sweep-k.png")
    click.echo(json.dumps(rows))


def _quality_engine(name: str, weights: Path | None):
    """The engine as ``facealign crop`` runs it (default mirroring and re-boxing)."""
    from ..engine import LandmarkEngine

    try:
        return LandmarkEngine(name, weights=weights)
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from err


@click.command("fit-quality")
@_data_option
@click.option("--engine", "engine_name", type=click.Choice(list(ENGINE_KINDS)), default="tcnn", show_default=True)
@click.option(
    "--weights",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Weights file to read [default: the shipped one for --engine].",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Weights file to write [default: overwrite --weights / the shipped file].",
)
@click.option(
    "--signals",
    default=None,
    help="Comma-separated quality signals [default: the engine's, see facealign.quality_fit].",
)
@click.option(
    "--detector",
    type=click.Choice(BUILTIN_DETECTORS),
    default=DEFAULT_DETECTOR,
    show_default=True,
    help="Detector whose boxes the validation faces get (the run-time default: what the model will see).",
)
@cache_dir_option
def fit_quality_command(data, engine_name, weights, out, signals, detector, cache_dir) -> None:
    """Fit the per-face quality model on the MTFL validation split and store it in the weights.

    The model (expected_error and p_fail from the engine's quality signals) goes
    under the key "quality"; every other key of the weights file is kept.
    """
    from ..engine import shipped_weights
    from ..quality import SIGNAL_FLOORS
    from .quality_fit import DEFAULT_SIGNALS, collect_quality, fit_engine_quality

    _check_data(data)
    if weights is None and engine_name not in ENGINES:
        raise click.ClickException(f"engine {engine_name!r} ships no weights: give --weights")
    source = weights if weights is not None else shipped_weights(engine_name)
    names = (
        DEFAULT_SIGNALS[engine_name] if signals is None else tuple(n.strip() for n in signals.split(",") if n.strip())
    )
    unknown = [n for n in names if n not in SIGNAL_FLOORS]
    if unknown:
        raise click.ClickException(f"unknown signals {unknown}; choose from {sorted(SIGNAL_FLOORS)}")
    sample = collect_quality(
        _quality_engine(engine_name, source),
        data,
        "validation",
        cache_dir,
        detector,
    )
    try:
        model = fit_engine_quality(source, out or source, engine_name, sample, names)
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    click.echo(
        f"quality model on {len(sample.errors)} validation faces, signals {', '.join(model.signals)}: "
        f"wrote {out or source}"
    )


@click.command("evaluate-quality")
@_data_option
@click.option("--engine", "engine_name", type=click.Choice(list(ENGINE_KINDS)), default="tcnn", show_default=True)
@click.option(
    "--weights",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Weights file (with a quality model).",
)
@click.option("--detector", type=click.Choice(BUILTIN_DETECTORS), default=DEFAULT_DETECTOR, show_default=True)
@cache_dir_option
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for quality-<engine>-<detector>.json and .png.",
)
def evaluate_quality_command(data, engine_name, weights, detector, cache_dir, out) -> None:
    """How well expected_error and p_fail predict the true error: validation split and AFLW test set.

    Reports the ROC AUC of p_fail for failures (NME > 10%), the Spearman
    correlation of expected_error with the NME, calibration tables and the
    error-reject curve, as JSON and PNG.
    """
    from .evaluation import write_json
    from .quality_fit import SPLITS, collect_quality, plot_quality_report, quality_report

    _check_data(data)
    engine = _quality_engine(engine_name, weights)
    reports = {}
    for split in SPLITS:
        sample = collect_quality(engine, data, split, cache_dir, detector)
        try:
            reports[split] = quality_report(sample)
        except ValueError as err:
            raise click.ClickException(str(err)) from err
    labels = {"validation": "validation (fitted on)", "test": "AFLW test"}
    stem = f"quality-{engine_name}-{detector}"
    write_json({"engine": engine_name, "detector": detector, **reports}, out / f"{stem}.json")
    plot_quality_report({labels[k]: v for k, v in reports.items()}, out / f"{stem}.png")
    for split, r in reports.items():
        click.echo(
            f"{labels[split]}: {r['faces']} faces, failure rate {100 * r['failure_rate']:.1f}%, AUC of p_fail "
            f"{r['auc_p_fail']:.3f}, Spearman {r['spearman_expected_error']:.3f}, NME {r['nme']:.2f}% -> "
            f"{r['error_reject'][2]['nme']:.2f}% rejecting 10% ({100 * r['nme_reduction_rejecting_10pct']:.1f}% lower)"
        )


@click.command("fit-box-maps")
@_data_option
@click.option(
    "--detector",
    "detectors",
    multiple=True,
    type=click.Choice([d for d in BUILTIN_DETECTORS if not d.startswith(TRAINING_DETECTOR)]),
    default=("retinaface", "libfacedetection"),
    show_default=True,
    help="Detector(s) to fit a map for; repeatable.",
)
@cache_dir_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="[default: the shipped weights/box_maps.json]",
)
@click.option("--jobs", "-j", type=int, default=-1, show_default=True)
@click.option("--quiet", "-q", is_flag=True)
def fit_box_maps_command(data, detectors, cache_dir, out, jobs, quiet) -> None:
    """Fit, per detector, the map from its boxes (and points) to dlib's boxes.

    The engines were trained on dlib HOG boxes; these maps let them take other
    detectors' faces (:class:`facealign.reboxing.DetectorBoxMap`). Fitted on the
    MTFL training split only (train.txt less the validation 10%), on the faces
    both detectors find. Reproduces the shipped file with the defaults.
    """
    import datetime

    from ..reboxing import BOX_MAPS_FILE, DetectorBoxMap
    from .data import cached_boxes, detection_points, load_mtfl, train_validation_split
    from .evaluation import write_json

    _check_data(data)
    _quiet_logs(quiet)
    train = load_mtfl(data, "train")
    train = train.subset(train_validation_split(len(train))[0])
    images = train.load_images()
    logger.info(f"detecting {len(train)} training faces with {TRAINING_DETECTOR} (the engines' training detector)")
    reference = cached_boxes(train, images, cache_dir, TRAINING_DETECTOR, jobs=jobs)
    maps = {}
    for name in detectors:
        logger.info(f"detecting {len(train)} training faces with {name}")
        found = cached_boxes(train, images, cache_dir, name, jobs=jobs)
        fitted = DetectorBoxMap.fit(name, found[:, :4], reference[:, :4], detection_points(found))
        maps[name] = fitted.to_json()
        logger.info(
            f"{name}: {fitted.faces} faces; centre shift {np.round(fitted.box_offset, 3).tolist()} box sizes, "
            f"scale {np.round(fitted.box_scale, 3).tolist()}, points model: {fitted.from_points is not None}"
        )
    write_json(
        {
            "reference_detector": TRAINING_DETECTOR,
            "fitted_on": "MTFL train.txt less the validation split (facealign.research.data.train_validation_split)",
            "command": "facealign fit-box-maps " + " ".join(f"--detector {d}" for d in detectors),
            "date": datetime.date.today().isoformat(),
            "maps": maps,
        },
        BOX_MAPS_FILE if out is None else out,
    )


@click.command("export-engine")
@click.option(
    "--engine",
    "engine_names",
    type=click.Choice(["tcnn", "vanilla"]),
    multiple=True,
    help="Engines whose shipped run-time weights to rebuild [default: all].",
)
@click.option(
    "--weights",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A training weights file (.pt) to compile instead (needs --out).",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Run-time weights file (.npz) to write.")
def export_engine_command(engine_names, weights, out) -> None:
    """Compile training weights (.pt) into the run-time weights (.npz) the engines load.

    The run-time file holds the convolutional layers as ONNX (run by onnxruntime)
    and the rest as numpy arrays, so that cropping needs no torch. Run it after
    train, tweak or fit-quality have rewritten a shipped .pt file.

    \b
    Examples:
      facealign export-engine                      # rebuild facealign/weights/*.npz
      facealign export-engine --weights runs/tcnn.pt --out runs/tcnn.npz
    """
    from ..constants import ENGINES, shipped_runtime_weights, shipped_weights
    from .export import write_runtime_weights

    if (weights is None) != (out is None):
        raise click.UsageError("--weights and --out go together")
    if weights is not None:
        click.echo(f"wrote {write_runtime_weights(weights, out)}")
        return
    for name in engine_names or ENGINES:
        click.echo(f"wrote {write_runtime_weights(shipped_weights(name), shipped_runtime_weights(name))}")
