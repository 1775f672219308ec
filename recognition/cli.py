"""The ``recognition`` command line: what an alignment is worth for face verification.

Commands
--------
``make-protocol``     write a Janus CS2 style protocol for an identity-labelled image set
``prepare-lfw``       align the LFW training identities into crops + a sample list
``train``             train the AlexNet backbone on aligned crops (resumable)
``export-weights``    write a small inference-only copy of a checkpoint (ship it)
``verify``            TAR at FAR 1e-3 / 1e-2 / 1e-1 (mean ± std over splits) and the ROC, one aligner
``compare-aligners``  the same for several aligners, as a Table 2 style table with paired statistics
``lfw-accuracy``      LFW View 2 10-fold accuracy (secondary; see recognition.lfw)

Heavy modules (torch, dlib) are imported inside the commands. User errors exit
non-zero with a one-line message.
"""

from __future__ import annotations

import importlib.util
import json
import random
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from facealign.constants import BUILTIN_DETECTORS, TRAINING_DETECTOR
from facealign.progress import Progress

from . import __version__

ALIGNER_HELP = (
    "'tcnn', 'vanilla', 'dlib-ert', 'dlib-5pt', 'box' or 'manifest:PATH' (JSON lines with five landmarks per image)."
)


#: Modules of the ``recognition`` extra (setup.cfg), by import name.
EXTRA_MODULES: frozenset[str] = frozenset(
    {"torch", "onnx", "face_recognition_models", "sklearn", "threadpoolctl", "scipy", "matplotlib"}
)

#: The install command that brings them.
EXTRA_INSTALL = "pip install 'facealign[recognition]'"


def missing_extra_message(exc: ModuleNotFoundError) -> str | None:
    """One line naming the extra to install when ``exc`` is a module of it that is missing, else None."""
    module = (exc.name or "").split(".")[0]
    if module not in EXTRA_MODULES:
        return None
    return f"recognition needs the 'recognition' extra (module {module!r} is missing): {EXTRA_INSTALL}"


def require_extra(*modules: str) -> None:
    """Stop with :func:`missing_extra_message`'s one line unless every module of the extra in
    ``modules`` can be imported: checked when a command starts, before it reads its inputs."""
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            message = missing_extra_message(ModuleNotFoundError(name=module))
            raise click.ClickException(message or f"module {module!r} is missing")


class _RecognitionGroup(click.Group):
    """The command group; a missing module of the extra is a one-line error, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as exc:
            message = missing_extra_message(exc)
            if message is None:
                raise
            raise click.ClickException(message) from None


@click.group(cls=_RecognitionGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="recognition", message="%(prog)s %(version)s")
def main() -> None:
    """Face verification benchmark that measures what an alignment is worth (paper, section 5.2)."""


def _fail(exc: Exception) -> click.ClickException:
    if isinstance(exc, ModuleNotFoundError):
        message = missing_extra_message(exc)
        if message is not None:
            return click.ClickException(message)
    return click.ClickException(str(exc))


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- options


def _shared_options(f: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--backbone",
            default=None,
            help="'dlib-resnet' (dlib's ResNet descriptor; needs the recognition extra) or an AlexNet "
            "weights file [default: recognition/weights/alexnet.pt].",
        ),
        click.option(
            "--detector",
            type=click.Choice(BUILTIN_DETECTORS),
            default=TRAINING_DETECTOR,
            show_default=True,
            help="Face detector (run once per image, cached).",
        ),
        click.option(
            "--cache-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="Detection and feature caches [default: $RECOGNITION_CACHE, else recognition/ in "
            "facealign's cache folder: $FACEALIGN_CACHE or ~/.cache/facealign].",
        ),
        click.option(
            "--tcnn-weights",
            type=click.Path(dir_okay=False, exists=True, path_type=Path),
            default=None,
            help="Weights of the tcnn aligner [default: shipped].",
        ),
        click.option(
            "--vanilla-weights",
            type=click.Path(dir_okay=False, exists=True, path_type=Path),
            default=None,
            help="Weights of the vanilla aligner [default: shipped].",
        ),
        click.option(
            "--pca-components",
            type=click.IntRange(min=1),
            default=4000,
            show_default=True,
            help="PCA dimension (capped by the number of training images).",
        ),
        click.option(
            "--jobs",
            "-j",
            type=int,
            default=1,
            show_default=True,
            help="Worker processes for detection and, with several aligners, for their "
            "features (one aligner per process; -1: all cores).",
        ),
        click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads."),
        click.option("--quiet", "-q", is_flag=True, help="No progress lines."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _beta_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--beta",
        "betas",
        type=float,
        multiple=True,
        help="SoftMax fusion temperature; repeat to average several [default: 0, 1, ..., 20].",
    )(f)


# --------------------------------------------------------------------------- make-protocol


@main.command("make-protocol")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Protocol folder to write.",
)
@click.option(
    "--images-root",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Root of the paths of an 'image identity' list (checked; recorded in protocol.json).",
)
@click.option("--splits", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--train-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=1 / 3,
    show_default=True,
    help="Fraction of subjects used to fit the PCA (CS2: 333 of 500).",
)
@click.option(
    "--template-size", type=click.IntRange(min=1), default=4, show_default=True, help="Target images per test template."
)
@click.option(
    "--max-templates", type=click.IntRange(min=2), default=4, show_default=True, help="Most templates per test subject."
)
@click.option(
    "--impostor-ratio",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Impostor comparisons per genuine comparison.",
)
@click.option(
    "--subjects",
    "n_subjects",
    type=click.IntRange(min=2),
    default=None,
    help="Use only a random sample of N subjects (seeded by --seed), e.g. when features are costly.",
)
@click.option(
    "--cross-pose",
    is_flag=True,
    help="Pose protocol: templates made per |yaw| bin, genuine (and impostor) comparisons only between "
    "templates of different bins; yaw from dlib-ert's landmarks on the detected face (the fixed reference, "
    "never an aligner under test). Needs the image root.",
)
@click.option(
    "--yaw-bins",
    default="15,30",
    show_default=True,
    help="Upper edges of the |yaw| bins in degrees but the last (which ends at 90), comma-separated.",
)
@click.option(
    "--detector",
    type=click.Choice(BUILTIN_DETECTORS),
    default=TRAINING_DETECTOR,
    show_default=True,
    help="Face detector of --cross-pose (cached, shared with compare-aligners).",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Detection and reference-landmark caches of --cross-pose [default: as compare-aligners].",
)
@click.option("--jobs", "-j", type=int, default=1, show_default=True, help="Detection worker processes.")
def make_protocol_command(
    source: Path,
    out_dir: Path,
    images_root: Path | None,
    splits: int,
    seed: int,
    train_fraction: float,
    template_size: int,
    max_templates: int,
    impostor_ratio: float,
    n_subjects: int | None,
    cross_pose: bool,
    yaw_bins: str,
    detector: str,
    cache_dir: Path | None,
    jobs: int,
) -> None:
    """Write a CS2 style protocol for SOURCE: a folder with one subfolder per identity,
    or an 'image identity' list file (e.g. celeba_wild/identities.txt)."""
    from facealign.imageio import write_json

    from .protocol import items_from_folders, items_from_identity_list, make_protocol, sample_subjects

    try:
        root: Path | None
        if source.is_dir():
            items = items_from_folders(source)
            root = source
        else:
            items = items_from_identity_list(source)
            root = images_root
        if n_subjects is not None:
            items = sample_subjects(items, n_subjects, seed)
        if root is not None:
            missing = [p for p, _ in items if not (root / p).is_file()]
            if missing:
                raise ValueError(f"{len(missing)} listed image(s) not found under {root}, e.g. {missing[:3]}")
        yaw = pose = None
        edges = _yaw_edges(yaw_bins)
        if cross_pose:
            if root is None:
                raise click.UsageError("--cross-pose needs --images-root (it detects the faces)")
            yaw, pose = _reference_yaw([p for p, _ in items], root, detector, cache_dir, jobs)
        summary = make_protocol(
            items,
            out_dir,
            splits,
            seed,
            train_fraction=train_fraction,
            template_size=template_size,
            max_templates_per_subject=max_templates,
            impostor_ratio=impostor_ratio,
            yaw=yaw,
            yaw_bins=edges,
        )
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise _fail(exc) from exc
    if pose is not None:
        summary["cross_pose"].update(pose)
    summary["source"] = str(source.resolve())
    if n_subjects is not None:
        summary["subjects_sampled"] = {"n": n_subjects, "seed": seed}
    if root is not None:
        summary["images_root"] = str(root.resolve())
    write_json(summary, out_dir / "protocol.json")
    first = summary["splits"][0]
    click.echo(
        f"{summary['images']} images of {summary['subjects']} subjects -> {splits} splits in {out_dir}; "
        f"split 1: {first['train_subjects']} training subjects ({first['train_images']} images), "
        f"{first['test_subjects']} test subjects in {first['test_templates']} templates, "
        f"{first['genuine']} genuine + {first['impostor']} impostor comparisons"
    )


def _yaw_edges(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated degrees, got {text!r}", param_hint="--yaw-bins") from None


def _reference_yaw(
    files: list[str], root: Path, detector: str, cache_dir: Path | None, jobs: int
) -> tuple[dict[str, float], dict[str, Any]]:
    """Yaw of every image whose face the detector finds, from the reference aligner's landmarks."""
    from .aligners import choose_face_boxes
    from .caches import DetectionCache, default_cache_dir
    from .conditions import REFERENCE_ALIGNER, reference_landmarks

    cache = cache_dir if cache_dir is not None else default_cache_dir()
    detections = DetectionCache(root, detector, cache)
    faces = choose_face_boxes(detections.ensure(files, jobs=jobs, progress=Progress("detect")))
    detected = [f for f in files if faces.sources[f] == "detector"]
    reference = reference_landmarks(detected, root, faces.boxes, cache, detections.key, Progress("reference landmarks"))
    yaw = {f: reference.yaw(f) for f in detected}
    pose = {"reference": REFERENCE_ALIGNER, "reference_key": reference.key, "detector": detector}
    return yaw, pose


# --------------------------------------------------------------------------- prepare-lfw / train / export


@main.command("prepare-lfw")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option(
    "--lfw-root",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Folder holding lfw-deepfunneled/ [default: ../shared/datasets/lfw].",
)
@click.option(
    "--size", type=click.IntRange(min=63), default=112, show_default=True, help="Crop side: the backbone input size."
)
@click.option("--detector", type=click.Choice(BUILTIN_DETECTORS), default=TRAINING_DETECTOR, show_default=True)
@click.option(
    "--weights",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Vanilla landmark engine weights [default: shipped].",
)
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--jobs", "-j", type=int, default=-1, show_default=True, help="Detection worker processes.")
@click.option("--min-images", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--limit", type=click.IntRange(min=2), default=None, help="Only the first N people (trials).")
def prepare_lfw_command(
    out_dir: Path,
    lfw_root: Path | None,
    size: int,
    detector: str,
    weights: Path | None,
    cache_dir: Path | None,
    jobs: int,
    min_images: int,
    limit: int | None,
) -> None:
    """Align the LFW people with >= 2 images (dlib, vanilla, 'loose' template) for training.

    Writes OUT/crops/<Name>/<Name>_NNNN.jpg and OUT/samples.txt; existing crops are kept (resumable).
    """
    from .lfw import prepare_lfw

    progress = {"detect": Progress("detect"), "align": Progress("align")}
    try:
        summary = prepare_lfw(
            out_dir,
            lfw_root,
            size=size,
            detector=detector,
            weights=weights,
            cache_dir=cache_dir,
            jobs=jobs,
            min_images=min_images,
            limit=limit,
            progress=lambda stage, d, t: progress[stage](d, t),
        )
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from exc
    click.echo(summary.line())


def _log_line(line: str) -> None:
    click.echo(f"{datetime.now().strftime('%Y-%m-%d %H:%M:%S')} {line}")


@main.command("train")
@click.option(
    "--samples",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="'path identity' list of aligned crops (e.g. from prepare-lfw).",
)
@click.option(
    "--out",
    "checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Checkpoint, rewritten after every epoch; an existing one is resumed.",
)
@click.option("--input-size", type=click.IntRange(min=63), default=112, show_default=True)
@click.option(
    "--width",
    type=click.FloatRange(min=0, min_open=True),
    default=0.25,
    show_default=True,
    help="Channel width multiplier of AlexNet.",
)
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.5, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default="sgd", show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.01, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=5e-4, show_default=True)
@click.option("--jitter", type=click.IntRange(min=0), default=4, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option(
    "--workers", type=click.IntRange(min=0), default=0, show_default=True, help="DataLoader worker processes."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--log-every", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--restart", is_flag=True, help="Ignore an existing checkpoint and start afresh.")
@click.option(
    "--time-batches",
    type=click.IntRange(min=1),
    default=None,
    help="Only time N batches (one epoch on N random batches, in a temporary file) and estimate the epoch time.",
)
def train_command(
    samples: Path,
    checkpoint: Path,
    input_size: int,
    width: float,
    dropout: float,
    epochs: int,
    batch_size: int,
    optimizer: str,
    lr: float,
    weight_decay: float,
    jitter: int,
    threads: int | None,
    workers: int,
    seed: int,
    log_every: int,
    restart: bool,
    time_batches: int | None,
) -> None:
    """Train the AlexNet backbone to classify the identities of aligned crops (resumable)."""
    require_extra("torch")
    from .training import TrainingConfig, read_sample_list, train_alexnet

    try:
        rows = read_sample_list(samples)
        config = TrainingConfig(
            epochs=epochs,
            batch_size=batch_size,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            jitter=jitter,
            log_every=log_every,
            num_threads=threads,
            num_workers=workers,
            seed=seed,
        )
        if time_batches is not None:
            subset = random.Random(seed).sample(rows, min(len(rows), time_batches * batch_size))
            with tempfile.TemporaryDirectory() as tmp:
                result = train_alexnet(
                    subset,
                    Path(tmp) / "timing.pt",
                    input_size=input_size,
                    width=width,
                    dropout=dropout,
                    resume=False,
                    log=_log_line,
                    config=TrainingConfig(**{**config.__dict__, "epochs": 1}),
                )
            seconds = result.history[0]["seconds"]
            per_epoch = seconds / len(subset) * len(rows)
            click.echo(
                f"{len(subset)} images in {seconds:.1f} s ({len(subset) / seconds:.1f} img/s); "
                f"estimated epoch over {len(rows)} images: {per_epoch / 60:.1f} min"
            )
            return
        _log_line(
            f"training on {len(rows)} crops of {len({i for _, i in rows})} identities: input {input_size}, "
            f"width {width}, {config}"
        )
        result = train_alexnet(
            rows,
            checkpoint,
            input_size=input_size,
            width=width,
            dropout=dropout,
            config=config,
            resume=not restart,
            log=_log_line,
        )
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from exc
    _log_line(f"finished: {result.epochs_completed} epochs; checkpoint {result.checkpoint}")


@main.command("export-weights")
@click.argument("checkpoint", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Destination [default: recognition/weights/alexnet.pt].",
)
@click.option("--fp32", is_flag=True, help="Store float32 tensors (default: float16, half the size).")
@click.option("--keep-classifier", is_flag=True, help="Keep the identity classifier (not used for features).")
def export_weights_command(checkpoint: Path, out: Path | None, fp32: bool, keep_classifier: bool) -> None:
    """Write a small inference-only copy of a training CHECKPOINT (the weights to ship)."""
    from .backbone import export_backbone
    from .backbones import default_backbone_path

    try:
        info = export_backbone(
            checkpoint, out or default_backbone_path(), half=not fp32, keep_classifier=keep_classifier
        )
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from exc
    click.echo(
        f"wrote {info['path']}: {info['parameters']:,} parameters, {info['bytes'] / 2**20:.1f} MiB "
        f"({'float16' if info['half'] else 'float32'})"
    )


# --------------------------------------------------------------------------- verify / compare


def _images_root(protocol_dir: Path, images_root: Path | None) -> Path:
    if images_root is not None:
        return images_root
    summary = protocol_dir / "protocol.json"
    if summary.is_file():
        recorded = json.loads(summary.read_text(encoding="utf-8")).get("images_root")
        if recorded:
            return Path(recorded)
    raise click.UsageError("--images-root is required (the protocol does not record one)")


def _setup(
    protocol_dir: Path, images_root: Path | None, detector: str, cache_dir: Path | None, jobs: int, quiet: bool
) -> tuple[Any, Any, Any, Path]:
    """Read the protocol, detect (cached) and choose the face boxes."""
    from .aligners import choose_face_boxes
    from .caches import DetectionCache, default_cache_dir
    from .protocol import protocol_boxes, protocol_files, read_protocol

    root = _images_root(protocol_dir, images_root)
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    protocol = read_protocol(protocol_dir)
    detections = DetectionCache(root, detector, cache)
    files = protocol_files(protocol)
    records = detections.ensure(files, jobs=jobs, progress=Progress("detect", not quiet))
    faces = choose_face_boxes(records, protocol_boxes(protocol))
    return protocol, detections, faces, cache


def _run(
    aligner_specs: list[str],
    protocol_dir: Path,
    images_root: Path | None,
    backbone: str | None,
    detector: str,
    cache_dir: Path | None,
    tcnn_weights: Path | None,
    vanilla_weights: Path | None,
    pca_components: int,
    jobs: int,
    threads: int | None,
    quiet: bool,
    betas: tuple[float, ...],
    probe_iod: float | None = None,
) -> tuple[Any, Any, list[Any], Any, dict[str, Any]]:
    """Features and verification of every aligner; the last item describes the condition."""
    from .aligners import DetectorAligner, choose_face_boxes, get_aligner
    from .backbones import load_backbone
    from .caches import DetectionCache
    from .conditions import probe_reduction, reference_landmarks
    from .evaluate import DEFAULT_BETAS, ProbeCondition, probe_files, run_aligner
    from .features import FeatureJob, feature_cache_path, fill_feature_caches
    from .protocol import protocol_files

    _set_threads(threads)
    root = _images_root(protocol_dir, images_root)
    weights = {"tcnn": tcnn_weights, "vanilla": vanilla_weights}
    condition: dict[str, Any] = {}
    try:
        choice = load_backbone(backbone)
        protocol, detections, faces, cache = _setup(protocol_dir, images_root, detector, cache_dir, jobs, quiet)
        aligners = [
            get_aligner(spec, choice.template, images_root=root, weights=weights, cache_dir=cache)
            for spec in aligner_specs
        ]
        files = protocol_files(protocol)
        for aligner in aligners:
            if isinstance(aligner, DetectorAligner):
                aligner.records(files, jobs)
        feature_jobs = [
            FeatureJob(spec, files, faces.boxes, feature_cache_path(cache, a, choice, detections))
            for spec, a in zip(aligner_specs, aligners)
        ]
        probes: list[Any] = [None] * len(aligners)
        if probe_iod is not None:
            probe_list = probe_files(protocol)
            reference = reference_landmarks(
                probe_list, root, faces.boxes, cache, detections.key, Progress("reference landmarks", not quiet)
            )
            reduction = probe_reduction(probe_iod, reference, probe_list)
            probe_detections = DetectionCache(root, detector, cache, reduction)
            records = probe_detections.ensure(probe_list, jobs=jobs, progress=Progress("detect probes", not quiet))
            probe_faces = choose_face_boxes(records, {f: faces.boxes[f] for f in probe_list})
            probe_aligners = [
                get_aligner(
                    spec, choice.template, images_root=root, weights=weights, cache_dir=cache, reduction=reduction
                )
                for spec in aligner_specs
            ]
            for aligner in probe_aligners:
                if isinstance(aligner, DetectorAligner):
                    aligner.records(probe_list, jobs)
            probes = [ProbeCondition(a, probe_faces, probe_detections, reduction) for a in probe_aligners]
            feature_jobs += [
                FeatureJob(
                    spec,
                    probe_list,
                    probe_faces.boxes,
                    feature_cache_path(cache, a, choice, probe_detections),
                    reduction,
                )
                for spec, a in zip(aligner_specs, probe_aligners)
            ]
            condition = {
                "probe_iod": {
                    **reduction.summary(),
                    "reference": reference.key,
                    "probe_face_boxes": probe_faces.counts(),
                }
            }
        if jobs != 1 and len(feature_jobs) > 1:
            fill_feature_caches(feature_jobs, backbone, root, weights, cache, jobs, quiet)
        runs = [
            run_aligner(
                protocol,
                faces,
                a,
                choice,
                detections,
                cache,
                betas or DEFAULT_BETAS,
                pca_components,
                Progress(f"features {a.name}", not quiet),
                probe,
            )
            for a, probe in zip(aligners, probes)
        ]
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise _fail(exc) from exc
    return protocol, faces, runs, choice, condition


def _context(
    protocol: Any, faces: Any, backbone: Any, detector: str, pca_components: int, images_root: Path
) -> dict[str, Any]:
    from .protocol import protocol_sizes

    return {
        "protocol": str(protocol.root),
        "images_root": str(images_root),
        "protocol_sizes": protocol_sizes(protocol),
        "face_boxes": faces.counts(),
        "detector": detector,
        "backbone": backbone.describe(),
        "pca_components_requested": pca_components,
        **({"cross_pose": protocol.summary["cross_pose"]} if (protocol.summary or {}).get("cross_pose") else {}),
    }


def _tar_line(run: Any) -> str:
    from .evaluate import FAR_TARGETS

    mean, std = run.result.tar_mean, run.result.tar_std
    return ", ".join(f"TAR@FAR={far:.0e} {mean[far]:.3f} ± {std[far]:.3f}" for far in FAR_TARGETS)


def _boxes_line(faces: Any) -> str:
    c = faces.counts()
    return (
        f"face boxes: {c['detector']} detected, {c['protocol']} protocol box (no detection), "
        f"{c['image']} whole image (no detection, no protocol box); {c['multiple_faces']} images with "
        f"several faces (largest taken)"
    )


@main.command("verify")
@click.option(
    "--protocol", "protocol_dir", type=click.Path(file_okay=False, exists=True, path_type=Path), required=True
)
@click.option(
    "--images-root",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Root of the protocol's FILE paths [default: recorded in protocol.json].",
)
@click.option("--aligner", "aligner_spec", required=True, help=ALIGNER_HELP)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Writes results.json, roc.json and roc.png.",
)
@_beta_option
@_shared_options
def verify_command(
    protocol_dir: Path,
    images_root: Path | None,
    aligner_spec: str,
    out_dir: Path,
    betas: tuple[float, ...],
    backbone: str | None,
    detector: str,
    cache_dir: Path | None,
    tcnn_weights: Path | None,
    vanilla_weights: Path | None,
    pca_components: int,
    jobs: int,
    threads: int | None,
    quiet: bool,
) -> None:
    """TAR at FAR 1e-3, 1e-2 and 1e-1 (mean ± std over splits) and the ROC of one aligner."""
    from facealign.imageio import write_json

    from .report import plot_rocs

    protocol, faces, runs, choice, _ = _run(
        [aligner_spec],
        protocol_dir,
        images_root,
        backbone,
        detector,
        cache_dir,
        tcnn_weights,
        vanilla_weights,
        pca_components,
        jobs,
        threads,
        quiet,
        betas,
    )
    run = runs[0]
    root = _images_root(protocol_dir, images_root)
    record = {**run.record(), **_context(protocol, faces, choice, detector, pca_components, root)}
    write_json(record, out_dir / "results.json")
    write_json({"aligner": run.aligner, **run.result.roc()}, out_dir / "roc.json")
    plot_rocs({run.aligner: run.result.roc()}, out_dir / "roc.png", title=f"{protocol_dir.name}: {run.aligner}")
    click.echo(f"{run.aligner}: {_tar_line(run)} over {len(protocol.splits)} splits")
    click.echo(_boxes_line(faces))
    if run.manifest_missing:
        click.echo(f"{run.manifest_missing} images had no landmarks in the manifest (box alignment used)")
    if run.detector_missing:
        click.echo(f"{run.detector_missing} images had no {run.aligner} face on the chosen box (box alignment used)")
    click.echo(f"results in {out_dir}")


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]


def _signed(value: float) -> str:
    """``+.012`` style difference."""
    text = f"{value:+.3f}"
    return text.replace("0.", ".", 1)


def _p_text(p: float) -> str:
    return "< .001" if p < 0.001 else f"{p:.3f}".replace("0.", ".", 1)


def _table_markdown(
    runs: list[Any], context: dict[str, Any], betas: tuple[float, ...], pairs: list[Any], n_bootstrap: int
) -> str:
    from .evaluate import FAR_TARGETS
    from .report import format_tar
    from .statistics import SIGNIFICANCE_LEVEL

    names = [r.aligner for r in runs]
    backbone = context["backbone"]
    probe = context.get("probe_iod")
    cross_pose = context.get("cross_pose")
    title = f"# Verification: {Path(context['protocol']).name}, backbone {backbone['name']}"
    if probe:
        title += f", probes at {probe['target_iod']:g} px between the eyes"
    lines = [
        title,
        "",
        "Same recognition pipeline, different alignments (paper, Table 2). "
        f"TAR at FAR, mean ± std over {context['protocol_sizes']['splits']} splits; best in bold.",
        "",
    ]
    if probe:
        boxes = probe["probe_face_boxes"]
        lines += [
            f"Condition: low-resolution probes. Every test image is reduced so that its face's inter-ocular "
            f"distance (dlib-ert's eye centres at full resolution) is about {probe['target_iod']:g} px "
            f"({probe['reduced']} of {probe['images']} images reduced, median factor "
            f"{probe['median_factor']:.3f}; {probe['already_small']} already that small); detection and alignment "
            f"run on the reduced image, the PCA training images are not reduced. Faces on the reduced images: "
            f"{boxes['detector']} detected, {boxes['protocol']} not found there (the full-resolution box is used).",
            "",
        ]
    if cross_pose:
        lines += [
            f"Condition: cross-pose protocol. Genuine and impostor comparisons are between templates in "
            f"different yaw bins ({', '.join(cross_pose['bin_labels'])} degrees of |yaw|, estimated from "
            f"{cross_pose['reference']}'s landmarks).",
            "",
        ]
    for warning in context.get("warnings", []):
        lines += [f"**Warning**: {warning}.", ""]
    lines += [
        "| TAR @ | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for far in FAR_TARGETS:
        best = max(r.result.tar_mean[far] for r in runs)
        cells = [format_tar(r.result.tar_mean[far], r.result.tar_std[far]) for r in runs]
        cells = [f"**{c}**" if r.result.tar_mean[far] == best and len(runs) > 1 else c for c, r in zip(cells, runs)]
        lines.append(f"| FAR={far:.0e} | " + " | ".join(cells) + " |")
    if pairs:
        ci = f"95% CI over {n_bootstrap} resamples of the test subjects" if n_bootstrap else "no subject bootstrap"
        lines += [
            "",
            f"Paired differences (first minus second aligner, per split): mean ± std, two-sided sign-flip "
            f"permutation p (exact over the splits' sign patterns) and Wilcoxon signed-rank p, {ci}. "
            f"`*`: sign-flip p < {SIGNIFICANCE_LEVEL:g} (uncorrected for the {len(pairs)} tests).",
            "",
            "| pair | FAR | difference | p sign-flip | p Wilcoxon | 95% CI |",
            "|---|---|---|---|---|---|",
        ]
        for pair in pairs:
            mark = " *" if pair.significant else ""
            interval = f"[{_signed(pair.ci_low)}, {_signed(pair.ci_high)}]" if n_bootstrap else "-"
            lines.append(
                f"| {pair.a} - {pair.b} | {pair.far:.0e} | {_signed(pair.mean)} ± "
                f"{_signed(pair.std)[1:]}{mark} | {_p_text(pair.p_sign_flip)} | "
                f"{_p_text(pair.p_wilcoxon)} | {interval} |"
            )
    sizes = context["protocol_sizes"]["mean"]
    boxes = context["face_boxes"]
    lines += [
        "",
        "Protocol (per split, mean over splits): "
        f"{sizes['train_subjects']:.0f} training subjects / {sizes['train_images']:.0f} images (PCA only); "
        f"{sizes['test_subjects']:.0f} test subjects, {sizes['test_images']:.0f} images in "
        f"{sizes['test_templates']:.0f} templates; {sizes['genuine']:.0f} genuine and "
        f"{sizes['impostor']:.0f} impostor comparisons. {context['protocol_sizes']['images']} images in all.",
        "",
        f"Face boxes ({context['detector']}, shared by all aligners): {boxes['detector']} detected, "
        f"{boxes['protocol']} from the protocol box, {boxes['image']} whole image (no detection); "
        f"{boxes['multiple_faces']} images with several faces (largest taken).",
        "",
        f"Backbone: {backbone['name']}, {backbone['path']} (sha1 {backbone['sha1']}), crops on the "
        f"'{backbone['template']}' template at {backbone['input_size']} px; power normalisation, "
        f"PCA ({context['pca_components_requested']} requested, capped by the training images and the feature "
        f"dimension), Pearson, SoftMax fusion averaged over beta = {', '.join(f'{b:g}' for b in betas)}.",
    ]
    missing = [f"{r.aligner}: {r.manifest_missing}" for r in runs if r.manifest_missing]
    if missing:
        lines += ["", "Images without manifest landmarks (box alignment used): " + "; ".join(missing) + "."]
    found = [
        f"{r.aligner}: {r.detector_missing}" + (f" (probes: {r.probe_detector_missing})" if probe else "")
        for r in runs
        if r.detector_missing or r.probe_detector_missing
    ]
    if found:
        lines += [
            "",
            "Images where the aligner's detector found no face on the chosen box (box alignment used): "
            + "; ".join(found)
            + ".",
        ]
    return "\n".join(lines) + "\n"


def _paired_statistics(runs: list[Any], n_bootstrap: int, seed: int, quiet: bool) -> list[Any]:
    """Every pair of aligners compared at every FAR (:func:`recognition.statistics.compare_pairs`)."""
    from .evaluate import FAR_TARGETS
    from .statistics import compare_pairs, subject_bootstrap

    if len(runs) < 2:
        return []
    tars = {r.aligner: {far: [s.tar[far] for s in r.result.splits] for far in FAR_TARGETS} for r in runs}
    bootstrap = None
    if n_bootstrap:
        splits = [s.comparisons for s in runs[0].result.splits]
        scores = {r.aligner: [s.scores for s in r.result.splits] for r in runs}
        bootstrap = subject_bootstrap(
            splits,
            scores,
            FAR_TARGETS,
            n_bootstrap,
            seed,
            Progress(f"subject bootstrap ({len(splits)} splits)", not quiet),
        )
    return compare_pairs(tars, bootstrap, FAR_TARGETS)


def _size_warnings(context: dict[str, Any]) -> list[str]:
    """Where the protocol is too small for a FAR reported: fewer impostor comparisons per split than 10 / FAR."""
    from .evaluate import FAR_TARGETS

    impostors = context["protocol_sizes"]["mean"]["impostor"]
    short = [far for far in FAR_TARGETS if impostors < 10 / far]
    if not short:
        return []
    fars = ", ".join(f"{far:.0e}" for far in short)
    return [
        f"{impostors:.0f} impostor comparisons per split: TAR at FAR {fars} rests on fewer than 10 impostor "
        f"scores (needs >= {10 / min(short):.0f}); read it as indicative only"
    ]


@main.command("compare-aligners")
@click.option(
    "--protocol", "protocol_dir", type=click.Path(file_okay=False, exists=True, path_type=Path), required=True
)
@click.option(
    "--images-root",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Root of the protocol's FILE paths [default: recorded in protocol.json].",
)
@click.option(
    "--aligners", default="tcnn,vanilla,box", show_default=True, help="Comma-separated aligners: " + ALIGNER_HELP
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Writes table.md, table.json, pairs.json, roc.json, roc.png and one folder per aligner.",
)
@click.option(
    "--bootstrap",
    "n_bootstrap",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Resamples of the test subjects for the confidence intervals of differences (0: none).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
@click.option(
    "--probe-iod",
    type=click.FloatRange(min=2),
    default=None,
    help="Low-resolution probes: reduce every test image so that its face's inter-ocular distance "
    "(dlib-ert's eye centres at full resolution) is about this many pixels; detection and alignment "
    "run on the reduced image, the PCA training images stay as they are.",
)
@_beta_option
@_shared_options
def compare_aligners_command(
    protocol_dir: Path,
    images_root: Path | None,
    aligners: str,
    out_dir: Path,
    n_bootstrap: int,
    seed: int,
    probe_iod: float | None,
    betas: tuple[float, ...],
    backbone: str | None,
    detector: str,
    cache_dir: Path | None,
    tcnn_weights: Path | None,
    vanilla_weights: Path | None,
    pca_components: int,
    jobs: int,
    threads: int | None,
    quiet: bool,
) -> None:
    """Run the same protocol for several aligners; write a Table 2 style table with paired statistics."""
    require_extra("sklearn", "scipy", "matplotlib")
    from facealign.imageio import write_json

    from .evaluate import DEFAULT_BETAS
    from .report import plot_rocs

    specs = [s.strip() for s in aligners.split(",") if s.strip()]
    if not specs:
        raise click.UsageError("--aligners is empty")
    if len(set(specs)) != len(specs):
        raise click.UsageError(f"--aligners lists an aligner twice: {specs}")
    protocol, faces, runs, choice, condition = _run(
        specs,
        protocol_dir,
        images_root,
        backbone,
        detector,
        cache_dir,
        tcnn_weights,
        vanilla_weights,
        pca_components,
        jobs,
        threads,
        quiet,
        betas,
        probe_iod,
    )
    root = _images_root(protocol_dir, images_root)
    context = {**_context(protocol, faces, choice, detector, pca_components, root), **condition}
    warnings = _size_warnings(context)
    if warnings:
        context["warnings"] = warnings
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    used_betas = betas or DEFAULT_BETAS
    pairs = _paired_statistics(runs, n_bootstrap, seed, quiet)
    for run in runs:
        folder = out_dir / _safe_name(run.aligner)
        write_json({**run.record(), **context}, folder / "results.json")
        write_json({"aligner": run.aligner, **run.result.roc()}, folder / "roc.json")
    write_json({"aligners": [r.record() for r in runs], **context}, out_dir / "table.json")
    pairs_record = {"bootstrap_resamples": n_bootstrap, "seed": seed, "pairs": [p.to_json() for p in pairs]}
    write_json(pairs_record, out_dir / "pairs.json")
    write_json({r.aligner: r.result.roc() for r in runs}, out_dir / "roc.json")
    plot_rocs(
        {r.aligner: r.result.roc() for r in runs}, out_dir / "roc.png", title=f"{protocol_dir.name}, {choice.name}"
    )
    table = _table_markdown(runs, context, tuple(used_betas), pairs, n_bootstrap)
    (out_dir / "table.md").write_text(table, encoding="utf-8")
    click.echo(table)


# --------------------------------------------------------------------------- lfw-accuracy


@main.command("lfw-accuracy")
@click.option("--aligner", "aligner_spec", required=True, help=ALIGNER_HELP)
@click.option(
    "--lfw-root",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Folder holding lfw-deepfunneled/ and pairs.txt [default: ../shared/datasets/lfw].",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write lfw_accuracy.json here.",
)
@_shared_options
def lfw_accuracy_command(
    aligner_spec: str,
    lfw_root: Path | None,
    out_dir: Path | None,
    backbone: str | None,
    detector: str,
    cache_dir: Path | None,
    tcnn_weights: Path | None,
    vanilla_weights: Path | None,
    pca_components: int,
    jobs: int,
    threads: int | None,
    quiet: bool,
) -> None:
    """LFW View 2 10-fold accuracy (secondary figure).

    Not independent of training when the backbone was trained on prepare-lfw crops:
    those identities include the people of pairs.txt.
    """
    from facealign.imageio import write_json

    from .aligners import choose_face_boxes, get_aligner
    from .backbones import load_backbone
    from .caches import DetectionCache, default_cache_dir
    from .features import extract_features, feature_cache_path
    from .lfw import default_lfw_root, lfw_accuracy
    from .metrics import read_lfw_pairs

    _set_threads(threads)
    root = lfw_root or default_lfw_root()
    pairs_path = root / "pairs.txt"
    try:
        choice = load_backbone(backbone)
        aligner = get_aligner(
            aligner_spec, choice.template, images_root=root, weights={"tcnn": tcnn_weights, "vanilla": vanilla_weights}
        )
        cache = cache_dir if cache_dir is not None else default_cache_dir()
        detections = DetectionCache(root, detector, cache)
        files = sorted({p for pair in read_lfw_pairs(pairs_path) for p in (pair.path1, pair.path2)})
        faces = choose_face_boxes(detections.ensure(files, jobs=jobs, progress=Progress("detect", not quiet)))
        table = extract_features(
            files,
            root,
            faces.boxes,
            aligner,
            choice.network,
            feature_cache_path(cache, aligner, choice, detections),
            Progress(f"features {aligner.name}", not quiet),
        )
        accuracy, info = lfw_accuracy(table.rows, pairs_path, pca_components)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise _fail(exc) from exc
    click.echo(
        f"LFW View 2 ({info['pairs']} pairs, 10 folds), aligner {aligner.name}: "
        f"accuracy {accuracy.mean:.4f} ± {accuracy.std:.4f}"
    )
    click.echo(_boxes_line(faces))
    click.echo(
        "caveat: not an independent figure if the backbone was trained on LFW identities "
        "(recognition prepare-lfw includes the pairs.txt people)"
    )
    if out_dir is not None:
        write_json(
            {
                "aligner": aligner.name,
                "key": aligner.key,
                "mean": accuracy.mean,
                "std": accuracy.std,
                "folds": accuracy.accuracies.tolist(),
                "thresholds": accuracy.thresholds.tolist(),
                **info,
                "face_boxes": faces.counts(),
                "backbone": choice.describe(),
                "caveat": "backbone trained on LFW identities that include the pairs.txt people: not independent",
            },
            out_dir / "lfw_accuracy.json",
        )


if __name__ == "__main__":  # pragma: no cover
    main()
