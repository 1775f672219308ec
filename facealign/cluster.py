"""The crop job on a Dask distributed cluster (``facealign crop --cluster``).

Only the *execution* of the chunks lives here: :class:`DaskExecutor`, the
Dask implementation of the crop job's executor interface
(:class:`facealign.batch.executor.ChunkExecutor`). Planning, the records,
resuming, the OUT_DIR lock and the per-chunk worker code are those of the local
job (:mod:`facealign.batch`): :func:`facealign.batch.run_crop_job` plans as always,
folder by folder as its walk streams, and hands the stream of images to the
executor it is given (``run_crop_job(..., executor=DaskExecutor(client))``); it
knows nothing of Dask.

How the work goes out
---------------------
Images go out in chunks of :data:`CLUSTER_CHUNK_SIZE` (one Dask task each, the
worker function :func:`facealign.batch.worker._process_chunk`); at most
:data:`CHUNKS_IN_FLIGHT_PER_THREAD` chunks per worker thread are submitted at a
time, and a new one is submitted each time one completes
(:class:`distributed.as_completed`), so the scheduler never holds more than a
few hundred tasks whatever the number of images, and chunks are cut from the
driver's streaming walk only when submitted: the driver holds the chunks in
flight and the folder being planned, not a listing of IN_DIR. Workers return the rows; only the driver writes the
manifest and the failures list.

Each worker process builds the aligner once (:func:`facealign.batch.get_aligner`
caches it per process); each task (a worker runs ``--nthreads`` at once; 1 in
``--cluster local:N``) detects its share of the worker's CPUs in images at a
time, in threads, with OpenCV and onnxruntime on one thread each (:func:`_task_threads`).

A worker that dies (killed, out of memory, a crashing decoder) loses its
chunks; the scheduler runs them again on another worker. Crops are written
atomically and rewritten under the same names, so a retried chunk leaves
nothing behind, and after a run in which a worker left the cluster the
``.part`` temporaries it may have left are deleted. A chunk that kills more
than ``distributed.scheduler.allowed-failures`` workers is split: each of its images
runs as its own task, and one that kills its workers again gets the failure
``failed: the worker process died on it ...``, as with local worker processes.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .batch.job import WORKER_DIED_REASON, CropJobError, CropSettings, _Task, _unlink_quietly
from .batch.locks import _WorkersLock
from .batch.plan import _crop_files, _folder, _pending_groups, _remove_parts
from .batch.records import _failure
from .batch.run import _batched, balanced_chunk_size
from .batch.worker import _ChunkResult, _process_chunk, get_aligner, worker_threads
from .inference import available_cpus

if TYPE_CHECKING:
    import distributed

__all__ = [
    "CHUNKS_IN_FLIGHT_PER_THREAD",
    "CLUSTER_CHUNK_SIZE",
    "DASK_INSTALL",
    "DaskExecutor",
    "connect",
    "run_chunks_on_cluster",
]

#: Images per Dask task: large enough that the scheduler's cost per task (a few
#: ms, see bench/cluster.py) is under 1% of the task's work at 20-50 images/s per
#: worker, small enough that a lost worker costs little work.
CLUSTER_CHUNK_SIZE: int = 256

#: Chunks submitted per worker thread at a time: one running and one queued, so a
#: worker never waits for the driver.
CHUNKS_IN_FLIGHT_PER_THREAD: int = 2

#: How to install what ``--cluster`` needs.
DASK_INSTALL: str = "pip install 'facealign[dask]'"

#: Seconds to wait for the first worker of a scheduler that has none yet.
WORKER_WAIT_SECONDS: float = 60.0

_WORKER_DIED = WORKER_DIED_REASON


def _import_distributed() -> Any:
    """The ``distributed`` module, or a :class:`CropJobError` naming the extra to install."""
    try:
        import distributed
    except ImportError:
        raise CropJobError(f"--cluster needs Dask distributed, which is not installed: {DASK_INSTALL}") from None
    return distributed


@contextmanager
def connect(address: str, quiet: bool = False) -> Iterator[distributed.Client]:
    """A Dask client for ``--cluster ADDRESS``, closed (with its local cluster) on exit.

    Parameters
    ----------
    address : str
        ``local`` (one worker process per core) or ``local:N`` (``N`` worker
        processes) starts a :class:`distributed.LocalCluster` on this machine,
        one thread per worker; anything else is the address of a running
        scheduler (``tcp://host:8786``, or a scheduler file path ending
        ``.json``, which must exist: Dask would wait for it without end).
    quiet : bool, optional
        Only errors from Dask's loggers (here and in a local cluster's workers).

    Raises
    ------
    CropJobError
        Dask distributed is missing, ``local:N`` is malformed, the scheduler
        file is missing or unreadable, or the scheduler cannot be reached.
    """
    distributed = _import_distributed()
    local = re.fullmatch(r"local(?::(?P<n>[0-9]+))?", address)
    with _dask_logs(logging.ERROR if quiet else None):
        if local:
            n_workers = int(local["n"]) if local["n"] else available_cpus()
            if n_workers < 1:
                raise CropJobError(f"--cluster local:N needs at least one worker, got {address!r}")
            with distributed.LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                silence_logs=logging.ERROR if quiet else logging.WARNING,
            ) as cluster, distributed.Client(cluster) as client:  # fmt: skip
                yield client
            return
        with _remote_client(distributed, address) as client:
            yield client


@contextmanager
def _dask_logs(level: int | None) -> Iterator[None]:
    """Dask's loggers (``distributed``, ``dask``) at ``level`` meanwhile (None: unchanged)."""
    loggers = [logging.getLogger(name) for name in ("distributed", "dask")]
    saved = [logger.level for logger in loggers]
    if level is not None:
        for logger in loggers:
            logger.setLevel(level)
    try:
        yield
    finally:
        for logger, old in zip(loggers, saved):
            logger.setLevel(old)


@contextmanager
def _remote_client(distributed: Any, address: str) -> Iterator[distributed.Client]:
    """A client of the running scheduler at ``address`` (see :func:`connect`)."""
    if address.endswith(".json"):
        try:
            with open(address, encoding="utf-8") as handle:
                json.load(handle)
        except OSError as exc:
            raise CropJobError(f"cannot read the Dask scheduler file {address!r}: {exc.strerror or exc}") from None
        except ValueError:
            raise CropJobError(f"the Dask scheduler file {address!r} is not JSON") from None
    try:
        if address.endswith(".json"):
            client = distributed.Client(scheduler_file=address, timeout="30s")
        else:
            client = distributed.Client(address, timeout="30s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise CropJobError(f"cannot reach the Dask scheduler at {address!r}: {exc}") from exc
    with client:
        yield client


def check_workers(client: distributed.Client, in_dir: Path, out_dir: Path) -> None:
    """Refuse to start unless every worker sees ``in_dir`` and shares ``out_dir`` with this process.

    The driver writes a token file into ``out_dir``; each worker must find it
    there (the same folder, not a local one of the same name), list ``in_dir``
    and create a file in ``out_dir``.

    Raises
    ------
    CropJobError
        No worker joined within :data:`WORKER_WAIT_SECONDS`, the workers cannot
        import facealign, or a worker cannot use the folders (one line naming
        the workers and what each lacks).
    """
    if not client.nthreads():
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_SECONDS)
        except TimeoutError:
            raise CropJobError(
                f"the Dask scheduler has no workers (waited {WORKER_WAIT_SECONDS:.0f} s); start some"
            ) from None
    token = uuid.uuid4().hex
    token_path = out_dir / f".facealign-probe.{token}"
    try:
        token_path.write_text(token, encoding="ascii")  # an OSError (disk full) is OUT_DIR's: exit 75
        try:
            answers = client.run(_worker_folder_problem, str(in_dir), str(out_dir), token_path.name, token)
        except Exception as exc:  # the workers cannot unpickle or run facealign code
            raise CropJobError(
                f"the Dask workers cannot run facealign ({type(exc).__name__}: {exc}); install the same "
                "facealign in the workers' environment"
            ) from exc
    finally:
        _unlink_quietly(token_path)
    problems = sorted((worker, problem) for worker, problem in answers.items() if problem)
    if problems:
        shown = "; ".join(f"{worker}: {problem}" for worker, problem in problems[:3])
        more = f" (and {len(problems) - 3} more workers)" if len(problems) > 3 else ""
        raise CropJobError(
            f"{len(problems)} of {len(answers)} Dask workers cannot use the folders: {shown}{more}. IN_DIR and "
            "OUT_DIR must be on a file system that every worker mounts at the same path"
        )


def _worker_folder_problem(in_dir: str, out_dir: str, token_name: str, token: str) -> str | None:
    """On a worker: why it cannot read ``in_dir`` or share ``out_dir``, or None (see :func:`check_workers`)."""
    try:
        with os.scandir(in_dir) as listing:
            next(listing, None)
    except OSError as exc:
        return f"cannot list IN_DIR {in_dir!r}: {exc.strerror or exc}"
    try:
        with open(os.path.join(out_dir, token_name), encoding="ascii") as handle:
            seen = handle.read()
    except OSError:
        seen = None
    if seen != token:
        return f"OUT_DIR {out_dir!r} is not the driver's folder (the driver's files are not visible there)"
    try:
        fd, probe = tempfile.mkstemp(prefix=".facealign-probe.", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"cannot write to OUT_DIR {out_dir!r}: {exc.strerror or exc}"
    return None


class DaskExecutor:
    """The crop job's chunks on a Dask cluster (a :class:`facealign.batch.executor.ChunkExecutor`).

    Parameters
    ----------
    client : distributed.Client
        Client of the cluster whose workers run the chunks (see :func:`connect`).
    """

    chunk_size = CLUSTER_CHUNK_SIZE

    def __init__(self, client: distributed.Client) -> None:
        self.client = client

    def check_folders(self, in_dir: Path, out_dir: Path) -> None:
        """:func:`check_workers`."""
        check_workers(self.client, in_dir, out_dir)

    def run_chunks(
        self,
        todo: Iterable[_Task],
        n_images: int,
        settings: CropSettings,
        largest_only: bool,
        out_dir: Path,
        chunk_size: int,
    ) -> Iterator[tuple[list[_Task], _ChunkResult]]:
        """:func:`run_chunks_on_cluster` (chunks are yielded as they complete, in any order)."""
        return run_chunks_on_cluster(self.client, todo, n_images, settings, largest_only, out_dir, chunk_size)


# --------------------------------------------------------------------------- #
# Worker side
# --------------------------------------------------------------------------- #

_SETUP_LOCK = threading.Lock()
_TASK_THREADS: int | None = None


def _task_threads(settings: CropSettings) -> int:
    """Images each task of this Dask worker detects at a time: the CPUs the worker process may
    use shared over its threads (``--nthreads`` tasks run at once; 1 in ``--cluster local:N``),
    as local worker processes share theirs (:func:`facealign.batch.worker.worker_threads`);
    the networks and OpenCV then run on one thread each. Builds the aligner of ``settings``
    once per process, under a lock (two tasks of a multi-threaded worker must not build it twice)."""
    global _TASK_THREADS
    with _SETUP_LOCK:
        if _TASK_THREADS is None:
            from distributed import get_worker

            worker = get_worker()
            state = getattr(worker, "state", None)  # distributed >= 2022.11 keeps nthreads there
            nthreads: Any = getattr(state, "nthreads", None) or getattr(worker, "nthreads", 1)
            _TASK_THREADS = worker_threads(max(1, int(nthreads)))
        get_aligner(settings, single_thread=True)
        return _TASK_THREADS


def _crop_chunk_on_worker(tasks: list[_Task], settings: CropSettings, largest_only: bool, out_dir: str) -> _ChunkResult:
    """The Dask task: crop a chunk with :func:`facealign.batch.worker._process_chunk`, holding
    OUT_DIR's workers lock (shared) so that no new job starts while it writes."""
    threads = _task_threads(settings)
    with _WorkersLock(Path(out_dir), shared=True):
        return _process_chunk(tasks, settings, largest_only, out_dir, threads)


# --------------------------------------------------------------------------- #
# Driver side
# --------------------------------------------------------------------------- #


def run_chunks_on_cluster(
    client: distributed.Client,
    todo: Iterable[_Task],
    n_images: int,
    settings: CropSettings,
    largest_only: bool,
    out_dir: Path,
    chunk_size: int,
) -> Iterator[tuple[list[_Task], _ChunkResult]]:
    """Yield ``(tasks, result)`` per chunk as chunks complete on the cluster (any order).

    Parameters
    ----------
    client : distributed.Client
        Client of the cluster whose workers run the chunks.
    todo : iterable of _Task
        Images to crop (the driver's streaming walk): chunks of ``chunk_size``
        are taken from it only as they are submitted.
    n_images : int
        Images expected (the name count), for the chunk size.
    settings, largest_only, out_dir
        As for :func:`facealign.batch.worker._process_chunk`.
    chunk_size : int
        Images per Dask task, at most (:func:`facealign.batch.balanced_chunk_size`
        of ``n_images`` for the worker threads at the start).

    Notes
    -----
    At most :data:`CHUNKS_IN_FLIGHT_PER_THREAD` chunks per worker thread (at the
    start) are in flight, so the driver holds those chunks and the folder the
    walk is planning, whatever the number of images. When the consumer stops
    early (an error, a stopped chunk) the chunks still queued are cancelled;
    chunks already running finish on their workers, unrecorded, and the next
    run removes their crops (the pending list) once they have released
    OUT_DIR's workers lock.
    """
    distributed = _import_distributed()
    threads = sum(client.nthreads().values())
    chunks = _batched(todo, balanced_chunk_size(n_images, threads, chunk_size))
    workers_at_start = set(client.nthreads())
    in_flight = max(2, CHUNKS_IN_FLIGHT_PER_THREAD * threads)
    owner: dict[Any, list[_Task]] = {}
    completed = distributed.as_completed()
    worker_died = False

    def submit(chunk: list[_Task]) -> None:
        future = client.submit(_crop_chunk_on_worker, chunk, settings, largest_only, str(out_dir), pure=False)
        owner[future] = chunk
        completed.add(future)

    try:
        for chunk in itertools.islice(chunks, in_flight):
            submit(chunk)
        for future in completed:
            chunk = owner.pop(future)
            try:
                result = future.result()
            except distributed.KilledWorker:
                worker_died = True
                yield from _run_isolated(client, chunk, settings, largest_only, out_dir)
            else:
                yield chunk, result
            finally:
                future.release()
            following = next(chunks, None)
            if following is not None:
                submit(following)
    finally:
        if owner:
            client.cancel(list(owner))
    if worker_died or set(client.nthreads()) != workers_at_start:
        _remove_part_files(out_dir)


def _run_isolated(
    client: distributed.Client, chunk: list[_Task], settings: CropSettings, largest_only: bool, out_dir: Path
) -> Iterator[tuple[list[_Task], _ChunkResult]]:
    """Each image of a chunk that killed its workers as its own task; an image whose task
    kills its workers too gets a failure (it wrote temporaries only, removed at the end of the run)."""
    distributed = _import_distributed()
    futures = [
        client.submit(_crop_chunk_on_worker, [task], settings, largest_only, str(out_dir), pure=False) for task in chunk
    ]
    try:
        for task, future in zip(chunk, futures):
            try:
                result = future.result()
            except distributed.KilledWorker:  # its crops were temporaries only: removed at the end
                result = _ChunkResult([([], _failure(task, _WORKER_DIED))])
            yield [task], result
    finally:
        client.cancel(futures)


def _remove_part_files(out_dir: Path) -> None:
    """Delete the ``.part`` temporaries (left by workers that died) in the output folders of the
    images this run planned (its pending list, read a folder at a time)."""
    for names in _pending_groups(out_dir):
        _, parts = _crop_files(out_dir, {_folder(stem) for stem, _ in names})
        _remove_parts(out_dir, parts)
