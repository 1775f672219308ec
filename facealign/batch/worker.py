"""The worker side of the crop job: a chunk of images in, crops on disk and their records out.

Runs in worker processes (joblib's loky, or Dask workers: :mod:`facealign.cluster`)
or in the job's own process; builds the aligner once per process (:func:`get_aligner`).
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
import time
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..failures import FailureKind
from ..imageio import (
    encode_image,
    portable_name,
)
from ..pipeline import Face, ImageFaces, iter_image_faces
from .job import (
    _PERMANENT_WRITE_ERRNOS,
    _STARTED_NAME,
    _STOP_READ_ERRNOS,
    _TAKEN_WRITE_ERRNOS,
    LOW_QUALITY,
    CropSettings,
    _stop_message,
    _Task,
)
from .locks import _WorkersLock
from .outdir import StagedFile, close_folders, discard, open_append, stage_file, sync
from .records import _failure, _source_b64

if TYPE_CHECKING:  # for the annotations only
    from ..aligner import FaceAligner

_ALIGNERS: dict[CropSettings, FaceAligner] = {}


def get_aligner(settings: CropSettings, single_thread: bool = False) -> FaceAligner:
    """The :class:`FaceAligner` for ``settings``, built once per process.

    With ``single_thread`` (a worker process of a job that is parallel over
    processes), OpenCV and the networks' onnxruntime sessions (the detector's
    and the landmark engine's) run on one thread each (the worker's share of the
    cores goes to detecting several images at a time: :func:`detection_threads`).
    """
    if single_thread:
        _limit_threads()
    aligner = _ALIGNERS.get(settings)
    if aligner is None:
        from ..aligner import FaceAligner

        aligner = FaceAligner(
            settings.detector,
            settings.engine,
            settings.template,
            settings.size,
            settings.min_face,
            det_threshold=settings.det_threshold,
            providers=settings.providers,
        )
        _ALIGNERS[settings] = aligner
    if single_thread:
        for part in (aligner.engine, aligner.detector):
            if hasattr(part, "set_threads"):
                part.set_threads(1)
    return aligner


def detection_threads(aligner: FaceAligner, threads: int | None = None) -> int:
    """Images this process decodes and detects at a time (the ``threads`` of
    :func:`facealign.pipeline.iter_image_faces`): ``threads`` when given (a worker process of a
    job that is parallel over processes: its share of the cores, :func:`worker_threads`), else
    one per CPU the process may run on; one with a detector that is not ``thread_safe``. With
    more than one, each detection runs on one onnxruntime thread (faster on small photos than
    one detection at a time on all of them: ``docs/bench/crop_speed.md``)."""
    if not getattr(aligner.detector, "thread_safe", False):
        return 1
    if threads is None:
        from ..inference import available_cpus

        threads = available_cpus()
    if threads > 1 and hasattr(aligner.detector, "set_threads"):
        aligner.detector.set_threads(1)
    return max(1, threads)


def worker_threads(n_processes: int) -> int:
    """Detection threads of each of ``n_processes`` worker processes: the CPUs this process may
    run on, shared out (at least one each), so that ``--jobs N`` uses every core whatever N."""
    from ..inference import available_cpus

    return max(1, available_cpus() // max(1, n_processes))


def image_stream(
    settings: CropSettings,
    paths: Iterable[str | os.PathLike[str]],
    largest_only: bool,
    threads: int | None = None,
    batch_images: int | None = None,
) -> Generator[ImageFaces, None, None]:
    """:func:`facealign.pipeline.iter_image_faces` with the aligner of ``settings`` in this
    process: in a worker (``threads``, its share of the cores: :func:`worker_threads`) the
    networks and OpenCV on one thread each; in a process of its own (None) one detection per
    CPU at a time (:func:`detection_threads`). The one set-up of the crop job's and of
    ``facealign landmarks``'s detection."""
    aligner = get_aligner(settings, single_thread=threads is not None)
    return iter_image_faces(
        aligner,
        paths,
        largest_only=largest_only,
        threads=detection_threads(aligner, threads),
        batch_images=batch_images,
    )


def _round(values: np.ndarray, digits: int) -> list:
    return np.round(np.asarray(values, np.float64), digits).tolist()


def _crop_rows(
    item: ImageFaces, task: _Task, settings: CropSettings, aligner: FaceAligner, out_dir: Path, folders: dict[str, int]
) -> tuple[list[dict[str, Any]], list[StagedFile]]:
    """Warp every face of one image and write its crops to temporaries (:func:`stage_file`);
    its manifest rows and the temporaries (raises on failure, leaving none)."""
    rows = []
    faces = item.faces()
    template = aligner.template
    staged: list[StagedFile] = []
    try:
        for k, (face, aligned) in enumerate(zip(faces, aligner.align_faces(item))):
            output = f"{task.output_stem}_{k}{task.ext}"
            staged.append(stage_file(out_dir, output, encode_image(output, aligned.crop), folders))
            rows.append(_crop_row(task, settings, item, k, face, aligned.transform, output, template))
    except BaseException:
        discard(out_dir, staged)  # an image is recorded completely or not at all
        raise
    return rows, staged


def _crop_row(
    task: _Task,
    settings: CropSettings,
    item: ImageFaces,
    k: int,
    face: Face,
    transform: np.ndarray,
    output: str,
    template: Any,
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


def _low_quality_failure(item: ImageFaces, task: _Task, settings: CropSettings) -> dict[str, Any] | None:
    """Drop the faces over the quality limits from ``item``; their failure record, or None."""
    from ..quality import over_limits

    if settings.max_expected_error is None and settings.max_p_fail is None:
        return None
    faces = item.faces()
    over = over_limits(
        np.array([f.expected_error for f in faces]),
        np.array([f.p_fail for f in faces]),
        settings.max_expected_error,
        settings.max_p_fail,
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


@dataclass
class _ChunkResult:
    """What a worker returns for a chunk: per image ``(manifest rows, failure or None)``
    for the images finished, in order, and why it stopped early (``None``: it did not)."""

    results: list[tuple[list[dict[str, Any]], dict[str, Any] | None]]
    stopped: str | None = None
    #: Per image of ``results``, its crops written to temporaries, made durable, waiting for
    #: their names (:func:`facealign.batch.outdir.commit_files`); empty when none (or not given).
    files: list[list[StagedFile]] = field(default_factory=list)


def _process_chunk(
    tasks: list[_Task],
    settings: CropSettings,
    largest_only: bool,
    out_dir: str,
    threads: int,
    parent_pid: int | None = None,
    chunk_index: int | None = None,
) -> _ChunkResult:
    """Crop a chunk of images (see :class:`_ChunkResult`) in a worker (a local worker process or
    a Dask task): ``threads`` images detected at a time (its share of the cores,
    :func:`worker_threads`), the networks and OpenCV on one thread each. A job of one process
    runs :func:`_process_chunks_here` instead.

    In a worker process (``parent_pid`` given) the worker first makes sure it
    dies with the job's process and holds the workers lock of ``out_dir``
    while it writes (:func:`_own_worker`); it notes ``chunk_index``, when
    given, as started.
    """
    if parent_pid is not None:
        _own_worker(parent_pid)
        with _WorkersLock(Path(out_dir), shared=True):
            if chunk_index is not None:
                with open_append(Path(out_dir) / _STARTED_NAME) as started:
                    started.write(f"{chunk_index}\n".encode())
            return _process_chunk(tasks, settings, largest_only, out_dir, threads)
    items = image_stream(settings, [t.path for t in tasks], largest_only, threads)
    return _crop_items(tasks, items, settings, get_aligner(settings), Path(out_dir))


def _process_chunks_here(
    chunks: Iterator[list[_Task]], chunk_size: int, settings: CropSettings, largest_only: bool, out_dir: str
) -> Iterator[tuple[list[_Task], _ChunkResult]]:
    """:func:`_process_chunk` of each chunk of ``chunks`` in this process (a job of one process),
    ``(tasks, result)`` in order, with one detection stream for all of them: the detection
    threads (:func:`detection_threads`) go on with the first images of the next chunk while
    this one's last crops are written, instead of waiting for them at every chunk boundary.
    Chunks (``chunk_size`` images, the last one fewer) are taken from ``chunks`` only as the
    detection reaches them (up to :data:`facealign.pipeline.LOOKAHEAD_IMAGES` images ahead of
    the image being cropped); the landmark network still runs once per chunk
    (:func:`facealign.pipeline.iter_image_faces`'s ``batch_images``). Stops after a chunk that
    stopped early; an error of ``chunks`` (the walk and its planning) is raised once the chunks
    taken before it are given back, as it was between chunks."""
    taken: collections.deque[list[_Task]] = collections.deque()
    planner_error: list[Exception] = []

    def paths() -> Iterator[str]:
        # The walk and its planning run here, while a chunk is being cropped: an error of
        # theirs (OUT_DIR full while noting the pending images) ends the paths, and is
        # raised once the chunks taken before it are cropped and given back.
        try:
            for chunk in chunks:
                taken.append(chunk)
                yield from (t.path for t in chunk)
        except Exception as exc:
            planner_error.append(exc)

    stream = image_stream(settings, paths(), largest_only, batch_images=chunk_size)
    aligner = get_aligner(settings)
    try:
        while (first := next(stream, None)) is not None:
            tasks = taken.popleft()
            items = itertools.chain([first], itertools.islice(stream, len(tasks) - 1))
            result = _crop_items(tasks, items, settings, aligner, Path(out_dir))
            yield tasks, result
            if result.stopped is not None:
                return
    finally:
        stream.close()
    if planner_error:
        raise planner_error[0]


def _crop_items(
    tasks: list[_Task], items: Iterator[ImageFaces], settings: CropSettings, aligner: FaceAligner, root: Path
) -> _ChunkResult:
    """Crop the landmarked images ``items`` of ``tasks`` (in order) and make their crops durable
    (see :class:`_ChunkResult`)."""
    by_path = {t.path: t for t in tasks}
    done = _ChunkResult([])
    folders: dict[str, int] = {}
    try:
        for item in items:
            task = by_path[str(item.path)]
            if _crop_image(item, task, settings, aligner, root, folders, done):
                break
            item.image = None  # release the decoded pixels early
        # One file list per result (empty for images without crops), so that a failed
        # sync below keeps the failure records of the images after the last crop.
        done.files.extend([[]] * (len(done.results) - len(done.files)))
        if any(done.files):
            try:
                sync(root)  # the chunk's crops, durable at once
            except OSError as exc:
                for files in done.files:
                    discard(root, files)
                keep = [not files for files in done.files]
                done.results = [r for r, k in zip(done.results, keep) if k]
                done.files = [[] for _ in done.results]
                done.stopped = done.stopped or _stop_message("cannot write the crops", exc)
    finally:
        close_folders(folders)
    done.files.extend([[]] * (len(done.results) - len(done.files)))  # a chunk stopped by an exception
    return done


def _crop_image(
    item: ImageFaces, task: _Task, settings: CropSettings, aligner: FaceAligner, root: Path,
    folders: dict[str, int], done: _ChunkResult,
) -> bool:  # fmt: skip
    """Add one image's result to ``done``; True when the chunk must stop (see :class:`_ChunkResult`)."""
    if item.error is not None:
        if item.errno in _STOP_READ_ERRNOS:
            done.stopped = _stop_message(
                f"cannot read {portable_name(task.source)!r}", OSError(item.errno, os.strerror(item.errno))
            )
            return True
        done.results.append(([], _failure(task, item.error)))
    elif not len(item.boxes):
        done.results.append(([], _failure(task, FailureKind.NO_FACE.reason())))
    else:
        low_quality = _low_quality_failure(item, task, settings)
        try:
            rows, staged = _crop_rows(item, task, settings, aligner, root, folders)
        except OSError as exc:
            if exc.errno in _TAKEN_WRITE_ERRNOS:
                reason = FailureKind.OUTPUT_NAME_TAKEN.reason(f"{portable_name(str(exc.filename))} {exc.strerror}")
                done.results.append(([], _failure(task, reason)))
            elif exc.errno in _PERMANENT_WRITE_ERRNOS:
                done.results.append(
                    ([], _failure(task, FailureKind.FAILED.reason(f"cannot write its crop: {exc.strerror}")))
                )
            else:
                done.stopped = _stop_message(f"cannot write the crops of {portable_name(task.source)!r}", exc)
                return True
        except Exception as exc:
            done.results.append(([], _failure(task, FailureKind.FAILED.reason(f"{type(exc).__name__}: {exc}"))))
        else:
            done.results.append((rows, low_quality))
            done.files.extend([[]] * (len(done.results) - 1 - len(done.files)))
            done.files.append(staged)
            return False
    return False


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
    networks' onnxruntime sessions get one thread each in :func:`get_aligner`)."""
    global _THREADS_LIMITED
    if not _THREADS_LIMITED:
        import cv2

        cv2.setNumThreads(1)
        _THREADS_LIMITED = True
