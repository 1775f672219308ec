"""The ``facealign crop`` batch job: every face of every image in a folder, aligned.

Layout
------
``IN_DIR`` is walked recursively (:func:`facealign.imageio.scan_folder`) and its
sub-folders are mirrored in ``OUT_DIR``: face ``k`` (``k`` from 0, largest face
first) of ``IN_DIR/a/b/photo.jpg`` becomes ``OUT_DIR/a/b/photo_<k>.<ext>``. When
two sources of one folder would share output names (``photo.jpg`` and
``photo.png`` with ``--format png``, or ``photo.jpg`` and ``photo.jpeg``) their
crops are named ``photo.jpg_<k>.<ext>`` and ``photo.png_<k>.<ext>`` instead.
Output names are valid UTF-8: a byte of a source name that is not UTF-8 is
written ``%XX`` (:func:`facealign.imageio.portable_name`).

Two append-only record files sit in ``OUT_DIR``:

* ``manifest.jsonl`` (or ``manifest.csv``): one row per crop, see
  :data:`MANIFEST_FIELDS`. Boxes, landmarks and the transform are in pixels of
  the *original* image as a viewer shows it (EXIF orientation applied), whatever
  resolution the job worked at.
* ``failures.jsonl``: one row per image that gave no crop, with a ``reason``
  (``unreadable file: ...``, ``unreadable image: ...``, ``no face found``,
  ``output name taken: ...``, ``failed: ...``), and one row with reason
  ``low quality`` per image with faces over the quality limits
  (``max_expected_error``, ``max_p_fail``; :mod:`facealign.quality`): those
  faces are not cropped and are listed under ``faces`` with their detection
  index (largest first), box, score, ``expected_error`` and ``p_fail``. The
  faces kept are numbered ``0..num_faces-1`` in the manifest.

Hidden files in ``OUT_DIR`` hold the job's state: ``.facealign-crop.lock`` is
locked by the job's process, ``.facealign-crop.workers`` (shared) by its worker
processes while they write, so that a second job on the same ``OUT_DIR`` stops
with an error instead of interleaving records, also while the workers of a
killed job still run; ``.facealign-crop.json`` holds the settings (a rerun with
other settings is refused); ``.facealign-crop.pending`` lists the crop names the
current run may write.

Resuming
--------
Records are written by the parent process as results arrive and flushed after
each chunk of images. The rows of one image are written in a single write, and
only after all its crops have been written (each atomically, with
:func:`facealign.imageio.write_image_atomic`), so an image is recorded either
completely or not at all. A manifest row is the only thing that makes a crop
done: on a rerun, files named like the crops of the pending list (or of dropped
records) that the manifest does not list are deleted, and files named like a
crop that no run of the job planned (the user's) are never overwritten: their
image gets an ``output name taken`` failure. Images recorded in the manifest or
the failures list with the same relative path, byte size and modification time
are skipped; an image that changed since it was recorded is processed again and
its old rows and crops are dropped, and so are those of a source no longer in
``IN_DIR`` (unless it lies in a sub-folder that could not be listed). Failures
in :data:`RETRIED_REASONS` are retried by every run. A torn last line (the job
killed mid-write) is discarded. ``overwrite=True`` deletes the records and the
crops they list and starts again.

Errors
------
Nothing in ``IN_DIR`` stops a job (:func:`facealign.imageio.scan_folder`; every
image-named entry is cropped or gets a failure; with worker processes, an image
that kills its worker gets a failure too, see :func:`_run_chunks`). An error writing ``OUT_DIR``
(disk full, I/O, permissions, too many open files) is not the image's fault: the
job records what finished and stops with :class:`CropJobTransientError`; a
rerun continues.

On a cluster
------------
With a Dask ``client`` (``--cluster``) the chunks run on the cluster's workers
(:mod:`facealign.cluster`) instead of local processes; planning, records,
resuming and the locks are the same, and only this process writes records.

Large photographs
-----------------
Each image is decoded once, at the *working* resolution its detector needs
(:func:`facealign.detection.working_side`): the CNN detectors search a pyramid
of tiles (:class:`facealign.detection.PyramidDetector`) and want the full
resolution to find faces down to ``min_face`` (20 px by default) anywhere in a
photo up to the decoder's pixel limit; dlib and Haar search at most 1,280 px
and get at most :data:`WORK_MAX_SIDE` pixels (JPEGs in Pillow's draft mode).
Detection, landmarks and the warp all run on that working image; coordinates
are mapped back to the original pixels for the records. Within a worker,
decoded images are batched for the landmark network until
:data:`BATCH_PIXELS` pixels are held, which bounds memory per worker.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import io
import json
import math
import os
import re
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .alignment import warp_face
from .constants import DEFAULT_DETECTOR, POINT_NAMES, WORK_MAX_SIDE, shipped_runtime_weights
from .detection import get_detector, working_side
from .imageio import (
    PART_SUFFIX,
    FolderScan,
    ImageReadError,
    name_from_b64,
    portable_name,
    raw_name_b64,
    read_image_reduced,
    scan_folder,
    write_bytes_atomic,
    write_image_atomic,
)


if TYPE_CHECKING:  # torch-heavy; imported lazily at run time
    import distributed

    from .aligner import Face, FaceAligner

__all__ = [
    "BATCH_PIXELS",
    "CHUNK_SIZE",
    "AUTO_IMAGES_PER_PROCESS",
    "CropJobError",
    "CropJobTransientError",
    "CropSettings",
    "RETRIED_REASONS",
    "FAILURES_NAME",
    "ImageFaces",
    "MANIFEST_FIELDS",
    "Summary",
    "WORK_MAX_SIDE",
    "get_aligner",
    "iter_image_faces",
    "manifest_name",
    "run_crop_job",
]


#: Decoded pixels a worker holds at most before running the landmark network
#: (about 150 MB of RGB); a single larger image is processed on its own.
BATCH_PIXELS: int = 50_000_000

#: Images per parallel task (the landmark network is batched across a task).
CHUNK_SIZE: int = 32

#: Name of the failures list in ``OUT_DIR``.
FAILURES_NAME: str = "failures.jsonl"

#: With ``jobs="auto"``, one worker process per this many images to process
#: (at most one per core): starting a worker (the networks, the weights) costs about as
#: much as this many images in one process (measured: see README, ``--jobs``).
AUTO_IMAGES_PER_PROCESS: int = 100

#: Failure reasons that every rerun retries, because what caused them can be
#: fixed without the source file changing (permissions, a link, OUT_DIR).
RETRIED_REASONS: tuple[str, ...] = ("unreadable file: ", "output name taken: ")

#: Failure reason of faces over the quality limits.
LOW_QUALITY: str = "low quality"

MANIFEST_FORMATS: tuple[str, ...] = ("jsonl", "csv")
OUTPUT_FORMATS: tuple[str, ...] = ("jpg", "png")
_LOCK_NAME = ".facealign-crop.lock"
#: Locked (shared) by worker processes while they run a chunk, so that a new job
#: waits for the workers of a killed one.
_WORKERS_LOCK_NAME = ".facealign-crop.workers"
#: The settings of the job that made OUT_DIR (JSON).
_SETTINGS_NAME = ".facealign-crop.json"
#: Output names (stem and extension) that the current run may write, one JSON
#: array per line; the crops of these not in the manifest are removed on resume.
_PENDING_NAME = ".facealign-crop.pending"
#: Indices of the chunks that worker processes started, one per line: when a worker
#: dies, the images of these chunks are redone one per process (see _run_chunks).
_STARTED_NAME = ".facealign-crop.started"
#: A crop file name: ``<stem>_<face><ext>``.
_CROP_NAME = re.compile(r"^(?P<stem>.+)_(?P<face>[0-9]+)(?P<ext>\.jpg|\.png)$")

#: Manifest fields, in order. ``box`` is ``[x1, y1, x2, y2]``, ``landmarks`` five
#: ``[x, y]`` in MTFL order and ``transform`` the 2 x 3 source-to-crop matrix, all
#: in original-image pixels; ``size`` is the crop ``[width, height]``;
#: ``source_bytes`` / ``source_mtime_ns`` identify the version of the source
#: that was processed; ``decode_scale`` is the working-image scale (1 = full size);
#: ``warnings`` lists what the decoder warned about an image that still decoded.
#: ``source`` is the path relative to IN_DIR with POSIX separators, as text: a
#: name that is not valid UTF-8 has each such byte written ``%XX``, and then
#: ``source_b64`` holds the exact bytes (base64; JSON rows carry the key only
#: then, CSV rows leave the column empty otherwise).
#: ``expected_error`` (% of the inter-ocular distance) and ``p_fail`` are the
#: face's quality figures (:mod:`facealign.quality`), empty when unknown.
MANIFEST_FIELDS: tuple[str, ...] = (
    "source",
    "face",
    "num_faces",
    "box",
    "score",
    "landmarks",
    "transform",
    "output",
    "size",
    "template",
    "engine",
    "detector",
    "decode_scale",
    "source_bytes",
    "source_mtime_ns",
    "warnings",
    "source_b64",
    "expected_error",
    "p_fail",
)
#: Manifest fields added after 0.2.0, all at the end: CSV manifests without them
#: are read, and rewritten with them (empty) when a job resumes.
_FIELDS_ADDED_IN_0_3: tuple[str, ...] = ("warnings", "source_b64", "expected_error", "p_fail")
_FAILURE_FIELDS: tuple[str, ...] = ("source", "reason", "source_bytes", "source_mtime_ns")


class CropJobError(Exception):
    """A crop job cannot start: bad folders, settings or records (a user error)."""


class CropJobTransientError(CropJobError):
    """The job stopped on a condition that is not the images' fault (disk full, I/O error,
    permissions or too many open files in OUT_DIR, workers of a killed job still running).

    Nothing is recorded for the images in progress; rerunning the same command
    after the condition is fixed continues the job.
    """


@dataclass(frozen=True)
class CropSettings:
    """What a crop job computes; hashable, so it keys the per-process aligner cache.

    Parameters
    ----------
    detector : str
        Detector name (:data:`facealign.constants.BUILTIN_DETECTORS` or a plug-in).
    engine : str
        Landmark engine, ``"tcnn"`` or ``"vanilla"``.
    template : str
        Built-in template name or path of a template JSON file.
    size : int, optional
        Crop side; defaults to the template's own size.
    min_face : float, optional
        Smallest face the detector looks for (pixels); None keeps its default.
    max_expected_error, max_p_fail : float, optional
        Quality limits: faces over either are not cropped (see the module notes).
    """

    detector: str = DEFAULT_DETECTOR
    engine: str = "tcnn"
    template: str = "arcface"
    size: int | None = None
    min_face: float | None = None
    max_expected_error: float | None = None
    max_p_fail: float | None = None


@dataclass
class Summary:
    """Counts and timing of a crop job.

    ``images`` were found, of which ``skipped`` were already recorded and
    ``processed`` were handled by this run, giving ``faces`` crops and
    ``failures`` failure records. ``ignored`` counts the entries of IN_DIR that
    are not images, by kind (:data:`facealign.imageio.IGNORED_KINDS`), and
    ``gone`` the sources recorded earlier that are no longer in IN_DIR (their
    records and crops were removed). ``chunks`` counts the chunks of images
    (tasks) completed.
    """

    images: int = 0
    processed: int = 0
    skipped: int = 0
    faces: int = 0
    failures: int = 0
    seconds: float = 0.0
    manifest: str = ""
    failures_file: str = ""
    ignored: Counter = field(default_factory=Counter)
    gone: int = 0
    chunks: int = 0

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """One-line human summary."""
        ignored = ", ".join(f"{n} {kind}" for kind, n in sorted(self.ignored.items()) if n)
        return (
            f"{self.images} images: {self.processed} processed, {self.skipped} skipped; "
            f"{self.faces} faces cropped, {self.failures} failures; "
            + (f"ignored: {ignored}; " if ignored else "")
            + (f"records of {self.gone} deleted sources dropped; " if self.gone else "")
            + f"{self.seconds:.1f} s, {self.images_per_second:.1f} images/s"
            + (f" ({self.chunks} chunks)" if self.chunks else "")
        )


# --------------------------------------------------------------------------- #
# Aligner cache and the detect-then-landmark pipeline (shared with the CLI)
# --------------------------------------------------------------------------- #

_ALIGNERS: dict[CropSettings, "FaceAligner"] = {}


def get_aligner(settings: CropSettings) -> "FaceAligner":
    """The :class:`FaceAligner` for ``settings``, built once per process."""
    aligner = _ALIGNERS.get(settings)
    if aligner is None:
        from .aligner import FaceAligner

        aligner = FaceAligner(settings.detector, settings.engine, settings.template, settings.size, settings.min_face)
        _ALIGNERS[settings] = aligner
    return aligner


def _scale_matrix(scale: float) -> np.ndarray:
    """3 x 3 map from original pixels to working pixels: ``q = (p + 0.5) * s - 0.5``."""
    off = 0.5 * (scale - 1.0)
    return np.array([[scale, 0.0, off], [0.0, scale, off], [0.0, 0.0, 1.0]])


@dataclass
class ImageFaces:
    """Faces of one image at its working resolution (see :func:`iter_image_faces`).

    ``boxes`` (N x 4), ``scores`` (N,) and ``landmarks`` (N x 5 x 2) are in pixels
    of ``image``, the working image, which is ``scale`` times the original
    (pixel-centre rule). ``error`` is set, and ``image`` is None, when the image
    could not be read or analysed; ``errno`` is then the operating-system error
    number when the *file* could not be read (see :class:`ImageReadError`).
    ``warnings`` lists the decoder's warnings on an image that still decoded.
    """

    path: Path
    image: np.ndarray | None = None
    scale: float = 1.0
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,)))
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((0, 5, 2)))
    error: str | None = None
    #: The boxes the landmark engine is given (:meth:`FaceAligner.engine_boxes`).
    engine_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    errno: int | None = None
    warnings: list[str] = field(default_factory=list)
    #: Per-face quality arrays (:meth:`LandmarkEngine.predict_faces`); empty before landmarking.
    quality: dict[str, np.ndarray] = field(default_factory=dict)

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """Map ``(..., 2)`` working-image points (or box corners) to original pixels."""
        return (np.asarray(points, np.float64) + 0.5) / self.scale - 0.5

    def faces(self) -> list["Face"]:
        """The faces with boxes and landmarks in original-image pixels."""
        from .aligner import Face

        boxes = self.to_original(self.boxes.reshape(-1, 2, 2)).reshape(-1, 4)
        points = self.to_original(self.landmarks)
        unknown = np.full(len(boxes), np.nan)
        errors, p_fail = self.quality.get("expected_error", unknown), self.quality.get("p_fail", unknown)
        return [
            Face(b, float(s), p, float(e), float(f))
            for b, s, p, e, f in zip(boxes, self.scores, points, errors, p_fail)
        ]

    def drop_faces(self, drop: np.ndarray) -> None:
        """Remove the faces where the boolean mask ``drop`` is True."""
        keep = ~np.asarray(drop, bool)
        self.boxes, self.scores, self.landmarks = self.boxes[keep], self.scores[keep], self.landmarks[keep]
        self.engine_boxes = self.engine_boxes[keep]
        self.quality = {name: values[keep] for name, values in self.quality.items()}


def _load_and_detect(aligner: "FaceAligner", path: Path, largest_only: bool, max_side: int | None) -> ImageFaces:
    def side_for(width: int, height: int) -> int:
        side = working_side(aligner.detector, width, height)
        return side if max_side is None else min(side, max_side)

    decoder_warnings: list[str] = []
    try:
        image, scale = read_image_reduced(path, side_for, decoder_warnings=decoder_warnings)
    except ImageReadError as exc:
        if exc.errno is not None:  # the file system, not the contents (see RETRIED_REASONS)
            return ImageFaces(path, error=f"unreadable file: {exc.reason}", errno=exc.errno)
        return ImageFaces(path, error=f"unreadable image: {exc.reason}")
    except MemoryError:
        return ImageFaces(path, error="unreadable image: out of memory while decoding")
    try:
        det = aligner.detect(image)
    except Exception as exc:  # a detector failing on one odd image must not stop a batch
        return ImageFaces(path, error=f"failed: detection raised {type(exc).__name__}: {exc}")
    det = det.take(slice(0, 1 if largest_only else len(det)))
    return ImageFaces(
        path,
        image,
        scale,
        det.boxes.astype(np.float64),
        det.scores.astype(np.float64),
        engine_boxes=aligner.engine_boxes(det),
        warnings=list(dict.fromkeys(decoder_warnings)),
    )


def iter_image_faces(
    aligner: "FaceAligner",
    paths: Sequence["str | os.PathLike[str]"],
    *,
    largest_only: bool = False,
    max_side: int | None = None,
    batch_pixels: int = BATCH_PIXELS,
) -> Iterator[ImageFaces]:
    """Decode, detect and landmark images, yielding one :class:`ImageFaces` each, in order.

    Each image is decoded once, at the working resolution its detector needs
    (:func:`facealign.detection.working_side`: full resolution for the CNN
    detectors at the default ``min_face``, at most 4,096 pixels for dlib and
    Haar), and at most ``max_side`` pixels (longer side) when given. Images
    are detected one by one and accumulated until ``batch_pixels`` decoded
    pixels are held; then the landmark network runs
    once on every face of the batch (:meth:`LandmarkEngine.predict_many`).
    Unreadable images and detector errors are reported in ``error``, never raised.
    """
    pending: list[ImageFaces] = []
    held = 0

    def flush() -> Iterator[ImageFaces]:
        ok = [item for item in pending if item.error is None and len(item.boxes)]
        if ok:
            points, quality = aligner.engine.predict_many(
                [item.image for item in ok], [item.engine_boxes for item in ok], return_quality=True
            )
            for item, pts, figures in zip(ok, points, quality):
                item.landmarks = np.asarray(pts, np.float64)
                item.quality = figures
        yield from pending
        pending.clear()

    for path in paths:
        item = _load_and_detect(aligner, Path(path), largest_only, max_side)
        pending.append(item)
        if item.image is not None:
            held += item.image.shape[0] * item.image.shape[1]
        if held >= batch_pixels:
            yield from flush()
            held = 0
    yield from flush()


# --------------------------------------------------------------------------- #
# Worker side: one chunk of images -> crops on disk + records
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class _Task:
    """One source image to crop (all paths as strings for cheap pickling)."""

    source: str  # relative to IN_DIR, POSIX separators (surrogate-escaped when not UTF-8)
    path: str  # absolute
    output_stem: str  # relative to OUT_DIR, without "_<k>.<ext>"; valid UTF-8
    ext: str  # ".jpg" or ".png"
    size: int
    mtime_ns: int


def _round(values: np.ndarray, digits: int) -> list:
    return np.round(np.asarray(values, np.float64), digits).tolist()


def _crop_rows(
    item: ImageFaces, task: _Task, settings: CropSettings, aligner: "FaceAligner", out_dir: Path
) -> list[dict[str, Any]]:
    """Warp and write every face of one image; its manifest rows (raises on failure)."""
    rows = []
    to_work = _scale_matrix(item.scale)
    faces = item.faces()
    template = aligner.template
    written: list[Path] = []
    try:
        for k, (face, work_points) in enumerate(zip(faces, item.landmarks)):
            crop, matrix = warp_face(item.image, work_points, template)
            output = f"{task.output_stem}_{k}{task.ext}"
            written.append(write_image_atomic(out_dir / output, crop))
            rows.append(_crop_row(task, settings, item, k, face, matrix @ to_work, output, template))
    except BaseException:
        for path in written:  # an image is recorded completely or not at all
            _unlink_quietly(path)
        raise
    return rows


def _crop_row(
    task: _Task, settings: CropSettings, item: ImageFaces, k: int, face: "Face", transform: np.ndarray,
    output: str, template: Any,
) -> dict[str, Any]:
    """The manifest row of face ``k`` (``transform``: original pixels -> crop pixels)."""
    record = face.to_json()
    return {
        "source": portable_name(task.source),
        "face": k,
        "num_faces": len(item.boxes),
        "box": record["box"],
        "score": record["score"],
        "landmarks": record["landmarks"],
        "transform": _round(transform, 8),
        "output": output,
        "size": list(template.size),
        "template": template.name,
        "engine": settings.engine,
        "detector": settings.detector,
        "decode_scale": round(float(item.scale), 8),
        "source_bytes": task.size,
        "source_mtime_ns": task.mtime_ns,
        "warnings": item.warnings,
        **_source_b64(task.source),
        "expected_error": record["expected_error"],
        "p_fail": record["p_fail"],
    }


def _source_b64(source: str) -> dict[str, str]:
    """``{"source_b64": ...}`` for a source name that is not valid UTF-8, else ``{}``."""
    raw = raw_name_b64(source)
    return {} if raw is None else {"source_b64": raw}


def _record_key(row: dict[str, Any]) -> str:
    """The source of a manifest or failure row as the file-system name (inverse of the row fields)."""
    raw = row.get("source_b64")
    return name_from_b64(str(raw)) if raw else str(row["source"])


def _low_quality_failure(item: ImageFaces, task: _Task, settings: CropSettings) -> dict[str, Any] | None:
    """Drop the faces over the quality limits from ``item``; their failure record, or None."""
    from .quality import over_limits

    if settings.max_expected_error is None and settings.max_p_fail is None:
        return None
    faces = item.faces()
    over = over_limits(
        np.array([f.expected_error for f in faces]), np.array([f.p_fail for f in faces]),
        settings.max_expected_error, settings.max_p_fail,
    )
    if not over.any():
        return None
    item.drop_faces(over)
    record = _failure(task, LOW_QUALITY)
    record["faces"] = [
        {"detection": int(k), **{key: value for key, value in faces[k].to_json().items() if key != "landmarks"}}
        for k in np.flatnonzero(over)
    ]
    return record


def _failure(task: _Task, reason: str) -> dict[str, Any]:
    return {"source": portable_name(task.source), "reason": reason, "source_bytes": task.size,
            "source_mtime_ns": task.mtime_ns, **_source_b64(task.source)}  # fmt: skip


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


#: Errors reading an input file that are the process's state, not the file's: stop the job.
_STOP_READ_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})
#: Errors writing a crop because OUT_DIR holds something else under a needed name.
_TAKEN_WRITE_ERRNOS = frozenset({errno.ENOTDIR, errno.EISDIR, errno.EEXIST})
#: Errors writing a crop that the same image will always give.
_PERMANENT_WRITE_ERRNOS = frozenset({errno.ENAMETOOLONG})


def _stop_message(what: str, exc: OSError) -> str:
    """One line for a condition that stops the job (see :class:`CropJobTransientError`)."""
    return f"{what}: {exc.strerror or exc}"


@dataclass
class _ChunkResult:
    """What a worker returns for a chunk: per image ``(manifest rows, failure or None)``
    for the images finished, in order, and why it stopped early (``None``: it did not)."""

    results: list[tuple[list[dict[str, Any]], dict[str, Any] | None]]
    stopped: str | None = None


def _process_chunk(
    tasks: list[_Task], settings: CropSettings, largest_only: bool, out_dir: str, single_thread: bool,
    parent_pid: int | None = None, chunk_index: int | None = None,
) -> _ChunkResult:
    """Crop a chunk of images (see :class:`_ChunkResult`).

    In a worker process (``parent_pid`` given) the worker first makes sure it
    dies with the job's process and holds the workers lock of ``out_dir``
    while it writes (:func:`_own_worker`); it notes ``chunk_index``, when
    given, as started.
    """
    if parent_pid is not None:
        _own_worker(parent_pid)
        with _WorkersLock(Path(out_dir), shared=True):
            if chunk_index is not None:
                fd = os.open(Path(out_dir) / _STARTED_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, f"{chunk_index}\n".encode())
                finally:
                    os.close(fd)
            return _process_chunk(tasks, settings, largest_only, out_dir, single_thread)
    if single_thread:
        _limit_threads()
    aligner = get_aligner(settings)
    if single_thread:
        # onnxruntime's own thread pools (the detector's and the landmark network's)
        aligner.engine.set_threads(1)
        if hasattr(aligner.detector, "set_threads"):
            aligner.detector.set_threads(1)
    by_path = {t.path: t for t in tasks}
    done = _ChunkResult([])
    for item in iter_image_faces(aligner, [t.path for t in tasks], largest_only=largest_only):
        task = by_path[str(item.path)]
        if item.error is not None:
            if item.errno in _STOP_READ_ERRNOS:
                done.stopped = _stop_message(f"cannot read {portable_name(task.source)!r}", OSError(item.errno, os.strerror(item.errno)))
                break
            done.results.append(([], _failure(task, item.error)))
        elif not len(item.boxes):
            done.results.append(([], _failure(task, "no face found")))
        else:
            low_quality = _low_quality_failure(item, task, settings)
            try:
                done.results.append((_crop_rows(item, task, settings, aligner, Path(out_dir)), low_quality))
            except OSError as exc:
                if exc.errno in _TAKEN_WRITE_ERRNOS:
                    done.results.append(([], _failure(task, f"output name taken: {exc.strerror}: {portable_name(str(exc.filename))}")))
                elif exc.errno in _PERMANENT_WRITE_ERRNOS:
                    done.results.append(([], _failure(task, f"failed: cannot write its crop: {exc.strerror}")))
                else:
                    done.stopped = _stop_message(f"cannot write the crops of {portable_name(task.source)!r}", exc)
                    break
            except Exception as exc:
                done.results.append(([], _failure(task, f"failed: {type(exc).__name__}: {exc}")))
        item.image = None  # release the decoded pixels early
    return done


_THREADS_LIMITED = False
_OWNED_BY: int | None = None  # the job process this worker process dies with


def _own_worker(parent_pid: int) -> None:
    """Make this worker process end when the job's process ``parent_pid`` ends, however it ends.

    On Linux the kernel sends the worker SIGKILL when its parent dies
    (``prctl(PR_SET_PDEATHSIG)``); everywhere, a daemon thread checks every
    0.5 s that the parent is still the same process and exits otherwise. A
    worker whose parent is already gone exits at once, before any work.
    """
    global _OWNED_BY
    if _OWNED_BY == parent_pid:
        return
    if _OWNED_BY is None:
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # not Linux: the thread below does it
            pass
    _OWNED_BY = parent_pid
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == _OWNED_BY:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="facealign-parent-watch", daemon=True).start()


def _limit_threads() -> None:
    """One OpenCV thread per worker process (the job is parallel over processes; the
    networks' onnxruntime sessions get one thread each in :func:`_process_chunk`)."""
    global _THREADS_LIMITED
    if not _THREADS_LIMITED:
        import cv2

        cv2.setNumThreads(1)
        _THREADS_LIMITED = True


# --------------------------------------------------------------------------- #
# Parent side: planning, records, resuming
# --------------------------------------------------------------------------- #


def manifest_name(fmt: str) -> str:
    """File name of the manifest for ``fmt`` (``"jsonl"`` or ``"csv"``)."""
    if fmt not in MANIFEST_FORMATS:
        raise CropJobError(f"unknown manifest format {fmt!r}; choose one of {list(MANIFEST_FORMATS)}")
    return f"manifest.{fmt}"


def _csv_columns() -> list[str]:
    cols: list[str] = []
    for name in MANIFEST_FIELDS:
        if name == "box":
            cols += ["box_x1", "box_y1", "box_x2", "box_y2"]
        elif name == "landmarks":
            cols += [f"{p}_{c}" for p in POINT_NAMES for c in ("x", "y")]
        elif name == "transform":
            cols += ["m00", "m01", "m02", "m10", "m11", "m12"]
        elif name == "size":
            cols += ["width", "height"]
        else:
            cols.append(name)
    return cols


CSV_COLUMNS: tuple[str, ...] = tuple(_csv_columns())


#: The CSV columns written by facealign 0.2.0 (read, then rewritten).
_LEGACY_CSV_COLUMNS: tuple[str, ...] = tuple(c for c in CSV_COLUMNS if c not in _FIELDS_ADDED_IN_0_3)


def _flatten(row: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    for name in MANIFEST_FIELDS:
        value = row.get(name)
        if name in ("box", "landmarks", "transform", "size"):
            out += np.asarray(value).reshape(-1).tolist()
        elif name == "warnings":
            out.append(json.dumps(value, ensure_ascii=False) if value else "")
        else:
            out.append("" if value is None else value)
    return out


def _encode_rows(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for r in rows:
        writer.writerow(_flatten(r))
    return buffer.getvalue()


@dataclass
class _Records:
    """What earlier runs recorded: the identity of each recorded source, and its crops."""

    done: dict[str, tuple[int, int]] = field(default_factory=dict)  # source -> (bytes, mtime_ns)
    settings: tuple[str, str, str, str] | None = None  # template, engine, detector, width
    outputs: set[str] = field(default_factory=set)  # crops listed in the manifest
    dropped: set[tuple[str, str]] = field(default_factory=set)  # (stem, ext) of the crops of dropped rows
    gone: int = 0  # sources no longer in IN_DIR whose records were dropped


def _read_text(path: Path) -> tuple[str, bool]:
    """A record file's complete lines and whether a torn last line was cut off."""
    if not path.exists():
        return "", False
    text = path.read_text(encoding="utf-8", errors="replace")  # a torn write may cut a character
    end = text.rfind("\n") + 1
    return text[:end], end != len(text)


def _manifest_entries(path: Path, fmt: str) -> tuple[list[tuple[dict[str, Any], Any]], bool]:
    """Parsed manifest rows as ``(info, raw)`` pairs, and whether anything was dropped.

    ``info`` holds the fields resuming needs; ``raw`` is the JSON line or the list
    of CSV values, to write the row back unchanged. Malformed rows are dropped.
    """
    text, torn = _read_text(path)
    entries: list[tuple[dict[str, Any], Any]] = []
    dropped = torn
    if fmt == "jsonl":
        raws: list[Any] = text.splitlines()
        rows: list[dict[str, Any] | None] = []
        for line in raws:
            try:
                rows.append(json.loads(line))
            except ValueError:
                rows.append(None)
    else:
        try:
            raws = list(csv.reader(io.StringIO(text)))
        except csv.Error:
            raise CropJobError(f"{path} is not a readable CSV manifest; rerun with --overwrite") from None
        if raws and tuple(raws[0]) == _LEGACY_CSV_COLUMNS:  # written by facealign < 0.3: add the new columns
            raws = [raws[0]] + [v + [""] * (len(CSV_COLUMNS) - len(v)) for v in raws[1:]]
            dropped = True  # rewrite with the current header
        elif raws and tuple(raws[0]) != CSV_COLUMNS:
            raise CropJobError(f"{path} does not have the columns of a facealign manifest; rerun with --overwrite")
        raws = raws[1:]
        rows = [dict(zip(CSV_COLUMNS, v)) if len(v) == len(CSV_COLUMNS) else None for v in raws]
    for raw, row in zip(raws, rows):
        try:
            width = row["size"][0] if fmt == "jsonl" else row["width"]
            info = {
                "source": _record_key(row),
                "face": int(row["face"]),
                "num_faces": int(row["num_faces"]),
                "output": str(row["output"]),
                "id": (int(row["source_bytes"]), int(row["source_mtime_ns"])),
                "settings": (str(row["template"]), str(row["engine"]), str(row["detector"]), str(int(float(width)))),
            }
        except (ValueError, KeyError, TypeError, IndexError):
            dropped = True
            continue
        entries.append((info, raw))
    return entries, dropped


def _write_manifest(path: Path, fmt: str, raws: list[Any]) -> None:
    """Replace a manifest atomically with these raw rows."""
    if fmt == "jsonl":
        text = "".join(line + "\n" for line in raws)
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows(raws)
        text = buffer.getvalue()
    _rewrite(path, text)


def _rewrite(path: Path, text: str) -> None:
    """Replace a record file atomically (:func:`facealign.imageio.write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def _load_records(
    out_dir: Path, fmt: str, current: dict[str, tuple[int, int]], unknown: Callable[[str], bool]
) -> _Records:
    """Read earlier records, dropping incomplete images, sources that changed and sources gone.

    ``current`` maps each source found now to its ``(bytes, mtime_ns)``;
    ``unknown(source)`` is true for a source that is not in ``current`` but may
    still exist (it lies in a sub-folder that could not be listed): its records
    are kept. Records of the other sources not in ``current`` are dropped, with
    their crops. Failures with a reason in :data:`RETRIED_REASONS` are dropped
    (retried). The record files are rewritten when rows are dropped, and the
    crops of dropped manifest rows are deleted, so every crop is listed exactly
    once afterwards.
    """
    records = _Records()
    manifest = out_dir / manifest_name(fmt)
    entries, dropped = _manifest_entries(manifest, fmt)
    groups: dict[str, list[dict[str, Any]]] = {}
    for info, _ in entries:
        groups.setdefault(info["source"], []).append(info)
    keep = set()
    for source, group in groups.items():
        complete = len({r["id"] for r in group}) == 1 and sorted(r["face"] for r in group) == list(
            range(group[0]["num_faces"])
        )
        exists = source in current or unknown(source)
        changed = source in current and current[source] != group[0]["id"]
        if complete and exists and not changed:
            keep.add(source)
            records.done[source] = group[0]["id"]
            records.settings = records.settings or group[0]["settings"]
            records.outputs.update(r["output"] for r in group)
        else:
            records.gone += not exists
            for r in group:
                _remove_output(out_dir, r["output"])
                match = _CROP_NAME.match(r["output"])
                if match:
                    records.dropped.add((match["stem"], match["ext"]))
    if dropped or len(keep) != len(groups):
        _write_manifest(manifest, fmt, [raw for info, raw in entries if info["source"] in keep])

    failures_path = out_dir / FAILURES_NAME
    text, dropped = _read_text(failures_path)
    kept_lines = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
            source, ident = _record_key(row), (int(row["source_bytes"]), int(row["source_mtime_ns"]))
            retried = str(row["reason"]).startswith(RETRIED_REASONS)
        except (ValueError, KeyError, TypeError):
            dropped = True
            continue
        exists = source in current or unknown(source)
        low_quality = row.get("reason") == LOW_QUALITY
        if (
            retried
            or not exists
            or (source in current and current[source] != ident)
            or (source in keep and not low_quality)
            or (source in groups and source not in keep)
        ):
            dropped = True  # retried, gone, changed since (try again), superseded by crops, or its image is redone
            records.gone += not exists and not retried
            continue
        records.done.setdefault(source, ident)
        kept_lines.append(line)
    if dropped:
        _rewrite(failures_path, "".join(line + "\n" for line in kept_lines))
    return records


def _remove_output(out_dir: Path, output: str) -> None:
    """Delete a recorded crop, but only a file inside ``out_dir``."""
    target = (out_dir / output).resolve()
    if target.is_relative_to(out_dir.resolve()) and target.is_file():
        target.unlink()


def _check_dirs(in_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    if not in_dir.exists():
        raise CropJobError(f"input folder {str(in_dir)!r} does not exist")
    if not in_dir.is_dir():
        raise CropJobError(f"input {str(in_dir)!r} is not a folder")
    src, dst = in_dir.resolve(), out_dir.resolve()
    if dst == src:
        raise CropJobError("OUT_DIR is the same folder as IN_DIR; choose an output folder outside IN_DIR")
    if dst.is_relative_to(src):
        raise CropJobError(
            f"OUT_DIR {str(out_dir)!r} is inside IN_DIR {str(in_dir)!r}; crops would be written among "
            "the source images. Choose an output folder outside IN_DIR"
        )
    if src.is_relative_to(dst):
        raise CropJobError(
            f"OUT_DIR {str(out_dir)!r} contains IN_DIR {str(in_dir)!r}; the job manages the files of OUT_DIR "
            "(it removes unrecorded crops) and must not reach the source images. Choose an output folder "
            "outside IN_DIR"
        )
    if dst.exists() and not dst.is_dir():
        raise CropJobError(f"OUT_DIR {str(out_dir)!r} exists and is not a folder")
    try:
        dst.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".facealign-probe.", dir=dst)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        error = CropJobError if exc.errno in _TAKEN_WRITE_ERRNOS | _PERMANENT_WRITE_ERRNOS else CropJobTransientError
        raise error(f"cannot write to OUT_DIR {str(out_dir)!r}: {exc.strerror or exc}") from exc
    return src, dst


def _output_ext(source: Path, fmt: str | None) -> str:
    if fmt is not None:
        return f".{fmt}"
    suffix = source.suffix.lower()
    return ".jpg" if suffix in (".jpg", ".jpeg") else ".png"


def _plan(in_dir: Path, scan: FolderScan, fmt: str | None) -> tuple[list[_Task], list[tuple[_Task, str]]]:
    """One task per image, with collision-free output names (see the module notes).

    Returns the tasks of the readable images, and ``(task, reason)`` for the
    image-named entries that cannot be read (broken links, FIFOs, ...).
    Output names are valid UTF-8 (:func:`facealign.imageio.portable_name`);
    should two still coincide, the later one gets ``~1``, ``~2``, ... added.
    """
    paths = [path for path, _, _ in scan.images]
    rels = [p.relative_to(in_dir) for p in paths]
    exts = [_output_ext(p, fmt) for p in paths]
    keys = [(portable_name(r.parent.as_posix()), portable_name(r.stem).lower(), e) for r, e in zip(rels, exts)]
    counts = Counter(keys)
    tasks, unreadable, taken = [], [], set()
    for (path, info, problem), rel, ext, key in zip(scan.images, rels, exts, keys):
        stem = portable_name((rel.parent / (rel.name if counts[key] > 1 else rel.stem)).as_posix())
        unique, n = stem, 0
        while (unique.lower(), ext) in taken:
            n += 1
            unique = f"{stem}~{n}"
        taken.add((unique.lower(), ext))
        if info is None:
            try:
                info = path.lstat()
            except OSError:
                info = None
        size, mtime_ns = (info.st_size, info.st_mtime_ns) if info is not None else (0, 0)
        task = _Task(rel.as_posix(), str(path), unique, ext, size, mtime_ns)
        if problem is None:
            tasks.append(task)
        else:
            unreadable.append((task, f"unreadable file: {problem}"))
    return tasks, unreadable


class _Lock:
    """Exclusive lock on ``OUT_DIR`` so that two jobs never append to one manifest.

    Taken by the job's process for the whole job. It also takes the workers
    lock (:class:`_WorkersLock`) exclusively for a moment: that fails while
    worker processes of an earlier job, whose process was killed, still run.
    """

    def __init__(self, out_dir: Path, name: str = _LOCK_NAME) -> None:
        self.path = out_dir / name
        self.handle = None

    def _flock(self, shared: bool) -> bool:
        """Lock the open file without waiting; False when another process holds it."""
        try:
            import fcntl
        except ImportError:  # Windows: no advisory lock
            return True
        try:
            fcntl.flock(self.handle.fileno(), (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def __enter__(self) -> "_Lock":
        self.handle = open(self.path, "a")
        if not self._flock(shared=False):
            self.handle.close()
            raise CropJobError(f"another crop job is writing to {str(self.path.parent)!r}")
        try:
            with _WorkersLock(self.path.parent, shared=False):
                pass
        except BaseException:
            self.handle.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        # The (empty, hidden) lock file stays: deleting it would let two later
        # jobs lock different files.
        if self.handle is not None:
            self.handle.close()


class _WorkersLock(_Lock):
    """The lock that worker processes hold, shared, while they write crops into ``OUT_DIR``."""

    def __init__(self, out_dir: Path, shared: bool) -> None:
        super().__init__(out_dir, _WORKERS_LOCK_NAME)
        self.shared = shared

    def __enter__(self) -> "_WorkersLock":
        self.handle = open(self.path, "a")
        if not self._flock(self.shared):
            self.handle.close()
            raise CropJobTransientError(
                f"worker processes of an earlier, interrupted crop job are still writing to "
                f"{str(self.path.parent)!r}; try again in a few seconds"
            )
        return self


def _append(handle: io.RawIOBase, text: str) -> None:
    """Append to a record file (opened ``"ab", buffering=0``) and flush it to disk.

    Raises the ``OSError`` of a failed write (disk full, ...); what was written
    of the text then is a torn last line, which resuming discards.
    """
    data = memoryview(text.encode("utf-8"))
    while data:
        data = data[handle.write(data) :]
    if text:
        os.fsync(handle.fileno())


def _job_settings(settings: CropSettings, template: Any, largest_only: bool, fmt: str | None) -> dict[str, Any]:
    """What a job computes, as written in OUT_DIR's settings file (resuming must not change any)."""
    values = dataclasses.asdict(settings)
    values.update(template=template.name, size=list(template.size), largest_only=largest_only,
                  format=fmt or "jpg for JPEG sources, png otherwise")  # fmt: skip
    return values


def _check_settings(out_dir: Path, wanted: dict[str, Any], has_records: bool) -> None:
    """Refuse to resume with settings other than those of the records in OUT_DIR."""
    path = out_dir / _SETTINGS_NAME
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return
    except ValueError:
        earlier = {}
    # A setting added to CropSettings after the records were made had its default then.
    defaults = dataclasses.asdict(CropSettings())
    earlier = {k: earlier.get(k, defaults.get(k)) for k in wanted} if isinstance(earlier, dict) else {}
    if has_records and earlier != wanted:
        changed = ", ".join(f"{k}: {earlier.get(k)!r}, now {v!r}" for k, v in wanted.items() if earlier.get(k) != v)
        raise CropJobError(
            f"OUT_DIR holds crops made with other settings ({changed or 'unreadable ' + _SETTINGS_NAME}); "
            "rerun with --overwrite or choose another OUT_DIR"
        )


def _has_records(out_dir: Path) -> bool:
    """Whether OUT_DIR holds a non-empty manifest or failures list."""
    names = [manifest_name(f) for f in MANIFEST_FORMATS] + [FAILURES_NAME]
    return any((out_dir / n).is_file() and (out_dir / n).stat().st_size > 0 for n in names)


def _crop_files(out_dir: Path, folders: set[str]) -> tuple[dict[tuple[str, str], list[str]], list[Path]]:
    """Files in these folders of OUT_DIR (relative, POSIX) named like crops, by ``(stem, ext)``,
    and the ``.part`` temporaries of :func:`write_image_atomic` there."""
    crops: dict[tuple[str, str], list[str]] = {}
    parts: list[Path] = []
    for folder in folders:
        try:
            with os.scandir(out_dir / folder) as listing:
                names = [e.name for e in listing if not e.is_dir(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            if name.startswith(".") and name.endswith(PART_SUFFIX):
                parts.append(out_dir / folder / name)
            match = _CROP_NAME.match(name)
            if match:
                rel = f"{folder}/{name}" if folder else name
                stem = f"{folder}/{match['stem']}" if folder else match["stem"]
                crops.setdefault((stem, match["ext"]), []).append(rel)
    return crops, parts


def _folder(stem: str) -> str:
    return stem.rpartition("/")[0]


def _remove_unrecorded(out_dir: Path, recorded: set[str], dropped: set[tuple[str, str]] = frozenset()) -> None:
    """Delete the crops that an interrupted run wrote but never recorded.

    Those are the files named like crops of the stems the run had planned
    (its pending file) or of the records just ``dropped`` (``(stem, ext)``) that
    the manifest does not list, and the ``.part`` temporaries beside them.
    Files named otherwise, or like crops of other images, are never touched.
    """
    path = out_dir / _PENDING_NAME
    text, _ = _read_text(path)
    pending = set(dropped)
    for line in text.splitlines():
        try:
            stem, ext = json.loads(line)
            pending.add((str(stem), str(ext)))
        except (ValueError, TypeError):
            continue
    crops, parts = _crop_files(out_dir, {_folder(stem) for stem, _ in pending})
    for key in pending:
        for rel in crops.get(key, []):
            if rel not in recorded:
                _remove_output(out_dir, rel)
    for part in parts:
        _unlink_quietly(part)


def _taken_outputs(out_dir: Path, todo: list[_Task], recorded: set[str]) -> dict[str, str]:
    """``{source: file}`` for the images to process whose crop names are held by files
    that no record lists (a user's own files: never overwritten)."""
    crops, _ = _crop_files(out_dir, {_folder(t.output_stem) for t in todo})
    taken = {}
    for task in todo:
        foreign = [rel for rel in crops.get((task.output_stem, task.ext), []) if rel not in recorded]
        if foreign:
            taken[task.source] = foreign[0]
    return taken


def run_crop_job(
    in_dir: "str | os.PathLike[str]",
    out_dir: "str | os.PathLike[str]",
    *,
    detector: str = DEFAULT_DETECTOR,
    min_face: float | None = None,
    engine: str = "tcnn",
    template: str = "arcface",
    size: int | None = None,
    largest_only: bool = False,
    jobs: "int | str | None" = "auto",
    fmt: str | None = None,
    overwrite: bool = False,
    manifest_format: str = "jsonl",
    chunk_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    max_expected_error: float | None = None,
    max_p_fail: float | None = None,
    client: "distributed.Client | None" = None,
) -> Summary:
    """Detect, landmark and align every face of every image under ``in_dir``.

    Parameters
    ----------
    in_dir, out_dir : path
        Source folder (read only) and output folder (created). ``out_dir`` must
        not be ``in_dir``, lie inside it or contain it.
    detector, min_face, engine, template, size
        As :class:`facealign.FaceAligner`; ``template`` is a built-in name or a
        JSON file path, ``size`` the crop side (default: the template's).
    largest_only : bool
        Crop only the largest face of each image.
    jobs : int or "auto", optional
        Worker processes (joblib, loky). ``"auto"`` (default; also None) runs
        one process per :data:`AUTO_IMAGES_PER_PROCESS` images to process, at
        most one per core, so small jobs run in this process; -1 means all
        cores. With more than one, each worker runs the networks and OpenCV
        single-threaded, and dies with this process (:func:`_own_worker`).
    fmt : {"jpg", "png"}, optional
        Crop file format; by default JPEG sources give ``.jpg`` crops and all
        others ``.png``.
    overwrite : bool
        Delete earlier records and the crops they list, then process everything.
        Otherwise images already recorded (same size and mtime) are skipped.
    manifest_format : {"jsonl", "csv"}
        Manifest file format.
    chunk_size : int, optional
        Images per task (at most; locally smaller when there are few images per
        worker). Default: :data:`CHUNK_SIZE`, or
        :data:`facealign.cluster.CLUSTER_CHUNK_SIZE` with ``client``.
    progress : callable, optional
        ``progress(done, total)``, called with ``done = 0`` before the first
        image and after each chunk, in the parent process; ``total`` counts the
        images this run processes. An exception raised by it stops the job
        after the chunk's records were written.
    max_expected_error : float, optional
        Do not crop faces whose ``expected_error`` (% of the inter-ocular
        distance) is above this; list them in the failures file as ``low quality``.
    max_p_fail : float, optional
        The same for ``p_fail``, the probability that the error exceeds 10%.
        The limits apply to the images this run processes.
    client : distributed.Client, optional
        Run the chunks on this Dask cluster instead of local processes
        (``jobs`` is then ignored; :mod:`facealign.cluster`). Its workers must
        see ``in_dir`` and ``out_dir`` at the same paths (checked before any
        work); only this process writes the records.

    Returns
    -------
    Summary

    Raises
    ------
    CropJobTransientError
        The job stopped on an error writing OUT_DIR (disk full, I/O, permission,
        too many open files) or found workers of a killed job still running;
        the records are consistent, rerun to continue.
    CropJobError
        Missing ``in_dir``, ``out_dir`` inside or around ``in_dir``, unknown
        settings, records written with other settings (rerun with overwrite),
        cluster workers that cannot use the folders.
    """
    start = time.perf_counter()
    in_path, out_path = Path(in_dir), Path(out_dir)
    mname = manifest_name(manifest_format)
    if chunk_size is None:
        chunk_size = CHUNK_SIZE if client is None else _cluster_chunk_size()
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    settings = CropSettings(detector, engine, template, size, min_face, max_expected_error, max_p_fail)
    _resolve_jobs(jobs, 0)  # reject bad values before any work
    if fmt is not None and fmt not in OUTPUT_FORMATS:
        raise CropJobError(f"unknown output format {fmt!r}; choose one of {list(OUTPUT_FORMATS)}")
    try:  # fail early on unknown names or missing weights (workers build their own)
        resolved = _validate_settings(settings)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise CropJobError(str(exc)) from exc
    if (max_expected_error is not None or max_p_fail is not None) and get_aligner(settings).engine.quality_model is None:
        raise CropJobError(f"the {engine} weights carry no quality model (run facealign fit-quality); "
                           "--max-expected-error and --max-p-fail need one")
    src, dst = _check_dirs(in_path, out_path)
    if client is not None:
        from .cluster import check_workers

        check_workers(client, src, dst)
    summary = Summary(manifest=str(out_path / mname), failures_file=str(out_path / FAILURES_NAME))
    try:
        with _Lock(dst):
            _run_locked(src, dst, settings, resolved, largest_only, jobs, fmt, overwrite, manifest_format,
                        chunk_size, progress, summary, start, client)  # fmt: skip
    except OSError as exc:  # reading IN_DIR never raises (see scan_folder, the workers): OUT_DIR does
        where = f" {portable_name(str(exc.filename))!r}" if exc.filename else ""
        raise CropJobTransientError(
            f"cannot write to OUT_DIR{where}: {exc.strerror or exc}; fix it and rerun to continue"
        ) from exc
    summary.seconds = time.perf_counter() - start
    return summary


def _run_locked(
    src: Path, dst: Path, settings: CropSettings, resolved: Any, largest_only: bool, jobs: "int | str | None",
    fmt: str | None, overwrite: bool, manifest_format: str, chunk_size: int,
    progress: Callable[[int, int], None] | None, summary: Summary, start: float,
    client: "distributed.Client | None" = None,
) -> None:  # fmt: skip
    """The body of :func:`run_crop_job`, run while OUT_DIR is locked."""
    other = dst / manifest_name("csv" if manifest_format == "jsonl" else "jsonl")
    if overwrite:
        _remove_unrecorded(dst, set())
        _clear(dst)
    elif other.exists():
        raise CropJobError(
            f"{str(Path(summary.manifest).parent / other.name)!r} holds records of an earlier run in the other "
            f"format; rerun with --manifest-format {other.suffix[1:]} or --overwrite"
        )
    try:
        scan = scan_folder(src)
    except OSError as exc:
        raise CropJobError(f"cannot list IN_DIR {str(src)!r}: {exc.strerror or exc}") from exc
    tasks, unreadable = _plan(src, scan, fmt)
    summary.ignored = scan.ignored
    wanted = _job_settings(settings, resolved, largest_only, fmt)
    has_records = _has_records(dst)
    _check_settings(dst, wanted, has_records)
    current = {t.source: (t.size, t.mtime_ns) for t in tasks + [t for t, _ in unreadable]}
    hidden = [f.relative_to(src).as_posix() + "/" for f in scan.unreadable_folders]
    if not current and not hidden and has_records:
        raise CropJobError(
            f"IN_DIR {str(src)!r} holds no images, but OUT_DIR holds the records of earlier runs; if IN_DIR is "
            "not mounted, mount it; to empty OUT_DIR, rerun with --overwrite"
        )
    records = _load_records(dst, manifest_format, current, lambda source: source.startswith(tuple(hidden)))
    summary.gone = records.gone
    legacy = (resolved.name, settings.engine, settings.detector, str(resolved.size[0]))
    if records.settings is not None and records.settings != legacy:
        raise CropJobError(
            "OUT_DIR holds crops made with other settings "
            f"(template, engine, detector, size = {', '.join(records.settings)}); "
            "rerun with --overwrite or choose another OUT_DIR"
        )
    _rewrite(dst / _SETTINGS_NAME, json.dumps(wanted, indent=1) + "\n")
    _remove_unrecorded(dst, records.outputs, records.dropped)
    todo = [t for t in tasks if records.done.get(t.source) != (t.size, t.mtime_ns)]
    summary.images, summary.skipped = len(current), len(tasks) - len(todo)
    taken = _taken_outputs(dst, todo, records.outputs)
    early = unreadable + [
        (t, f"output name taken: {taken[t.source]} in OUT_DIR was not written by facealign; move it away and rerun")
        for t in todo
        if t.source in taken
    ]
    todo = [t for t in todo if t.source not in taken]
    _rewrite(dst / _PENDING_NAME, "".join(json.dumps([t.output_stem, t.ext]) + "\n" for t in todo))
    manifest_path = dst / manifest_name(manifest_format)
    new_csv = manifest_format == "csv" and (not manifest_path.exists() or manifest_path.stat().st_size == 0)
    with open(manifest_path, "ab", buffering=0) as manifest, open(dst / FAILURES_NAME, "ab", buffering=0) as failures:
        if new_csv:
            _append(manifest, ",".join(CSV_COLUMNS) + "\n")
        _append(failures, "".join(json.dumps(_failure(t, reason), ensure_ascii=False) + "\n" for t, reason in early))
        summary.processed += len(early)
        summary.failures += len(early)
        if progress is not None:
            progress(0, len(todo))
        done = 0
        n_jobs = _resolve_jobs(jobs, len(todo))
        for chunk_tasks, chunk in _run_chunks(todo, settings, largest_only, dst, n_jobs, chunk_size, client):
            rows = [r for image_rows, _ in chunk.results for r in image_rows]
            fails = [f for _, f in chunk.results if f is not None]
            _append(manifest, _encode_rows(rows, manifest_format))
            _append(failures, "".join(json.dumps(f, ensure_ascii=False) + "\n" for f in fails))
            summary.processed += len(chunk.results)
            summary.faces += len(rows)
            summary.failures += len(fails)
            summary.chunks += 1
            if chunk.stopped is not None:
                raise CropJobTransientError(f"{chunk.stopped}; fix it and rerun to continue")
            done += len(chunk_tasks)
            summary.seconds = time.perf_counter() - start
            if progress is not None:
                progress(done, len(todo))
    (dst / _PENDING_NAME).unlink()  # every crop written is recorded


def _cluster_chunk_size() -> int:
    from .cluster import CLUSTER_CHUNK_SIZE

    return CLUSTER_CHUNK_SIZE


def _validate_settings(settings: CropSettings) -> Any:
    """The crop template of ``settings``, after checking the detector, engine and template
    without loading the landmark network (the parent process only writes records; the
    workers build their own).
    """
    from .alignment import get_template

    weights = shipped_runtime_weights(settings.engine)
    if not weights.is_file():
        raise FileNotFoundError(f"no weights file at {weights}")
    get_detector(settings.detector, min_face=settings.min_face)
    return get_template(settings.template, settings.size)


def _resolve_jobs(jobs: "int | str | None", n_images: int) -> int:
    """Worker processes for ``n_images`` images (see ``jobs`` in :func:`run_crop_job`)."""
    import joblib

    cores = max(1, joblib.cpu_count())
    if jobs is None or jobs == "auto":
        return max(1, min(cores, n_images // AUTO_IMAGES_PER_PROCESS))
    if jobs == -1:
        return cores
    if isinstance(jobs, str) or jobs < 1:
        raise CropJobError(f"jobs must be a positive number of processes, 'auto' or -1 for all cores, got {jobs!r}")
    return int(jobs)


def _clear(out_dir: Path) -> None:
    """Delete the records of earlier runs and the crops they list (``overwrite``)."""
    for fmt in MANIFEST_FORMATS:
        manifest = out_dir / manifest_name(fmt)
        if manifest.exists():
            try:
                entries, _ = _manifest_entries(manifest, fmt)
            except CropJobError:
                entries = []  # not ours to interpret: remove the file only
            for info, _ in entries:
                _remove_output(out_dir, info["output"])
            manifest.unlink()
    for name in (FAILURES_NAME, _SETTINGS_NAME, _PENDING_NAME, _STARTED_NAME):
        _unlink_quietly(out_dir / name)


def balanced_chunk_size(n_images: int, n_workers: int, chunk_size: int) -> int:
    """Images per chunk: at most ``chunk_size``, and fewer when that gives under four chunks
    per worker, so that every worker stays busy to the end; ``chunk_size`` with one worker."""
    if n_workers <= 1:
        return chunk_size
    return max(1, min(chunk_size, math.ceil(n_images / (4 * n_workers))))


def _run_chunks(
    todo: list[_Task], settings: CropSettings, largest_only: bool, out_dir: Path, n_jobs: int, chunk_size: int,
    client: "distributed.Client | None" = None,
) -> Iterator[tuple[list[_Task], _ChunkResult]]:
    """Yield ``(tasks, results)`` per chunk, in order, running chunks in parallel when ``n_jobs > 1``,
    or on a Dask cluster, in the order they complete, with ``client``
    (:func:`facealign.cluster.run_chunks_on_cluster`).

    With worker processes, a worker that dies (a crash in a decoder, killed for
    memory) does not stop the job: the images of every chunk that had started
    and not finished are redone one per worker process
    (:func:`_process_isolated`), and the image that kills its process again gets
    a failure; the other chunks run on as before. (In one process, such an image
    ends the job.)
    """
    if not todo:
        return
    if client is not None:
        from .cluster import run_chunks_on_cluster

        yield from run_chunks_on_cluster(client, todo, settings, largest_only, out_dir, chunk_size)
        return
    n_jobs = min(n_jobs, len(todo))
    size = balanced_chunk_size(len(todo), n_jobs, chunk_size)
    chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
    if n_jobs == 1:
        for chunk in chunks:
            yield chunk, _process_chunk(chunk, settings, largest_only, str(out_dir), False)
        return
    from joblib import Parallel, delayed
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    parent = os.getpid()
    started = out_dir / _STARTED_NAME
    while chunks:
        _rewrite(started, "")
        parallel = Parallel(n_jobs=n_jobs, backend="loky", return_as="generator")
        results = parallel(
            delayed(_process_chunk)(c, settings, largest_only, str(out_dir), True, parent, i) for i, c in enumerate(chunks)
        )
        done, died = 0, False
        try:
            for chunk, result in zip(chunks, results):
                yield chunk, result
                done += 1
        except TerminatedWorkerError:
            died = True
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()
        if not died:
            break
        text, _ = _read_text(started)
        suspects = {int(i) for i in text.split() if i.isdigit() and int(i) >= done} or {done}
        yield from _process_isolated([t for i in sorted(suspects) for t in chunks[i]], settings, largest_only, out_dir)
        chunks = [c for i, c in enumerate(chunks) if i >= done and i not in suspects]
    _unlink_quietly(started)


def _process_isolated(
    tasks: list[_Task], settings: CropSettings, largest_only: bool, out_dir: Path
) -> Iterator[tuple[list[_Task], _ChunkResult]]:
    """Each image in turn in one worker process; an image whose process dies gets a
    failure, and a new process takes the next one."""
    from joblib.externals.loky.process_executor import ProcessPoolExecutor, TerminatedWorkerError

    executor = None
    try:
        for task in tasks:
            executor = executor or ProcessPoolExecutor(max_workers=1)
            try:
                result = executor.submit(_process_chunk, [task], settings, largest_only, str(out_dir), True,
                                         os.getpid()).result()  # fmt: skip
            except TerminatedWorkerError:
                reason = "failed: the worker process died on it (a crash in a decoder, or killed for memory)"
                result = _ChunkResult([([], _failure(task, reason))])
                executor.shutdown(wait=True)
                executor = None
            yield [task], result
    finally:
        if executor is not None:
            executor.shutdown(wait=True, kill_workers=True)
