"""The ``facealign`` command line.

Commands defined here: ``crop`` (batch alignment, :mod:`facealign.batch`),
``landmarks``, and ``draw`` and ``sheet`` (pictures to check the work,
:mod:`facealign.drawing`): the run time, which needs no extra. The research commands
(``train``, ``tweak``, ``evaluate``, ``analyze``, ``fit-quality``, ...: see
:data:`RESEARCH_COMMANDS`) live in their own modules and need the ``train`` extra
(scikit-learn, SciPy, matplotlib). They are imported only when that extra is
installed and the command is run or listed; ``facealign --help`` lists them in a
section of their own, and without the extra says how to install it, and running
one exits 1 with that one line.

Heavy modules (torch, the engines) are imported inside the commands, so
``facealign --help`` stays fast. User errors exit non-zero with a one-line
message (:class:`click.ClickException`).

Exit codes (one scheme for every command; README, "Exit codes"):

* 0: done (images that could not be used are reported, not errors);
* 1: an error the tool found (missing or unusable input, bad settings, records
  of other settings): a one-line ``Error: ...`` on stderr;
* 2: the command line itself is wrong (unknown option, bad value: click);
* 75 (:data:`EXIT_TEMPORARY`, ``EX_TEMPFAIL``): the job stopped on a condition
  that is not the input's fault (disk full, I/O or permission error in OUT_DIR);
  fix it and rerun the same command to continue;
* 130 / 143: interrupted by SIGINT (Ctrl-C) / SIGTERM; rerun to continue.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import __version__
from .constants import BUILTIN_DETECTORS, DEFAULT_DETECTOR, ENGINES
from .progress import Progress, show_logs

if TYPE_CHECKING:
    from .batch.executor import ChunkExecutor

ENGINE_CHOICES = ENGINES
#: Images per landmark-network batch in ``facealign landmarks``.
LANDMARKS_CHUNK = 64
#: Exit code of a job stopped by a temporary condition (sysexits ``EX_TEMPFAIL``).
EXIT_TEMPORARY = 75


class _TemporaryFailure(click.ClickException):
    """A one-line error with exit code :data:`EXIT_TEMPORARY`."""

    exit_code = EXIT_TEMPORARY


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _jobs_type(value: str | int) -> int | str:
    """``--jobs``: a number of processes, ``auto`` or -1 (all cores)."""
    if value == "auto":
        return value
    try:
        jobs = int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number of processes, 'auto' or -1") from None
    if jobs < 1 and jobs != -1:
        raise click.BadParameter(f"{jobs} is not a number of processes: give 1 or more, 'auto' or -1 (all cores)")
    return jobs


#: The largest ``--size`` (crop side, pixels): a 2048 x 2048 crop is 12 MB of RGB per face.
MAX_CROP_SIZE = 2048


def _check_template(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``--template``: a built-in name or a readable template JSON file (a usage error otherwise)."""
    from .alignment import get_template

    try:
        get_template(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


class _LocalPath(click.Path):
    """A :class:`click.Path` that refuses URLs (which ``Path`` would mangle into ``https:/...``):
    facealign reads local files only."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from .imageio import is_url

        if isinstance(value, str) and is_url(value):
            self.fail(f"{value!r} is a URL; facealign reads local files only: download it first", param, ctx)
        return super().convert(value, param, ctx)


#: The research commands: name -> (module, attribute). They need the ``train`` extra,
#: and their modules are imported only when one is listed or run with it installed.
RESEARCH_COMMANDS: dict[str, tuple[str, str]] = {
    "analyze": ("facealign.research.analysis.command", "analyze"),
    "evaluate": ("facealign.research.model_cli", "evaluate_command"),
    "evaluate-quality": ("facealign.research.model_cli", "evaluate_quality_command"),
    "export-engine": ("facealign.research.model_cli", "export_engine_command"),
    "fit-box-maps": ("facealign.research.model_cli", "fit_box_maps_command"),
    "fit-quality": ("facealign.research.model_cli", "fit_quality_command"),
    "sweep-k": ("facealign.research.model_cli", "sweep_k_command"),
    "train": ("facealign.research.model_cli", "train_command"),
    "train-compact": ("facealign.research.model_cli", "train_compact_command"),
    "train-hard": ("facealign.research.model_cli", "train_hard_command"),
    "tweak": ("facealign.research.model_cli", "tweak_command"),
}


def _needs_train_extra(name: str, missing: list[str]) -> click.Command:
    """A stand-in for research command ``name`` when the ``train`` extra is missing: one line, exit 1."""
    from .extras import TRAIN_INSTALL_HINT

    message = f"'facealign {name}' needs the train extra ({', '.join(missing)} not installed): {TRAIN_INSTALL_HINT}"

    def fail() -> None:
        raise click.ClickException(message)

    return click.Command(
        name,
        callback=fail,
        help=message,
        short_help="(not installed: needs the train extra)",
        add_help_option=False,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )


class _Commands(click.Group):
    """The run-time commands, plus the research commands of :data:`RESEARCH_COMMANDS`, loaded lazily."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *RESEARCH_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in RESEARCH_COMMANDS:
            return super().get_command(ctx, cmd_name)
        from .extras import missing_train_modules

        missing = missing_train_modules()
        if missing:
            return _needs_train_extra(cmd_name, missing)
        module, attribute = RESEARCH_COMMANDS[cmd_name]
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from .extras import TRAIN_INSTALL_HINT, missing_train_modules

        runtime = [name for name in super().list_commands(ctx) if name not in RESEARCH_COMMANDS]
        sections = [("Commands", runtime)]
        heading = "Research commands"
        if missing_train_modules():
            heading += f" (need the train extra: {TRAIN_INSTALL_HINT})"
        sections.append((heading, sorted(RESEARCH_COMMANDS)))
        limit = formatter.width - 6 - max(len(name) for name in self.list_commands(ctx))
        for heading, names in sections:
            rows = []
            for name in names:
                command = self.get_command(ctx, name)
                if command is not None and not command.hidden:
                    rows.append((name, command.get_short_help_str(limit)))
            if rows:
                with formatter.section(heading):
                    formatter.write_dl(rows)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="facealign", message="%(prog)s %(version)s")
def main() -> None:
    """Face detection, five TCNN landmarks and aligned face crops."""
    show_logs()


def _check_detector(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from .detection import available_detectors

    names = available_detectors()
    if value not in names:
        raise click.BadParameter(f"{value!r} is not a detector; choose one of {', '.join(names)}")
    return value


def _check_finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number")
    return value


def _detector_option(f):
    """``--detector NAME`` (built-in, registered or entry-point plug-in), ``--min-face PX`` and
    ``--det-threshold S``."""
    f = click.option(
        "--det-threshold",
        type=float,
        default=None,
        callback=_check_finite,
        help="Detector score a face needs, on the detector's scale (retinaface 0-1, libfacedetection 0-100); "
        "faces scoring less are dropped [default: the detector's own rule: 0.9 for retinaface, and the best "
        "face above 0.5 when none reaches it].",
    )(f)
    f = click.option(
        "--min-face",
        type=click.FloatRange(min=1, min_open=False),
        default=None,
        help="Smallest face to look for, in pixels of the photo [default for retinaface and "
        "libfacedetection: a 32nd of the photo's longer side, at least 20 and at most 80 px (a face "
        "on the 112 px crop); dlib and haar have their own fixed search].",
    )(f)
    return click.option(
        "--detector",
        default=DEFAULT_DETECTOR,
        show_default=True,
        callback=_check_detector,
        help=f"Face detector: {', '.join(BUILTIN_DETECTORS)}, or a plug-in from the "
        "'facealign.detectors' entry-point group.",
    )(f)


def _providers_option(f):
    """``--providers NAMES`` (or ``FACEALIGN_PROVIDERS``): onnxruntime execution providers."""
    return click.option(
        "--providers",
        envvar="FACEALIGN_PROVIDERS",
        default=None,
        metavar="NAMES",
        callback=_check_providers,
        help="onnxruntime execution providers, comma-separated, most preferred first: cuda, tensorrt, coreml, "
        "openvino, directml, rocm (the CPU is always the fallback; a provider this onnxruntime lacks is skipped "
        "with a warning). For CUDA: pip install onnxruntime-gpu in place of onnxruntime. [env: FACEALIGN_PROVIDERS; "
        "default: the CPU]",
    )(f)


def _check_providers(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    """The providers of ``--providers`` that this onnxruntime has (None when not given); a
    usage error for an unknown name, one warning line for those missing (none with ``--quiet``)."""
    from .inference import available_providers, missing_providers_message, resolve_providers

    if not value or not value.strip():
        return None
    try:
        wanted = resolve_providers(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    message = missing_providers_message(wanted)
    if message is not None and not ctx.params.get("quiet"):  # --quiet is eager: read already
        click.echo(f"warning: {message}", err=True)
    available = set(available_providers())
    return tuple(name for name in wanted if name in available)


def _jobs_option(help_text: str):
    """``-j, --jobs N|auto`` (:func:`_jobs_type`), default ``auto``, with ``help_text``."""
    return click.option(
        "--jobs", "-j", type=_jobs_type, metavar="N|auto", default="auto", show_default=True, help=help_text
    )


def _engine_option(f):
    return click.option(
        "--engine",
        type=click.Choice(ENGINE_CHOICES),
        default="tcnn",
        show_default=True,
        help="Landmark network.",
    )(f)


@main.command()
@click.argument("in_dir", type=_LocalPath(file_okay=False, path_type=Path))
@click.argument("out_dir", type=_LocalPath(path_type=Path))
@_detector_option
@_engine_option
@_providers_option
@click.option(
    "--template",
    default="arcface",
    show_default=True,
    callback=_check_template,
    help="Alignment template: 'arcface', 'loose', or a JSON file {\"size\": [w, h], \"points\": [[x, y] x 5]}.",
)
@click.option(
    "--size",
    type=click.IntRange(min=8, max=MAX_CROP_SIZE),
    default=None,
    help=f"Crop side in pixels, 8 to {MAX_CROP_SIZE} [default: the template's, 112 for arcface].",
)
@click.option("--largest-only", is_flag=True, help="Crop only the largest face of each image.")
@_jobs_option(
    "Worker processes: a number, -1 for all cores, or 'auto' (one per "
    "100 images to process, at most one per core; small jobs run in one process). "
    "The processes share the cores: each detects as many images at a time as it has cores, "
    "in threads (with RetinaFace, the default)."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jpg", "png"]),
    default=None,
    help="Crop file format [default: jpg for JPEG sources, png otherwise].",
)
@click.option(
    "--manifest-format",
    type=click.Choice(["jsonl", "csv"]),
    default="jsonl",
    show_default=True,
    help="Format of OUT_DIR/manifest.*.",
)
@click.option(
    "--overwrite", is_flag=True, help="Discard earlier results in OUT_DIR and redo every image (default: resume)."
)
@click.option(
    "--prune",
    is_flag=True,
    help="Drop the records and crops of sources no longer in IN_DIR (default: keep them and count them as missing).",
)
@click.option(
    "--cluster",
    metavar="ADDRESS",
    default=None,
    help="Run on a Dask cluster instead of local processes (--jobs is then ignored): a scheduler address "
    "(tcp://host:8786, or a scheduler file *.json), or local[:N] for N worker processes on this machine. "
    "IN_DIR and OUT_DIR must be at the same paths on every worker. Needs pip install 'facealign[dask]'.",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(min=1),
    default=None,
    help="Images per task [default: 32 with --jobs, 256 with --cluster].",
)
@click.option(
    "--quiet",
    "--silent",
    "-q",
    "quiet",
    is_flag=True,
    is_eager=True,  # read before --providers, whose missing-provider warning it silences
    help="No progress bar, summary or warnings; only errors.",
)
@click.option(
    "--max-expected-error",
    type=click.FloatRange(min=0),
    default=None,
    help="Do not crop faces whose expected landmark error (% of the inter-ocular distance) is above this; "
    "they are listed in failures.jsonl as 'low quality'.",
)
@click.option(
    "--max-p-fail",
    type=click.FloatRange(min=0, max=1),
    default=None,
    help="Do not crop faces whose probability of a landmark error above 10% is above this ('low quality').",
)
def crop(
    in_dir: Path,
    out_dir: Path,
    detector: str,
    min_face: float | None,
    engine: str,
    template: str,
    size: int | None,
    largest_only: bool,
    jobs: int | str,
    fmt: str | None,
    manifest_format: str,
    overwrite: bool,
    prune: bool,
    cluster: str | None,
    chunk_size: int | None,
    quiet: bool,
    max_expected_error: float | None,
    max_p_fail: float | None,
    det_threshold: float | None,
    providers: tuple[str, ...] | None,
) -> None:
    """Align every face of every image under IN_DIR into OUT_DIR.

    Sub-folders are mirrored: face k (largest first) of IN_DIR/a/photo.jpg becomes
    OUT_DIR/a/photo_k.jpg. OUT_DIR/manifest.jsonl lists every crop with its box,
    score, five landmarks and source-to-crop transform in original-image pixels;
    OUT_DIR/failures.jsonl lists the images that gave no crop and why. A rerun
    skips the images already recorded, so an interrupted job resumes; sources gone
    from IN_DIR keep their records and crops unless --prune. Each crop's
    expected_error (% IOD) and p_fail (probability of an error above 10%) are in
    the manifest; --max-expected-error and --max-p-fail leave such faces out. With
    --cluster the chunks run on Dask workers; the records are the same.

    Exit codes: 0 done; 1 error (message on stderr); 2 bad command line; 75
    stopped by a temporary condition in OUT_DIR (disk full, I/O, permissions):
    fix it and rerun to continue; 130 / 143 interrupted by SIGINT / SIGTERM.
    """
    import contextlib
    import os
    import warnings

    from .batch import CropJobError, CropJobTransientError, run_crop_job

    saved_warnings = os.environ.get("PYTHONWARNINGS"), warnings.filters[:]
    if quiet:  # also in the worker processes, which inherit the environment
        os.environ["PYTHONWARNINGS"] = "ignore"
        warnings.simplefilter("ignore")
    # SIGTERM (timeout, docker stop, Kubernetes, Slurm) unwinds like Ctrl-C: the
    # records are closed, the workers stopped, then the lock released.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if _in_main_thread() else None
    bar = Progress("Cropping", enabled=not quiet)
    try:
        connection: contextlib.AbstractContextManager[Any]
        if cluster is None:
            connection = contextlib.nullcontext(None)
        else:
            from .cluster import connect

            connection = connect(cluster, quiet=quiet)
        with connection as client:
            executor: ChunkExecutor | None = None
            if client is not None:
                from .cluster import DaskExecutor

                executor = DaskExecutor(client)
            summary = run_crop_job(
                in_dir,
                out_dir,
                detector=detector,
                min_face=min_face,
                engine=engine,
                template=template,
                size=size,
                largest_only=largest_only,
                jobs=jobs,
                fmt=fmt,
                overwrite=overwrite,
                prune=prune,
                manifest_format=manifest_format,
                chunk_size=chunk_size,
                progress=bar,
                max_expected_error=max_expected_error,
                max_p_fail=max_p_fail,
                executor=executor,
                det_threshold=det_threshold,
                providers=providers,
            )
    except CropJobTransientError as exc:
        raise _TemporaryFailure(str(exc)) from exc
    except CropJobError as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        bar.close()
        click.echo("interrupted; rerun the same command to continue", err=True)
        raise SystemExit(128 + signal.SIGINT) from None
    except SystemExit as exc:
        if exc.code == 128 + signal.SIGTERM:
            bar.close()
            click.echo("terminated; rerun the same command to continue", err=True)
        raise
    finally:
        bar.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        warnings.filters[:] = saved_warnings[1]  # type: ignore[index]  # a list; typeshed says Sequence
        if saved_warnings[0] is None:
            os.environ.pop("PYTHONWARNINGS", None)
        else:
            os.environ["PYTHONWARNINGS"] = saved_warnings[0]
    if not quiet:
        click.echo(summary.line(), err=True)
        if summary.failures:
            click.echo(f"failures are listed in {summary.failures_file}", err=True)


def _expand(inputs: tuple[Path, ...]) -> list[Path]:
    """Folders become their images (sorted); files are taken as given."""
    from .imageio import find_images

    paths: list[Path] = []
    for item in inputs:
        if item.is_dir():
            paths.extend(find_images(item))
        else:
            paths.append(item)
    return paths


def _with_stdin(inputs: tuple[Path, ...]) -> tuple[Path, ...]:
    """``inputs`` with each ``-`` replaced by the paths read from stdin, one a line (bytes kept:
    names that are not UTF-8 work; empty lines skipped); a URL there is a usage error."""
    from .imageio import is_url

    if not any(str(p) == "-" for p in inputs):
        return inputs
    paths: list[Path] = []
    for item in inputs:
        if str(item) != "-":
            paths.append(item)
            continue
        for line in sys.stdin.buffer:  # bytes (click's get_binary_stream is typed as object since 8.5)
            name = os.fsdecode(line.rstrip(b"\r\n"))
            if not name.strip():
                continue
            if is_url(name):
                raise click.BadParameter(
                    f"{name!r} is a URL; facealign reads local files only: download it first", param_hint="'-' (stdin)"
                )
            paths.append(Path(name))
    return tuple(paths)


def _chunks(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _landmark_chunk(settings: Any, paths: list[Path], largest_only: bool, threads: int) -> list:
    """The landmarked :class:`~facealign.pipeline.ImageFaces` of ``paths``, without their pixels
    (what ``facealign landmarks`` prints), in a worker process: ``threads`` images detected at
    a time (:func:`facealign.batch.worker.worker_threads`), the networks and OpenCV on one
    thread each."""
    from .batch.worker import image_stream

    items = list(image_stream(settings, paths, largest_only, threads))
    for item in items:
        item.image = None
    return items


def _landmarked_here(settings: Any, paths: list[Path], largest_only: bool) -> Iterator[list]:
    """The landmarked images of ``paths`` (as :func:`_landmark_chunk`), :data:`LANDMARKS_CHUNK`
    at a time, in this process: one detection stream, one image per CPU at a time
    (:func:`facealign.batch.worker.detection_threads`), which goes on past the end of a chunk
    (as :func:`facealign.batch.worker._process_chunks_here`)."""
    from .batch.worker import image_stream

    chunk: list = []
    stream = image_stream(settings, paths, largest_only, batch_images=LANDMARKS_CHUNK)
    try:
        for item in stream:
            item.image = None
            chunk.append(item)
            if len(chunk) == LANDMARKS_CHUNK:
                yield chunk
                chunk = []
    finally:  # stopped early: the detection threads stop at once
        stream.close()
    if chunk:
        yield chunk


def _landmarked(settings: Any, paths: list[Path], largest_only: bool, jobs: int | str) -> Iterator[list]:
    """:func:`_landmark_chunk` of each chunk of ``paths``, in order, on ``jobs`` processes
    (as ``crop --jobs``); the results do not depend on the chunks or the processes."""
    from .batch.run import _resolve_jobs

    n_jobs = _resolve_jobs(jobs, len(paths))
    if n_jobs == 1:
        return _landmarked_here(settings, paths, largest_only)
    size = max(1, min(LANDMARKS_CHUNK, -(-len(paths) // (4 * n_jobs))))
    chunks = list(_chunks(paths, size))
    from joblib import Parallel, delayed

    from .batch.worker import worker_threads

    threads = worker_threads(n_jobs)
    run = Parallel(n_jobs=n_jobs, return_as="generator")
    return iter(run(delayed(_landmark_chunk)(settings, chunk, largest_only, threads) for chunk in chunks))


def _format_point(point) -> str:
    return f"({point[0]:.1f}, {point[1]:.1f})"


@main.command()
@click.argument("inputs", metavar="IMAGE_OR_DIR...", nargs=-1, required=True, type=_LocalPath(path_type=Path))
@_detector_option
@_engine_option
@_providers_option
@click.option("--largest-only", is_flag=True, help="Report only the largest face of each image.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image per line.")
@_jobs_option("Worker processes, as for crop; the output is the same, in the same order.")
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    is_eager=True,  # read before --providers (see crop)
    help="No progress bar (shown on a terminal's stderr) and no missing-provider warning.",
)
def landmarks(
    inputs: tuple[Path, ...],
    detector: str,
    min_face: float | None,
    det_threshold: float | None,
    engine: str,
    providers: tuple[str, ...] | None,
    largest_only: bool,
    as_json: bool,
    jobs: int | str,
    quiet: bool,
) -> None:
    """Print face boxes, scores and five landmarks for images or folders of images.

    Coordinates are pixels of the original image (EXIF orientation applied);
    points are in MTFL order: image-left eye, image-right eye, nose, image-left
    and image-right mouth corners. With --json each line is
    {"image": PATH, "faces": [{"box": [x1, y1, x2, y2], "score": S, "landmarks": [[x, y] x 5],
    "expected_error": E, "p_fail": P}]}, or {"image": PATH, "error": MESSAGE} for an unreadable
    image. expected_error is the expected landmark error in % of the inter-ocular distance, p_fail
    the probability that it exceeds 10% (null when the weights carry no quality model);
    "warnings" lists the decoder's warnings, if any, and "image_b64" the exact bytes of a
    file name that is not valid UTF-8 (PATH then shows such bytes as %XX).

    '-' reads the paths from stdin, one a line (e.g. find photos -name '*.jpg' |
    facealign landmarks -); a file named '-' is './-'. URLs are refused (exit 2):
    facealign reads local files only.

    Exit codes: 0 done; 1 a missing input (before any work), or an image given by
    name (argument or stdin) that could not be read, after all the others were
    printed (unreadable images found in a folder are printed with their error
    but do not change the exit code, as in crop); 2 bad command line.
    """
    from .batch import CropJobError, CropSettings, get_aligner
    from .imageio import portable_name, raw_name_b64

    inputs = _with_stdin(inputs)
    if not inputs:
        raise click.ClickException("no paths given: stdin was empty")
    missing = [str(p) for p in inputs if not p.exists() and not p.is_symlink()]
    if missing:
        raise click.ClickException("no such file or folder: " + ", ".join(portable_name(m) for m in missing))
    settings = CropSettings(
        detector=detector, engine=engine, min_face=min_face, det_threshold=det_threshold, providers=providers
    )
    try:
        get_aligner(settings)  # a bad setting fails here, once
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    paths = _expand(inputs)
    given = {p for p in inputs if not p.is_dir()}
    unreadable: list[str] = []
    try:
        results = _landmarked(settings, paths, largest_only, jobs)
    except CropJobError as exc:
        raise click.ClickException(str(exc)) from exc
    done = 0
    # stdout is the output: a bar on a terminal, and no progress lines in a log
    with Progress("landmarks", enabled=not quiet and sys.stderr.isatty()) as progress:
        for chunk_items in results:
            done += len(chunk_items)
            progress(done, len(paths))
            for item in chunk_items:
                name = portable_name(str(item.path))
                # A name that is not UTF-8 is printed with %XX bytes; JSON adds the exact bytes.
                record: dict = {"image": name}
                raw = raw_name_b64(str(item.path))
                if raw is not None:
                    record["image_b64"] = raw
                if item.warnings:
                    record["warnings"] = item.warnings
                if item.error is not None:
                    if item.path in given:
                        unreadable.append(name)
                    if as_json:
                        click.echo(json.dumps({**record, "error": item.error}))
                    else:
                        click.echo(f"{name}\terror: {item.error}")
                    continue
                faces = item.faces()
                if as_json:
                    click.echo(json.dumps({**record, "faces": [f.to_json() for f in faces]}))
                elif not faces:
                    click.echo(f"{name}\tno face found")
                else:
                    for k, face in enumerate(faces):
                        box = ", ".join(f"{v:.1f}" for v in face.box)
                        points = " ".join(_format_point(p) for p in face.landmarks)
                        click.echo(
                            f"{name}\tface {k}\tscore {face.score:.3f}\tbox ({box})\tlandmarks {points}"
                            f"\texpected error {face.expected_error:.1f}%\tp_fail {face.p_fail:.3f}"
                        )
    if not paths:
        raise click.ClickException("no images found in " + ", ".join(str(p) for p in inputs))
    if unreadable:
        shown = ", ".join(unreadable[:5]) + (", ..." if len(unreadable) > 5 else "")
        raise click.ClickException(f"{len(unreadable)} of the images given could not be read: {shown}")


#: Extensions ``facealign draw`` keeps for its pictures; other sources give ``.png``.
_DRAW_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _draw_targets(name: str, out: Path) -> list[tuple[Path, Path]]:
    """(photo, picture) pairs of ``facealign draw IN OUT``; a usage error for what cannot be."""
    from .imageio import find_images

    source = Path(name)
    if not source.exists():
        raise click.BadParameter(f"no such file or folder: {str(source)!r}", param_hint="IN")
    if source.is_dir():
        root, out_root = source.resolve(), out.resolve()
        if out_root == root or out_root.is_relative_to(root):
            raise click.BadParameter("OUT must not be IN or lie inside it", param_hint="OUT")
        if out.exists() and not out.is_dir():
            raise click.BadParameter(f"{str(out)!r} is a file; IN is a folder, so OUT must be one", param_hint="OUT")
        pairs = []
        for photo in find_images(source):
            target = out / photo.relative_to(source)
            if target.suffix.lower() not in _DRAW_EXTENSIONS:
                target = target.with_name(target.name + ".png")
            pairs.append((photo, target))
        return pairs
    target = out / source.name if out.is_dir() else out
    if target.suffix.lower() not in _DRAW_EXTENSIONS:
        raise click.BadParameter(
            f"cannot write {target.suffix or 'a file without extension'}; name OUT .jpg, .png, .webp, .bmp or .tif",
            param_hint="OUT",
        )
    if target.resolve() == source.resolve():
        raise click.BadParameter("OUT is IN: the photo would be overwritten", param_hint="OUT")
    return [(source, target)]


@main.command()
@click.argument("source", metavar="IN", type=_LocalPath(path_type=str))
@click.argument("out", metavar="OUT", type=_LocalPath(path_type=Path))
@_detector_option
@_engine_option
@_providers_option
@click.option("--largest-only", is_flag=True, help="Draw only the largest face of each image.")
@click.option("--no-labels", is_flag=True, help="No 'k: p_fail P' label above each box.")
def draw(
    source: str,
    out: Path,
    detector: str,
    min_face: float | None,
    det_threshold: float | None,
    engine: str,
    providers: tuple[str, ...] | None,
    largest_only: bool,
    no_labels: bool,
) -> None:
    """Draw each face's box, five landmarks and quality colour on photos, to check a run.

    IN is a photo or a folder of photos; OUT a picture (or a folder to put it in)
    for a photo, a folder for a folder (sub-folders mirrored, names kept; a
    format facealign does not write becomes .png). Colours follow p_fail, the
    probability that a face's landmark error exceeds 10% of the eye distance:
    green up to 0.1, orange up to 0.5, red above (what 'crop --max-p-fail 0.5'
    leaves out), grey when unknown. A photo is drawn at the resolution its
    detector works at (full size for retinaface and libfacedetection).

    Exit codes: 0 done; 1 a photo named as IN could not be read (unreadable
    photos found in a folder are reported on stderr); 2 bad command line.
    """
    import numpy as np

    from .batch import CropSettings, get_aligner
    from .drawing import draw_faces
    from .imageio import portable_name, write_image_atomic
    from .pipeline import Face, iter_image_faces

    pairs = _draw_targets(source, out)
    folder = Path(source).is_dir()
    try:
        aligner = get_aligner(
            CropSettings(
                detector=detector, engine=engine, min_face=min_face, det_threshold=det_threshold, providers=providers
            )
        )
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise click.ClickException(str(exc)) from exc
    targets = dict(pairs)
    failed = drawn = 0
    for item in iter_image_faces(aligner, [photo for photo, _ in pairs], largest_only=largest_only):
        if item.error is not None or item.image is None:
            failed += 1
            click.echo(f"{portable_name(str(item.path))}\terror: {item.error}", err=True)
            continue
        faces = [  # in pixels of the working image, which is what is drawn
            Face(box, float(score), points, p_fail=float(p_fail))
            for box, score, points, p_fail in zip(
                item.boxes, item.scores, item.landmarks, item.quality.get("p_fail", np.full(len(item.boxes), np.nan))
            )
        ]
        target = targets[item.path]
        target.parent.mkdir(parents=True, exist_ok=True)
        write_image_atomic(target, draw_faces(item.image, faces, labels=not no_labels))
        drawn += 1
    if folder:
        click.echo(f"{drawn} pictures written to {out}" + (f"; {failed} photos unreadable" if failed else ""), err=True)
    elif failed:
        raise click.ClickException(f"cannot read {str(source)!r}")


@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--per-page", type=click.IntRange(min=1, max=1000), default=48, show_default=True,
              help="Crops a page.")  # fmt: skip
@click.option("--columns", type=click.IntRange(min=1, max=100), default=8, show_default=True, help="Crops a row.")
@click.option("--tile", type=click.IntRange(min=32, max=512), default=112, show_default=True,
              help="Side of each crop on the page, in pixels.")  # fmt: skip
@click.option("--html/--no-html", default=True, show_default=True, help="Write OUT_DIR/sheet.html beside the pages.")
def sheet(out_dir: Path, per_page: int, columns: int, tile: int, html: bool) -> None:
    """Contact sheet of a crop job's crops, the most doubtful first.

    Reads OUT_DIR's manifest and writes OUT_DIR/sheet-001.png, ... (PER_PAGE
    crops each, sorted by p_fail, highest first) and OUT_DIR/sheet.html, which
    shows the pages and lists and links their crops. Each crop is framed in its
    quality colour (red: p_fail above 0.5, orange: above 0.1, green, grey:
    unknown) and captioned with p_fail, the detector's score and its file name.
    Rerunning rewrites the sheet.
    """
    from .drawing import write_contact_sheet

    try:
        written, missing = write_contact_sheet(out_dir, per_page=per_page, columns=columns, tile=tile, html=html)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    pages = [p for p in written if p.suffix == ".png"]
    click.echo(
        f"{len(pages)} pages written" + (f", see {written[-1]}" if html else "")
        + (f"; {missing} crops of the manifest have no file" if missing else ""),
        err=True,
    )  # fmt: skip


if __name__ == "__main__":  # pragma: no cover
    main()
