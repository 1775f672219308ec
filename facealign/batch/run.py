"""Running the crop job: :func:`run_crop_job`, the chunks in worker processes or on a
Dask cluster, resuming, and the isolation of images that kill their worker."""

from __future__ import annotations

import collections
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..constants import DEFAULT_DETECTOR, P_FAIL_POOR, shipped_runtime_weights
from ..detection import get_detector
from ..failures import FailureKind
from ..imageio import (
    count_images,
    json_line,
    portable_name,
    walk_images,
)
from .job import (
    _DROPPED_NAME,
    _PENDING_NAME,
    _SETTINGS_NAME,
    _STARTED_NAME,
    _STATE_NAMES,
    _TAKEN_WRITE_ERRNOS,
    AUTO_IMAGES_PER_PROCESS,
    CHUNK_SIZE,
    FAILURES_NAME,
    MANIFEST_FORMATS,
    OUTPUT_FORMATS,
    WORKER_DIED_REASON,
    CropJobError,
    CropJobTransientError,
    CropSettings,
    Summary,
    _Task,
    _unlink_quietly,
)
from .locks import _Lock
from .outdir import (
    JOURNAL_NAME,
    Journal,
    check_not_link,
    commit_files,
    digest,
    forget_journal,
    journal_of,
    open_append,
    read_bytes,
)
from .plan import _check_dirs, _crop_files, _folder, _Planner, _remove_parts, _remove_unrecorded
from .records import (
    CSV_COLUMNS,
    _append,
    _check_settings,
    _clear,
    _encode_rows,
    _failure,
    _filter_records,
    _has_records,
    _job_settings,
    _load_records,
    _manifest_entries,
    _read_text,
    _recorded_outputs,
    _rewrite,
    manifest_name,
)
from .worker import _ChunkResult, _process_chunk, _process_chunks_here, get_aligner, worker_threads

if TYPE_CHECKING:  # for the annotations only
    from .executor import ChunkExecutor


def run_crop_job(
    in_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    detector: str = DEFAULT_DETECTOR,
    min_face: float | None = None,
    engine: str = "tcnn",
    template: str = "arcface",
    size: int | None = None,
    largest_only: bool = False,
    jobs: int | str | None = "auto",
    fmt: str | None = None,
    overwrite: bool = False,
    manifest_format: str = "jsonl",
    chunk_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    max_expected_error: float | None = None,
    max_p_fail: float | None = None,
    executor: ChunkExecutor | None = None,
    det_threshold: float | None = None,
    prune: bool = False,
    providers: tuple[str, ...] | None = None,
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
        worker). Default: the executor's (:data:`CHUNK_SIZE` for local processes).
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
    det_threshold : float, optional
        Detector score a face needs, on the detector's scale (see
        :class:`facealign.FaceAligner`); by default the detector's own rule.
    providers : tuple of str, optional
        onnxruntime execution providers of the networks (:mod:`facealign.inference`);
        by default the CPU. Where the networks run is not a setting of the
        results: a job may resume with other providers.
    executor : ChunkExecutor, optional
        Where the chunks run (:mod:`facealign.batch.executor`): by default local
        worker processes (:class:`LocalExecutor` of ``jobs``); e.g.
        :class:`facealign.cluster.DaskExecutor` for a Dask cluster (``jobs`` is
        then ignored). Its workers must see ``in_dir`` and ``out_dir`` at the
        same paths (checked before any work); only this process writes the records.
    prune : bool
        Drop the records and crops of sources no longer in ``in_dir``. Without it
        (the default) they are kept, counted in :attr:`Summary.missing`, and their
        crop names stay theirs: a sub-folder of ``in_dir`` that is empty or
        unmounted for a while loses nothing.

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
        chunk_size = (LocalExecutor if executor is None else executor).chunk_size
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    settings = CropSettings(
        detector,
        engine,
        template,
        size,
        min_face,
        max_expected_error,
        max_p_fail,
        det_threshold=det_threshold,
        providers=providers,
    )
    _resolve_jobs(jobs, 0)  # reject bad values before any work
    if executor is None:
        executor = LocalExecutor(jobs)
    if fmt is not None and fmt not in OUTPUT_FORMATS:
        raise CropJobError(f"unknown output format {fmt!r}; choose one of {list(OUTPUT_FORMATS)}")
    try:  # fail early on unknown names or missing weights (workers build their own)
        resolved = _validate_settings(settings)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise CropJobError(str(exc)) from exc
    if (max_expected_error is not None or max_p_fail is not None) and get_aligner(
        settings
    ).engine.quality_model is None:
        raise CropJobError(
            f"the {engine} weights carry no quality model (run facealign fit-quality); "
            "--max-expected-error and --max-p-fail need one"
        )
    src, dst = _check_dirs(in_path, out_path)
    summary = Summary(manifest=str(out_path / mname), failures_file=str(out_path / FAILURES_NAME))
    try:
        _refuse_links(dst)
        executor.check_folders(src, dst)
        with _Lock(dst):
            _run_locked(src, dst, settings, resolved, largest_only, fmt, overwrite, manifest_format,
                        chunk_size, progress, summary, start, executor, prune=prune)  # fmt: skip
    except OSError as exc:  # reading IN_DIR never raises (see scan_folder, the workers): OUT_DIR does
        where = f" {portable_name(str(exc.filename))!r}" if exc.filename else ""
        raise CropJobTransientError(
            f"cannot write to OUT_DIR{where}: {exc.strerror or exc}; fix it and rerun to continue"
        ) from exc
    summary.seconds = time.perf_counter() - start
    return summary


def _run_locked(
    src: Path, dst: Path, settings: CropSettings, resolved: Any, largest_only: bool,
    fmt: str | None, overwrite: bool, manifest_format: str, chunk_size: int,
    progress: Callable[[int, int], None] | None, summary: Summary, start: float,
    executor: ChunkExecutor, prune: bool = False,
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
    forget_journal(dst)
    try:
        _run_journaled(src, dst, settings, resolved, largest_only, fmt, overwrite, manifest_format,
                       chunk_size, progress, summary, start, executor, prune=prune)  # fmt: skip
    finally:
        forget_journal(dst)


def _refuse_links(dst: Path) -> None:
    """Refuse to start when one of the job's own files in OUT_DIR is a symbolic link (it would
    be written through; the files are also opened without following links, see
    :mod:`facealign.batch.outdir`, so a link planted later makes the job stop)."""
    names = [manifest_name(f) for f in MANIFEST_FORMATS] + [FAILURES_NAME, *_STATE_NAMES]
    for name in names:
        try:
            check_not_link(dst, name)
        except OSError as exc:
            raise CropJobError(f"{exc.filename} {exc.strerror}") from None


def _run_journaled(
    src: Path, dst: Path, settings: CropSettings, resolved: Any, largest_only: bool,
    fmt: str | None, overwrite: bool, manifest_format: str, chunk_size: int,
    progress: Callable[[int, int], None] | None, summary: Summary, start: float,
    executor: ChunkExecutor, prune: bool = False,
) -> None:  # fmt: skip
    """:func:`_run_locked` once the journal of OUT_DIR is fresh (:func:`facealign.batch.outdir.journal_of`)."""
    journal = journal_of(dst)
    if not journal.exists():  # OUT_DIR new, or made by facealign 0.5.0
        journal.seed(_recorded_outputs(dst, manifest_format))
    other = dst / manifest_name("csv" if manifest_format == "jsonl" else "jsonl")
    if overwrite:
        _remove_unrecorded(dst, set())
        _clear(dst)
        forget_journal(dst)
        _unlink_quietly(dst / JOURNAL_NAME)
        journal = journal_of(dst)
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
    # What made the crops, for the record (not compared on resume: a new version or
    # weights file may continue a job).
    made_by = {
        "facealign_version": __version__,
        "weights_sha256": digest(shipped_runtime_weights(settings.engine).read_bytes()),
    }
    _rewrite(dst / _SETTINGS_NAME, json.dumps({**wanted, **made_by}, indent=1) + "\n")
    _remove_unrecorded(dst, records.outputs, records.dropped)
    records.dropped.clear()
    _rewrite(dst / _PENDING_NAME, "")
    # Images to process, as far as names tell: what the count found less what is recorded.
    estimate = max(0, found - len(records.done))
    manifest_path = dst / manifest_name(manifest_format)
    new_csv = manifest_format == "csv" and (not manifest_path.exists() or manifest_path.stat().st_size == 0)
    with open_append(manifest_path) as manifest, open_append(dst / FAILURES_NAME) as failures:
        if new_csv:
            _append(manifest, ",".join(CSV_COLUMNS) + "\n")
        planner = _Planner(src, dst, fmt, records, failures, summary, estimate, prune)
        try:
            try:
                walk = walk_images(src, planner.plan_folder)
            except OSError as exc:
                raise CropJobError(f"cannot list IN_DIR {str(src)!r}: {exc.strerror or exc}") from exc
            if progress is not None:
                progress(0, planner.total())
            done = 0
            for chunk_tasks, chunk in executor.run_chunks(planner.tasks(walk), estimate, settings, largest_only, dst,
                                                          chunk_size):  # fmt: skip
                results, stopped = _commit(dst, journal, chunk)
                rows = [r for image_rows, _ in results for r in image_rows]
                fails = [f for _, f in results if f is not None]
                _append(manifest, _encode_rows(rows, manifest_format))
                _append(failures, "".join(json_line(f) + "\n" for f in fails))
                summary.processed += len(results)
                summary.faces += len(rows)
                summary.poor += sum(1 for r in rows if (r.get("p_fail") or 0.0) > P_FAIL_POOR)
                summary.failures += len(fails)
                summary.chunks += 1
                if stopped is not None:
                    raise CropJobTransientError(f"{stopped}; fix it and rerun to continue")
                done += len(chunk_tasks)
                summary.seconds = time.perf_counter() - start
                if progress is not None:
                    progress(done, planner.total())
            planner.finish()
        finally:
            planner.close()
    summary.gone, summary.missing = records.gone, records.missing
    if planner.dropped:  # rows of sources gone or changed: remove them, then forget the list
        _filter_records(manifest_path, manifest_format, planner.dropped)
        _filter_records(dst / FAILURES_NAME, "jsonl", planner.dropped)
        _unlink_quietly(dst / _DROPPED_NAME)
    (dst / _PENDING_NAME).unlink()  # every crop written is recorded
    _compact_journal(dst, manifest_path, manifest_format, journal)


#: The journal is compacted at the end of a run when it has more lines than this plus
#: twice the manifest's rows (crops redone or dropped leave lines behind).
JOURNAL_SLACK_LINES: int = 10_000


def _compact_journal(dst: Path, manifest_path: Path, fmt: str, journal: Journal) -> None:
    """Rewrite the journal with the entries of the crops the manifest lists, when it has
    grown well past them. Run at the end of a finished run, when every crop written is
    recorded (:mod:`facealign.batch.outdir`); atomic, so a crash keeps the old journal."""
    lines = read_bytes(dst / JOURNAL_NAME).count(b"\n")
    rows = read_bytes(manifest_path).count(b"\n")
    if lines <= JOURNAL_SLACK_LINES + 2 * rows:
        return
    listed = {info["output"] for info, _ in _manifest_entries(manifest_path, fmt)[0]}
    kept = [(output, entry) for output, entry in journal.entries().items() if output in listed]
    journal.close()
    _rewrite(dst / JOURNAL_NAME, "".join(json.dumps([o, size, sha]) + "\n" for o, (size, sha) in kept))
    forget_journal(dst)


def _commit(
    dst: Path, journal: Journal, chunk: _ChunkResult
) -> tuple[list[tuple[list[dict[str, Any]], dict[str, Any] | None]], str | None]:
    """Give a chunk's crops their names (:func:`facealign.batch.outdir.commit_files`): the
    results to record, and why the job must stop (None: it need not). An image whose
    crops cannot take their names because OUT_DIR holds something else there (a folder,
    a link) gets an ``output name taken`` failure; on any other error the images not yet
    in place are left out (not recorded: the next run redoes them) and the job stops."""
    files = chunk.files + [[] for _ in range(len(chunk.results) - len(chunk.files))]
    if not any(files):
        return chunk.results, chunk.stopped
    outcome = commit_files(dst, journal, files)
    results: list[tuple[list[dict[str, Any]], dict[str, Any] | None]] = []
    stopped = chunk.stopped
    for (rows, failure), error in zip(chunk.results, outcome):
        if error is None:
            results.append((rows, failure))
        elif error.errno in _TAKEN_WRITE_ERRNOS:
            where = portable_name(str(error.filename)) if error.filename else "a crop name"
            reason = FailureKind.OUTPUT_NAME_TAKEN.reason(f"{where} {error.strerror}")
            results.append(([], _failure_of_row(rows[0], reason)))
        elif stopped is None:
            stopped = f"cannot name the crops of {rows[0]['source']!r}: {error.strerror or error}"
    return results, stopped


def _failure_of_row(row: dict[str, Any], reason: str) -> dict[str, Any]:
    """The failure record of the image of manifest row ``row``."""
    record = {"source": row["source"], "reason": reason, "source_bytes": row["source_bytes"],
              "source_mtime_ns": row["source_mtime_ns"]}  # fmt: skip
    if row.get("source_b64"):
        record["source_b64"] = row["source_b64"]
    return record


def _validate_settings(settings: CropSettings) -> Any:
    """The crop template of ``settings``, after checking the detector, engine and template
    without loading the landmark network (the parent process only writes records; the
    workers build their own).
    """
    from ..alignment import get_template

    weights = shipped_runtime_weights(settings.engine)
    if not weights.is_file():
        raise FileNotFoundError(f"no weights file at {weights}")
    get_detector(settings.detector, min_face=settings.min_face)
    return get_template(settings.template, settings.size)


def _resolve_jobs(jobs: int | str | None, n_images: int) -> int:
    """Worker processes for ``n_images`` images (see ``jobs`` in :func:`run_crop_job`)."""
    from ..inference import available_cpus

    cores = available_cpus()
    if jobs is None or jobs == "auto":
        return max(1, min(cores, n_images // AUTO_IMAGES_PER_PROCESS))
    if jobs == -1:
        return cores
    if isinstance(jobs, str) or jobs < 1:
        raise CropJobError(f"jobs must be a positive number of processes, 'auto' or -1 for all cores, got {jobs!r}")
    return int(jobs)


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
    todo: Iterable[_Task],
    n_images: int,
    settings: CropSettings,
    largest_only: bool,
    out_dir: Path,
    n_jobs: int,
    chunk_size: int,
) -> Iterator[tuple[list[_Task], _ChunkResult]]:
    """Yield ``(tasks, results)`` per chunk, in order, running chunks in parallel when ``n_jobs > 1``
    (:class:`LocalExecutor`).

    ``todo`` is consumed a chunk at a time (it is the streaming walk,
    :class:`_Planner`): with worker processes as chunks are submitted, at most
    :data:`LOCAL_CHUNKS_IN_FLIGHT_PER_PROCESS` chunks per process in flight; in
    one process as its detection reaches them (:func:`_process_chunks_here`, at
    most :data:`facealign.pipeline.LOOKAHEAD_IMAGES` images ahead of the
    cropping). ``n_images``, the number of images expected, sets the chunk size
    (:func:`balanced_chunk_size`).

    With worker processes, a worker that dies (a crash in a decoder, killed for
    memory) does not stop the job: loky then stops the other workers too, the
    ``.part`` temporaries in the folders of the chunks in flight are deleted,
    the images of every chunk that had started and not finished are redone one
    per worker process
    (:func:`_process_isolated`), and the image that kills its process again gets
    a failure; the other chunks run on as before. (In one process, such an image
    ends the job.)
    """
    n_jobs = max(1, min(n_jobs, n_images))
    size = balanced_chunk_size(n_images, n_jobs, chunk_size)
    chunks = _batched(todo, size)
    if n_jobs == 1:
        yield from _process_chunks_here(chunks, size, settings, largest_only, str(out_dir))
        return
    yield from _run_in_processes(chunks, settings, largest_only, out_dir, n_jobs)


class LocalExecutor:
    """The crop job's chunks in local worker processes (the default :class:`ChunkExecutor`).

    Parameters
    ----------
    jobs : int or "auto", optional
        As :func:`run_crop_job`'s ``jobs``: resolved against the number of images
        to process when the chunks start.
    """

    chunk_size = CHUNK_SIZE

    def __init__(self, jobs: int | str | None = "auto") -> None:
        _resolve_jobs(jobs, 0)  # reject bad values before any work
        self.jobs = jobs

    def check_folders(self, in_dir: Path, out_dir: Path) -> None:
        """Nothing to check: the workers are processes of this machine."""

    def run_chunks(
        self,
        todo: Iterable[_Task],
        n_images: int,
        settings: CropSettings,
        largest_only: bool,
        out_dir: Path,
        chunk_size: int,
    ) -> Iterator[tuple[list[_Task], _ChunkResult]]:
        """:func:`_run_chunks` with the number of processes ``jobs`` gives for ``n_images``."""
        n_jobs = _resolve_jobs(self.jobs, n_images)
        return _run_chunks(todo, n_images, settings, largest_only, out_dir, n_jobs, chunk_size)


def _worker_pool(n_jobs: int) -> Any:
    """joblib's process pool (loky's reusable executor, shared with ``joblib.Parallel``) of
    ``n_jobs`` workers, with joblib's limits on the threads of native libraries in them."""
    from joblib.executor import get_memmapping_executor

    threads = str(worker_threads(n_jobs))
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
    threads = worker_threads(n_jobs)
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
                try:
                    future = executor.submit(
                        _process_chunk, chunk, settings, largest_only, str(out_dir), threads, parent, number
                    )
                except BrokenProcessPool:  # a worker died since the last submit: the chunk goes out again
                    again.appendleft(chunk)
                    if not window:  # nothing in flight to learn from: start a new pool
                        executor = None
                        continue
                    break  # the first future in the window raises below, and the loss is handled there
                window.append((number, chunk, future))
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
                waiting = {  # temporaries of chunks that finished, which wait for their names
                    (_folder(staged.output), staged.temporary)
                    for _, _, f in lost
                    if f.exception() is None
                    for files in f.result().files
                    for staged in files
                }
                _remove_parts(out_dir, [p for p in parts if p not in waiting])  # those of the dead workers
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
                result = executor.submit(_process_chunk, [task], settings, largest_only, str(out_dir), 1,
                                         os.getpid()).result()  # fmt: skip
            except TerminatedWorkerError:
                reason = WORKER_DIED_REASON
                result = _ChunkResult([([], _failure(task, reason))])
                executor.shutdown(wait=True)
                executor = None
            yield [task], result
    finally:
        if executor is not None:
            executor.shutdown(wait=True, kill_workers=True)
