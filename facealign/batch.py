"""The ``facealign crop`` batch job: every face of every image in a folder, aligned.

Layout
------
``IN_DIR`` is walked recursively and its
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
current run may write (appended a folder at a time, before that folder's images
go out); ``.facealign-crop.dropped`` lists the records a run dropped (sources
gone or changed) until it has rewritten the record files without them.

The walk streams
----------------
The job never lists ``IN_DIR`` as a whole. A first pass counts image names
(:func:`facealign.imageio.count_images`: names only, no ``stat``, no list) to
size the job (``jobs="auto"``, the chunk size, the progress total) and to refuse
an ``IN_DIR`` without images when ``OUT_DIR`` has records. Then
:func:`facealign.imageio.walk_images` lists one folder at a time, in the order
of :func:`facealign.imageio.scan_folder`, and :class:`_Planner` plans each
folder when the walk reaches it (output names, its records, the pending list);
its images go out in chunks while the walk goes on, and the walk advances only
as chunks are submitted. So the driver holds the chunks in flight, the folder
being walked and the entries still to walk of the folders above it: a folder of
a million images costs as much as a listing of a million images, and a tree of
ten million images in folders of a few thousand costs a few thousand entries.
The records of earlier runs (:func:`_load_records`) are held for the whole run:
memory proportional to the images already recorded, the work done. Output names
are those of planning the whole tree at once (:func:`_plan`), as collisions can
only happen within a folder or between folders whose names differ only in case
or by ``%XX`` (their names are kept until the walk leaves their parent folder).

Resuming
--------
Records are written by the parent process as results arrive and flushed after
each chunk of images. The rows of one image are written in a single write, and
only after all its crops have been written (each atomically, with
:func:`facealign.imageio.write_image_atomic`), so an image is recorded either
completely or not at all. A manifest row is the only thing that makes a crop
done: on a rerun, files named like the crops of the pending list (or of dropped
records) that the manifest does not list are deleted (the pending list only names
the folders the killed run had reached: it could not write elsewhere), and files named like a
crop that no run of the job planned (the user's) are never overwritten: their
image gets an ``output name taken`` failure. Images recorded in the manifest or
the failures list with the same relative path, byte size and modification time
are skipped; an image that changed since it was recorded is processed again and
its old rows and crops are dropped, and so are those of a source no longer in
``IN_DIR`` (unless it lies in a sub-folder that could not be listed): as the walk
reaches the source's folder (before any image of it goes out, so a new source
may take the name), or, for folders gone as a whole, at the end of the walk. Their
crops are deleted at once, after they are listed in the dropped list; the
record files are rewritten without their rows at the end of the run (streaming),
or by the next run if this one is killed first. Failures
in :data:`RETRIED_REASONS` are retried by every run. A torn last line (the job
killed mid-write) is discarded. ``overwrite=True`` deletes the records and the
crops they list and starts again.

Errors
------
Nothing in ``IN_DIR`` stops a job (:func:`facealign.imageio.walk_images`; every
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

import collections
import csv
import dataclasses
import errno
import io
import itertools
import json
import math
import os
import re
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .constants import DEFAULT_DETECTOR, POINT_NAMES, WORK_MAX_SIDE, shipped_runtime_weights
from .detection import get_detector
from .imageio import (
    PART_SUFFIX,
    FolderScan,
    _list_folder,
    atomic_file,
    count_images,
    name_from_b64,
    portable_name,
    raw_name_b64,
    walk_images,
    write_bytes_atomic,
    write_image_atomic,
)
from .pipeline import BATCH_PIXELS, Face, ImageFaces, iter_image_faces


if TYPE_CHECKING:  # torch-heavy; imported lazily at run time
    import distributed

    from .aligner import FaceAligner

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
#: The records a run dropped (sources gone from IN_DIR or changed), one JSON
#: ``[source, bytes, mtime_ns]`` a line, written before their crops are deleted;
#: the record files are rewritten without them at the end of the run, or by the
#: next run when this one is killed first.
_DROPPED_NAME = ".facealign-crop.dropped"
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
# Aligner cache (the pipeline itself is facealign.pipeline, shared with the CLI)
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
    faces = item.faces()
    template = aligner.template
    written: list[Path] = []
    try:
        for k, (face, aligned) in enumerate(zip(faces, aligner.align_faces(item))):
            output = f"{task.output_stem}_{k}{task.ext}"
            written.append(write_image_atomic(out_dir / output, aligned.crop))
            rows.append(_crop_row(task, settings, item, k, face, aligned.transform, output, template))
    except BaseException:
        for path in written:  # an image is recorded completely or not at all
            _unlink_quietly(path)
        raise
    return rows


def _crop_row(
    task: _Task, settings: CropSettings, item: ImageFaces, k: int, face: Face, transform: np.ndarray,
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
    """What earlier runs recorded: the identity of each recorded source, and its crops.

    Held for the whole job: memory proportional to the images already recorded
    (the work done), not to IN_DIR.
    """

    done: dict[str, tuple[int, int]] = field(default_factory=dict)  # source -> (bytes, mtime_ns)
    settings: tuple[str, str, str, str] | None = None  # template, engine, detector, width
    outputs: set[str] = field(default_factory=set)  # crops listed in the manifest
    dropped: set[tuple[str, str]] = field(default_factory=set)  # (stem, ext) of the crops of dropped rows
    gone: int = 0  # sources no longer in IN_DIR whose records were dropped
    crops: dict[str, list[str]] = field(default_factory=dict)  # source -> its crops (manifest rows)
    failure_rows: Counter = field(default_factory=Counter)  # source -> its failure rows
    folders: dict[str, set[str]] = field(default_factory=dict)  # folder of a source -> recorded sources there

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


def _load_records(out_dir: Path, fmt: str) -> _Records:
    """Read earlier records, dropping incomplete images and the rows a killed run had dropped.

    Which sources are gone from IN_DIR or changed is not known yet (the walk
    streams): :class:`_Planner` drops their records folder by folder
    (:meth:`_Planner.drop`). Here the rows named in the dropped list
    (``.facealign-crop.dropped``) of a run that was killed before it rewrote
    the record files are removed, as are incomplete images (with their crops)
    and failures in :data:`RETRIED_REASONS` (retried). The record files are
    rewritten when rows are dropped, so every crop is listed exactly once
    afterwards.
    """
    records = _Records()
    tombstones = _read_dropped(out_dir / _DROPPED_NAME)
    manifest = out_dir / manifest_name(fmt)
    entries, dropped = _manifest_entries(manifest, fmt)
    live = []
    for info, raw in entries:
        if (info["source"], info["id"]) in tombstones:  # its crops were removed, or are unrecorded now
            dropped = True
            match = _CROP_NAME.match(info["output"])
            if match:
                records.dropped.add((match["stem"], match["ext"]))
        else:
            live.append((info, raw))
    groups: dict[str, list[dict[str, Any]]] = {}
    for info, _ in live:
        groups.setdefault(info["source"], []).append(info)
    keep = set()
    for source, group in groups.items():
        complete = len({r["id"] for r in group}) == 1 and sorted(r["face"] for r in group) == list(
            range(group[0]["num_faces"])
        )
        if complete:
            keep.add(source)
            records.done[source] = group[0]["id"]
            records.settings = records.settings or group[0]["settings"]
            records.outputs.update(r["output"] for r in group)
            records.crops[source] = [r["output"] for r in group]
        else:
            for r in group:
                _remove_output(out_dir, r["output"])
                match = _CROP_NAME.match(r["output"])
                if match:
                    records.dropped.add((match["stem"], match["ext"]))
    if dropped or len(keep) != len(groups):
        _write_manifest(manifest, fmt, [raw for info, raw in live if info["source"] in keep])

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
        low_quality = row.get("reason") == LOW_QUALITY
        if (
            retried
            or (source, ident) in tombstones
            or (source in keep and not low_quality)
            or (source in groups and source not in keep)
        ):
            dropped = True  # retried, dropped by a killed run, superseded by crops, or its image is redone
            continue
        records.done.setdefault(source, ident)
        records.failure_rows[source] += 1
        kept_lines.append(line)
    if dropped:
        _rewrite(failures_path, "".join(line + "\n" for line in kept_lines))
    _unlink_quietly(out_dir / _DROPPED_NAME)  # applied
    for source in records.done:
        records.folders.setdefault(source.rpartition("/")[0], set()).add(source)
    return records


def _read_dropped(path: Path) -> set[tuple[str, tuple[int, int]]]:
    """The ``(source, (bytes, mtime_ns))`` of the records a run dropped (see :class:`_Planner`)."""
    text, _ = _read_text(path)
    found = set()
    for line in text.splitlines():
        try:
            source, size, mtime_ns = json.loads(line)
            found.add((str(source), (int(size), int(mtime_ns))))
        except (ValueError, TypeError):
            continue
    return found


def _filter_records(path: Path, fmt: str, drop: set[tuple[str, tuple[int, int]]]) -> None:
    """Rewrite a record file (``fmt``: ``"jsonl"`` or ``"csv"``) without the rows of ``drop``,
    streaming (one row in memory at a time), atomically (the temporary is renamed onto it)."""
    if not path.exists():
        return
    with open(path, encoding="utf-8", errors="replace", newline="") as source, \
            atomic_file(path, "w", encoding="utf-8", newline="") as target:  # fmt: skip
        if fmt == "jsonl":
            for line in source:
                try:
                    row = json.loads(line)
                    key = (_record_key(row), (int(row["source_bytes"]), int(row["source_mtime_ns"])))
                except (ValueError, KeyError, TypeError):
                    key = None  # left to the next run's checks
                if key not in drop:
                    target.write(line)
        else:
            reader, writer = csv.reader(source), csv.writer(target, lineterminator="\n")
            for n, values in enumerate(reader):
                row = dict(zip(CSV_COLUMNS, values))
                try:
                    key = (_record_key(row), (int(row["source_bytes"]), int(row["source_mtime_ns"])))
                except (ValueError, KeyError, TypeError):
                    key = None  # the header, or left to the next run's checks
                if n == 0 or key not in drop:
                    writer.writerow(values)


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
    """One task per image of a whole :func:`facealign.imageio.scan_folder` listing (the planning of
    facealign 0.3, kept as the reference the streaming planner, :class:`_Planner`, must match).

    Returns the tasks of the readable images, and ``(task, reason)`` for the
    image-named entries that cannot be read (broken links, FIFOs, ...).
    """
    planned = _plan_images(in_dir, scan.images, fmt, set())
    return [t for t, p in planned if p is None], [(t, f"unreadable file: {p}") for t, p in planned if p is not None]


def _plan_images(
    in_dir: Path, images: Sequence[tuple[Path, "os.stat_result | None", "str | None"]], fmt: str | None,
    taken: set[tuple[str, str]], twins: Sequence[Path] = (),
) -> list[tuple[_Task, "str | None"]]:  # fmt: skip
    """``(task, problem)`` per image, in order, with collision-free output names (see the module notes).

    ``images`` are :attr:`facealign.imageio.FolderScan.images`, sorted by path
    components. Sources of one folder whose names differ only in extension or
    case get the full name as stem; output names are valid UTF-8
    (:func:`facealign.imageio.portable_name`); should two still coincide
    (case-insensitively: also across folders whose names differ only in case),
    the later one gets ``~1``, ``~2``, ... added. ``taken`` holds the
    ``(lower-case stem, ext)`` already given out, and is updated: names can only
    coincide between sources whose folders have the same lower-case portable
    name, so it need only hold the names of those folders. ``twins`` are the
    image paths of other folders with the same portable name as the folder of
    ``images`` (one named with bytes that are not UTF-8, one with their ``%XX``):
    their names count as the folder's own when choosing stems.
    """

    def key(path: Path) -> tuple[str, str, str]:
        rel = path.relative_to(in_dir)
        return portable_name(rel.parent.as_posix()), portable_name(rel.stem).lower(), _output_ext(path, fmt)

    paths = [path for path, _, _ in images]
    rels = [p.relative_to(in_dir) for p in paths]
    keys = [key(p) for p in paths]
    exts = [k[2] for k in keys]
    counts = Counter(keys) + Counter(key(p) for p in twins)
    planned: list[tuple[_Task, str | None]] = []
    for (path, info, problem), rel, ext, key in zip(images, rels, exts, keys):
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
        planned.append((_Task(rel.as_posix(), str(path), unique, ext, size, mtime_ns), problem))
    return planned


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
    The pending file is read a folder at a time (:func:`_pending_groups`).
    """
    for names in _pending_groups(out_dir):
        _remove_crops_named(out_dir, names, recorded, parts=True)
    by_folder: dict[str, set[tuple[str, str]]] = {}
    for stem, ext in dropped:
        by_folder.setdefault(_folder(stem), set()).add((stem, ext))
    for names in by_folder.values():
        _remove_crops_named(out_dir, names, recorded, parts=True)


def _remove_crops_named(out_dir: Path, names: set[tuple[str, str]], recorded: set[str], parts: bool) -> None:
    """Delete the files named like crops of ``names`` (``(stem, ext)``) that ``recorded`` does not
    list, and with ``parts`` the ``.part`` temporaries in their folders."""
    crops, temporaries = _crop_files(out_dir, {_folder(stem) for stem, _ in names})
    for key in names:
        for rel in crops.get(key, []):
            if rel not in recorded:
                _remove_output(out_dir, rel)
    for part in temporaries if parts else ():
        _unlink_quietly(part)


def _pending_groups(out_dir: Path) -> Iterator[set[tuple[str, str]]]:
    """The ``(stem, ext)`` of the pending file, a group of consecutive lines of one output
    folder at a time (the planner appends a folder at a time), read as a stream."""
    path = out_dir / _PENDING_NAME
    try:
        handle = open(path, encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    with handle:
        group: set[tuple[str, str]] = set()
        folder = None
        for line in handle:
            if not line.endswith("\n"):
                continue  # torn
            try:
                stem, ext = json.loads(line)
                stem, ext = str(stem), str(ext)
            except (ValueError, TypeError):
                continue
            if group and _folder(stem) != folder:
                yield group
                group = set()
            folder = _folder(stem)
            group.add((stem, ext))
        if group:
            yield group


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
        Worker processes (loky, joblib's process pool). ``"auto"`` (default;
        also None) runs one process per :data:`AUTO_IMAGES_PER_PROCESS` images
        to process, at most one per core, so small jobs run in this process;
        the images to process are estimated before the walk, as the image names
        counted in ``in_dir`` less the images recorded in ``out_dir``. -1 means
        all cores. With more than one, each worker runs the networks and OpenCV
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
        images this run processes: until the walk has finished it is the
        estimate of ``jobs="auto"`` (or the images planned so far, if more), then
        exact, so it may change between calls. An exception raised by it stops
        the job after the chunk's records were written.
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
    """The body of :func:`run_crop_job`, run while OUT_DIR is locked.

    IN_DIR is walked twice: a count of image names (:func:`facealign.imageio.count_images`:
    no ``stat``, no list) sizes the job (``jobs="auto"``, the chunk size, the
    progress total) and guards against an empty IN_DIR; then the walk that plans
    streams (:func:`facealign.imageio.walk_images`): each folder is planned
    (:class:`_Planner`) when the walk reaches it, and its images go out in chunks
    while the walk goes on, so the driver holds the chunks in flight and the
    folders being walked, never the listing of IN_DIR.
    """
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
        found, unlistable = count_images(src)
    except OSError as exc:
        raise CropJobError(f"cannot list IN_DIR {str(src)!r}: {exc.strerror or exc}") from exc
    wanted = _job_settings(settings, resolved, largest_only, fmt)
    has_records = _has_records(dst)
    _check_settings(dst, wanted, has_records)
    if not found and not unlistable and has_records:
        raise CropJobError(
            f"IN_DIR {str(src)!r} holds no images, but OUT_DIR holds the records of earlier runs; if IN_DIR is "
            "not mounted, mount it; to empty OUT_DIR, rerun with --overwrite"
        )
    records = _load_records(dst, manifest_format)
    legacy = (resolved.name, settings.engine, settings.detector, str(resolved.size[0]))
    if records.settings is not None and records.settings != legacy:
        raise CropJobError(
            "OUT_DIR holds crops made with other settings "
            f"(template, engine, detector, size = {', '.join(records.settings)}); "
            "rerun with --overwrite or choose another OUT_DIR"
        )
    _rewrite(dst / _SETTINGS_NAME, json.dumps(wanted, indent=1) + "\n")
    _remove_unrecorded(dst, records.outputs, records.dropped)
    records.dropped.clear()
    _rewrite(dst / _PENDING_NAME, "")
    # Images to process, as far as names tell: what the count found less what is recorded.
    estimate = max(0, found - len(records.done))
    manifest_path = dst / manifest_name(manifest_format)
    new_csv = manifest_format == "csv" and (not manifest_path.exists() or manifest_path.stat().st_size == 0)
    with open(manifest_path, "ab", buffering=0) as manifest, open(dst / FAILURES_NAME, "ab", buffering=0) as failures:
        if new_csv:
            _append(manifest, ",".join(CSV_COLUMNS) + "\n")
        planner = _Planner(src, dst, fmt, records, failures, summary, estimate)
        try:
            try:
                walk = walk_images(src, planner.plan_folder)
            except OSError as exc:
                raise CropJobError(f"cannot list IN_DIR {str(src)!r}: {exc.strerror or exc}") from exc
            if progress is not None:
                progress(0, planner.total())
            done = 0
            n_jobs = _resolve_jobs(jobs, estimate)
            for chunk_tasks, chunk in _run_chunks(planner.tasks(walk), estimate, settings, largest_only, dst, n_jobs,
                                                  chunk_size, client):  # fmt: skip
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
                    progress(done, planner.total())
            planner.finish()
        finally:
            planner.close()
    summary.gone = records.gone
    if planner.dropped:  # rows of sources gone or changed: remove them, then forget the list
        _filter_records(manifest_path, manifest_format, planner.dropped)
        _filter_records(dst / FAILURES_NAME, "jsonl", planner.dropped)
        _unlink_quietly(dst / _DROPPED_NAME)
    (dst / _PENDING_NAME).unlink()  # every crop written is recorded


class _Planner:
    """Plans the crop job one folder at a time, as the walk reaches it (the ``plan`` of
    :func:`facealign.imageio.walk_images`), and does each folder's bookkeeping before any
    of its images goes out:

    * output names (:func:`_plan_images`): names can only collide between
      sources of folders with the same lower-case portable name, which are
      siblings or lie in sibling folders whose names differ only in case or by
      ``%XX``. The names given out in those are kept until the walk leaves their
      common parent, and a folder with the same portable name as others counts
      their image names too (it lists them once more); all other folders are
      planned on their own. So the names are those of planning the whole tree
      at once (:func:`_plan`);
    * records: the recorded sources of the folder that are gone or changed are
      dropped (:meth:`drop`), sources recorded unchanged are skipped; a recorded
      folder the walk never reached is gone at the end (:meth:`finish`), unless
      it lies in a folder that could not be listed;
    * failures of unreadable files and of names a user's file holds are appended;
    * the folder's images to process are appended, durably, to the pending file
      before the first of them is yielded (:meth:`tasks`).

    Memory: the records (:class:`_Records`, the work done), the folder being
    planned (so a folder of a million images costs the driver as much as a
    listing of a million images), and the names of case-variant folders.
    """

    def __init__(self, src: Path, dst: Path, fmt: str | None, records: _Records, failures: io.RawIOBase,
                 summary: Summary, estimate: int) -> None:  # fmt: skip
        self.src, self.dst, self.fmt, self.records = src, dst, fmt, records
        self.failures, self.summary, self.estimate = failures, summary, estimate
        self.planned = 0  # images to process planned so far
        self.walked = False
        self.hidden: list[str] = []  # "folder/" of the sub-folders that could not be listed
        self.dropped: set[tuple[str, tuple[int, int]]] = set()
        self._dropped_file: io.RawIOBase | None = None
        self._pending = open(dst / _PENDING_NAME, "ab", buffering=0)
        #: Case-variant groups being walked: (parent folder, lower-case keys of the variants).
        self._groups: list[tuple[str, list[str]]] = []
        self._taken: dict[str, set[tuple[str, str]]] = {}  # lower-case folder key -> names given out there
        #: Portable folder path -> the folders with that portable name, when there are several.
        self._twins: dict[str, list[Path]] = {}

    def total(self) -> int:
        """Images to process: exact once the walk is done, else the estimate from the count."""
        return self.planned if self.walked else max(self.estimate, self.planned)

    def tasks(self, walk: Iterator[_Task]) -> Iterator[_Task]:
        yield from walk
        self.walked = True

    def plan_folder(self, folder: Path, scan: FolderScan) -> list[_Task | None]:
        """The tasks of ``scan.images`` (None for those not processed now), after the bookkeeping."""
        rel = folder.relative_to(self.src).as_posix()
        rel = "" if rel == "." else rel
        self.summary.ignored.update(scan.ignored)
        if scan.unreadable_folders:
            self.hidden.append(rel + "/")
            return []
        twins = self._twins_of(folder, rel, scan.folders)
        planned = _plan_images(self.src, scan.images, self.fmt, self._taken_set(rel, scan.folders), twins)
        self._judge(rel, {t.source: (t.size, t.mtime_ns) for t, _ in planned})
        self.summary.images += len(planned)
        readable = [t for t, problem in planned if problem is None]
        todo = [t for t in readable if self.records.done.get(t.source) != (t.size, t.mtime_ns)]
        self.summary.skipped += len(readable) - len(todo)
        taken = _taken_outputs(self.dst, todo, self.records.outputs) if todo else {}
        early = [(t, f"unreadable file: {problem}") for t, problem in planned if problem is not None] + [
            (t, f"output name taken: {taken[t.source]} in OUT_DIR was not written by facealign; move it away and rerun")
            for t in todo
            if t.source in taken
        ]
        todo = [t for t in todo if t.source not in taken]
        _append(self.failures, "".join(json.dumps(_failure(t, reason), ensure_ascii=False) + "\n" for t, reason in early))
        self.summary.processed += len(early)
        self.summary.failures += len(early)
        _append(self._pending, "".join(json.dumps([t.output_stem, t.ext]) + "\n" for t in todo))
        self.planned += len(todo)
        go = {t.source for t in todo}
        return [t if t.source in go else None for t, _ in planned]

    def _twins_of(self, folder: Path, rel: str, subfolders: list[Path]) -> list[Path]:
        """The images of the folders with the same portable name as ``folder`` (see
        :func:`_plan_images`), and the sub-folders of all of them; notes the twins among those."""
        path = portable_name(rel)
        others = [f for f in self._twins.get(path, ()) if f != folder]
        images: list[Path] = []
        subfolders = list(subfolders)
        for other in others:  # listed again when the walk reaches it; twins are rare
            try:
                _, scan = _list_folder(other)
            except OSError:
                continue
            images += [p for p, _, _ in scan.images]
            subfolders += scan.folders
        by_name: dict[str, list[Path]] = {}
        for sub in subfolders:
            by_name.setdefault(portable_name(sub.name), []).append(sub)
        for name, members in by_name.items():
            if len(members) > 1:
                self._twins[f"{path}/{name}" if path else name] = sorted(members)
        return images

    def _taken_set(self, rel: str, subfolders: list[Path]) -> set[tuple[str, str]]:
        """The names given out in folders with the same lower-case portable name as ``rel``."""
        key = portable_name(rel).lower()
        while self._groups and not _is_within(rel, self._groups[-1][0]):
            _, keys = self._groups.pop()  # the walk left their parent: forget their names
            outer = [g for _, more in self._groups for g in more]
            for name in [k for k in self._taken if any(_is_within(k, g) for g in keys)]:
                if not any(_is_within(name, g) for g in outer):
                    del self._taken[name]
        taken = self._taken.get(key, set())
        if any(_is_within(key, g) for _, keys in self._groups for g in keys):
            self._taken[key] = taken
        variants = Counter(portable_name(f.name).lower() for f in subfolders)
        shared = [f"{key}/{name}" if key else name for name, n in variants.items() if n > 1]
        if shared:
            self._groups.append((rel, shared))
        return taken

    def _judge(self, rel: str, current: dict[str, tuple[int, int]]) -> None:
        """Drop the records of the sources of folder ``rel`` that are gone or changed."""
        recorded = self.records.folders.pop(rel, set())
        gone = [s for s in recorded if s not in current]
        changed = [s for s in recorded if s in current and current[s] != self.records.done[s]]
        self.drop(sorted(gone), gone=True)
        self.drop(sorted(changed), gone=False)

    def drop(self, sources: list[str], gone: bool) -> None:
        """Drop the records of ``sources``: list them in the dropped file (durably, so that a
        killed run's rows are dropped by the next), then delete their crops (and files named
        like them that no record lists). The record files are rewritten at the end."""
        if not sources:
            return
        if self._dropped_file is None:
            self._dropped_file = open(self.dst / _DROPPED_NAME, "ab", buffering=0)
        records = self.records
        _append(self._dropped_file, "".join(json.dumps([s, *records.done[s]]) + "\n" for s in sources))
        names = set()
        for source in sources:
            self.dropped.add((source, records.done.pop(source)))
            crops = records.crops.pop(source, [])
            failures = records.failure_rows.pop(source, 0)
            records.gone += (bool(crops) + failures) if gone else 0
            for output in crops:
                _remove_output(self.dst, output)
                records.outputs.discard(output)
                match = _CROP_NAME.match(output)
                if match:
                    names.add((match["stem"], match["ext"]))
        _remove_crops_named(self.dst, names, records.outputs, parts=False)

    def finish(self) -> None:
        """After the walk: drop the records of the folders it never reached (gone from IN_DIR),
        except those inside folders that could not be listed (their images are unknown)."""
        for folder in sorted(self.records.folders):
            if not (folder + "/").startswith(tuple(self.hidden)):
                self.drop(sorted(self.records.folders[folder]), gone=True)
        self.records.folders.clear()

    def close(self) -> None:
        self._pending.close()
        if self._dropped_file is not None:
            self._dropped_file.close()


def _is_within(path: str, folder: str) -> bool:
    """Whether POSIX relative ``path`` is ``folder`` or inside it (``""`` is the root)."""
    return not folder or path == folder or path.startswith(folder + "/")


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
    for name in (FAILURES_NAME, _SETTINGS_NAME, _PENDING_NAME, _STARTED_NAME, _DROPPED_NAME):
        _unlink_quietly(out_dir / name)


def balanced_chunk_size(n_images: int, n_workers: int, chunk_size: int) -> int:
    """Images per chunk: at most ``chunk_size``, and fewer when that gives under four chunks
    per worker, so that every worker stays busy to the end; ``chunk_size`` with one worker."""
    if n_workers <= 1:
        return chunk_size
    return max(1, min(chunk_size, math.ceil(n_images / (4 * n_workers))))


#: Chunks per worker process submitted at a time with ``jobs > 1`` (joblib's
#: ``pre_dispatch``): one running and one queued in loky's call queue, so that no
#: worker waits for the driver and none waits in loky's own backlog (which its
#: ``shutdown(kill_workers=True)`` does not clear cleanly).
LOCAL_CHUNKS_IN_FLIGHT_PER_PROCESS: int = 2


def _batched(items: Iterable[_Task], size: int) -> Iterator[list[_Task]]:
    """Lists of ``size`` items (the last may be shorter), taken from ``items`` only when asked for."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _run_chunks(
    todo: Iterable[_Task], n_images: int, settings: CropSettings, largest_only: bool, out_dir: Path, n_jobs: int,
    chunk_size: int, client: "distributed.Client | None" = None,
) -> Iterator[tuple[list[_Task], _ChunkResult]]:
    """Yield ``(tasks, results)`` per chunk, in order, running chunks in parallel when ``n_jobs > 1``,
    or on a Dask cluster, in the order they complete, with ``client``
    (:func:`facealign.cluster.run_chunks_on_cluster`).

    ``todo`` is consumed a chunk at a time, as chunks are submitted (it is the
    streaming walk, :class:`_Planner`); ``n_images``, the number of images
    expected, sets the chunk size (:func:`balanced_chunk_size`). At most
    :data:`LOCAL_CHUNKS_IN_FLIGHT_PER_PROCESS` chunks per process are in flight.

    With worker processes, a worker that dies (a crash in a decoder, killed for
    memory) does not stop the job: loky then stops the other workers too, the
    ``.part`` temporaries in the folders of the chunks in flight are deleted,
    the images of every chunk that had started and not finished are redone one
    per worker process
    (:func:`_process_isolated`), and the image that kills its process again gets
    a failure; the other chunks run on as before. (In one process, such an image
    ends the job.)
    """
    if client is not None:
        from .cluster import run_chunks_on_cluster

        yield from run_chunks_on_cluster(client, todo, n_images, settings, largest_only, out_dir, chunk_size)
        return
    n_jobs = max(1, min(n_jobs, n_images))
    chunks = _batched(todo, balanced_chunk_size(n_images, n_jobs, chunk_size))
    if n_jobs == 1:
        for chunk in chunks:
            yield chunk, _process_chunk(chunk, settings, largest_only, str(out_dir), False)
        return
    yield from _run_in_processes(chunks, settings, largest_only, out_dir, n_jobs)


def _worker_pool(n_jobs: int) -> Any:
    """joblib's process pool (loky's reusable executor, shared with ``joblib.Parallel``) of
    ``n_jobs`` workers, with joblib's limits on the threads of native libraries in them."""
    from joblib.executor import get_memmapping_executor

    threads = str(max(1, (os.cpu_count() or 1) // n_jobs))
    env = {var: os.environ.get(var, threads) for var in _THREAD_VARS}
    if "ENABLE_IPC" not in os.environ:
        env["ENABLE_IPC"] = "1"
    return get_memmapping_executor(n_jobs, timeout=300, env=env)


#: Thread-count variables joblib sets in its worker processes.
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS", "NUMEXPR_NUM_THREADS")  # fmt: skip


def _run_in_processes(
    chunks: Iterator[list[_Task]], settings: CropSettings, largest_only: bool, out_dir: Path, n_jobs: int
) -> Iterator[tuple[list[_Task], _ChunkResult]]:
    """:func:`_run_chunks` with worker processes: chunks are taken from ``chunks`` and submitted
    as earlier ones are yielded, results are yielded in order."""
    from concurrent.futures import wait

    from joblib.externals.loky.process_executor import BrokenProcessPool

    parent = os.getpid()
    started = out_dir / _STARTED_NAME
    _rewrite(started, "")
    numbers = itertools.count()
    window: collections.deque[tuple[int, list[_Task], Any]] = collections.deque()
    again: collections.deque[list[_Task]] = collections.deque()  # chunks to submit again after a worker died
    executor = None
    finished = False
    try:
        while True:
            while len(window) < LOCAL_CHUNKS_IN_FLIGHT_PER_PROCESS * n_jobs:
                chunk = again.popleft() if again else next(chunks, None)
                if chunk is None:
                    break
                executor = executor or _worker_pool(n_jobs)
                number = next(numbers)
                window.append((number, chunk, executor.submit(
                    _process_chunk, chunk, settings, largest_only, str(out_dir), True, parent, number)))  # fmt: skip
            if not window:
                break
            number, chunk, future = window[0]
            try:
                result = future.result()
            except BrokenProcessPool:  # TerminatedWorkerError: a worker died; the pool is gone
                lost = list(window)
                window.clear()
                wait([f for _, _, f in lost])  # loky has killed every worker: none writes any more
                _, parts = _crop_files(out_dir, {_folder(t.output_stem) for _, c, _ in lost for t in c})
                for part in parts:  # the temporaries of the crops they were writing
                    _unlink_quietly(part)
                text, _ = _read_text(started)
                begun = {int(i) for i in text.split() if i.isdigit()} | {number}
                suspects = []
                for n, c, f in lost:
                    if f.exception() is None:
                        yield c, f.result()
                    elif n in begun:
                        suspects.extend(c)
                    else:
                        again.append(c)
                yield from _process_isolated(suspects, settings, largest_only, out_dir)
                _rewrite(started, "")
                executor = None
                continue
            window.popleft()
            yield chunk, result
        finished = True
    finally:
        if not finished and executor is not None:  # stopped early: no worker may go on writing
            executor.terminate(kill_workers=True)  # (cancelling its futures first breaks loky)
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
