"""The locks of OUT_DIR: one job at a time (exclusive), and the workers' shared lock held while they write."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from .job import _LOCK_NAME, _WORKERS_LOCK_NAME, CropJobError, CropJobTransientError


class _Lock:
    """Exclusive lock on ``OUT_DIR`` so that two jobs never append to one manifest.

    Taken by the job's process for the whole job. It also takes the workers
    lock (:class:`_WorkersLock`) exclusively for a moment: that fails while
    worker processes of an earlier job, whose process was killed, still run.
    """

    def __init__(self, out_dir: Path, name: str = _LOCK_NAME) -> None:
        self.path = out_dir / name
        self.handle: TextIO | None = None

    def _flock(self, shared: bool) -> bool:
        """Lock the open file without waiting; False when another process holds it."""
        try:
            import fcntl
        except ImportError:  # Windows: no advisory lock
            return True
        assert self.handle is not None  # opened by __enter__
        try:
            fcntl.flock(self.handle.fileno(), (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def __enter__(self) -> _Lock:
        self.handle = handle = open(self.path, "a")
        if not self._flock(shared=False):
            handle.close()
            raise CropJobError(f"another crop job is writing to {str(self.path.parent)!r}")
        try:
            with _WorkersLock(self.path.parent, shared=False):
                pass
        except BaseException:
            handle.close()
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

    def __enter__(self) -> _WorkersLock:
        self.handle = handle = open(self.path, "a")
        if not self._flock(self.shared):
            handle.close()
            raise CropJobTransientError(
                f"worker processes of an earlier, interrupted crop job are still writing to "
                f"{str(self.path.parent)!r}; try again in a few seconds"
            )
        return self
