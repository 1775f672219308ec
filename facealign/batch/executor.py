"""Where the crop job's chunks run: the executor interface.

:func:`facealign.batch.run_crop_job` plans, records and resumes; an executor
only runs chunks of images (:func:`facealign.batch.worker._process_chunk` on
each) and hands their results back. Two implementations: local worker processes
(:class:`facealign.batch.run.LocalExecutor`, the default) and a Dask cluster
(:class:`facealign.cluster.DaskExecutor`). The job knows nothing of either's
machinery.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from .job import CropSettings, _Task
from .worker import _ChunkResult

__all__ = ["ChunkExecutor"]


class ChunkExecutor(Protocol):
    """Runs the crop job's chunks.

    Attributes
    ----------
    chunk_size : int
        Images per chunk when the caller names none.
    """

    chunk_size: int

    def check_folders(self, in_dir: Path, out_dir: Path) -> None:
        """Raise :class:`facealign.batch.CropJobError` unless the workers can read ``in_dir``
        and write ``out_dir`` (called once, before any work)."""
        ...

    def run_chunks(
        self,
        todo: Iterable[_Task],
        n_images: int,
        settings: CropSettings,
        largest_only: bool,
        out_dir: Path,
        chunk_size: int,
    ) -> Iterator[tuple[list[_Task], _ChunkResult]]:
        """Yield ``(tasks, result)`` per chunk of at most ``chunk_size`` images of ``todo``.

        ``todo`` is the planner's streaming walk: take chunks from it only as they
        are submitted. ``n_images`` is the number of images expected (for sizing).
        The caller writes the records of each chunk as it is yielded and may stop
        early (closing the generator): chunks not yet run must then not be run.
        """
        ...
