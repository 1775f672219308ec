"""The one way research code runs work in parallel processes (detection caches, tweak, recognition features).

* :func:`parallel_map` runs ``function(*arguments)`` for each task in joblib's loky
  worker processes, yielding the results in task order as they come (a
  generator, so that callers can record and report progress); ``jobs=1`` runs
  them one after the other in this process, with no worker to start.
* :func:`single_threaded` is what a task uses when it runs many of itself side by
  side: torch (when loaded), OpenCV and the BLAS / OpenMP pools
  (``threadpoolctl``) run one thread each, and the caller's settings come back
  afterwards, so that a task run in the calling process (``jobs=1``) never
  changes the caller's thread counts.

The crop job (:mod:`facealign.batch`) has its own process pool: it streams its
input, isolates images that kill a worker and keeps chunks in order.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["parallel_map", "resolve_jobs", "single_threaded"]

T = TypeVar("T")


def resolve_jobs(jobs: int, tasks: int) -> int:
    """Worker processes for ``tasks`` tasks: ``jobs``, or every core for ``jobs < 1``, at most one per task."""
    from joblib import cpu_count

    return max(1, min(tasks, cpu_count() if jobs < 1 else jobs))


def parallel_map(function: Callable[..., T], tasks: Iterable[tuple[Any, ...]], jobs: int) -> Iterator[T]:
    """``function(*task)`` for every task, in order, in ``jobs`` processes (see the module docstring)."""
    tasks = list(tasks)
    n_jobs = resolve_jobs(jobs, len(tasks))
    if n_jobs == 1:
        return (function(*task) for task in tasks)
    from joblib import Parallel, delayed

    runner = Parallel(n_jobs=n_jobs, backend="loky", return_as="generator")
    return iter(runner(delayed(function)(*task) for task in tasks))


@contextmanager
def single_threaded() -> Iterator[None]:
    """torch, OpenCV and the BLAS / OpenMP pools on one thread inside, the caller's counts restored after."""
    import cv2
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")
    saved_torch = torch.get_num_threads() if torch is not None else None
    saved_cv2 = cv2.getNumThreads()
    with threadpool_limits(limits=1):
        if torch is not None:
            torch.set_num_threads(1)
        cv2.setNumThreads(1)
        try:
            yield
        finally:
            if torch is not None and saved_torch is not None:
                torch.set_num_threads(saved_torch)
            cv2.setNumThreads(saved_cv2)
