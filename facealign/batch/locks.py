"""The locks of OUT_DIR: one job at a time (exclusive), and the workers' shared lock held while they write."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .job import _LOCK_NAME, _WORKERS_LOCK_NAME, CropJobTransientError
from .outdir import open_append

if TYPE_CHECKING:  # for the annotations only
    from filelock import BaseFileLock


class _Lock:
    """Exclusive lock on ``OUT_DIR`` so that two jobs never append to one manifest
    (``flock`` on the lock file, opened without following links; ``filelock`` on Windows).
    A second job is refused as a temporary condition (exit 75: rerun when the first is done).

    Taken by the job's process for the whole job. It also takes the workers
    lock (:class:`_WorkersLock`) exclusively for a moment: that fails while
    worker processes of an earlier job, whose process was killed, still run.
    The (empty, hidden) lock file stays: deleting it would let two later jobs
    lock different files.
    """

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / _LOCK_NAME
        self._lock: BaseFileLock | None = None
        self._handle: Any = None

    def __enter__(self) -> _Lock:
        try:
            import fcntl
        except ImportError:  # Windows
            return self._enter_filelock()
        handle = open_append(self.path)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise self._busy() from None
        try:
            with _WorkersLock(self.path.parent, shared=False):
                pass
        except BaseException:
            handle.close()
            raise
        self._handle = handle
        return self

    def _busy(self) -> CropJobTransientError:
        """The error of a second job on the same OUT_DIR (exit 75)."""
        return CropJobTransientError(
            f"another crop job is writing to {str(self.path.parent)!r}; wait for it to finish, then rerun"
        )

    def _enter_filelock(self) -> _Lock:
        from filelock import FileLock, Timeout

        lock = FileLock(self.path, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise self._busy() from None
        try:
            with _WorkersLock(self.path.parent, shared=False):
                pass
        except BaseException:
            lock.release()
            raise
        self._lock = lock
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class _WorkersLock:
    """The lock that worker processes hold, shared, while they write crops into ``OUT_DIR``,
    and that a new job takes exclusively for a moment (see :class:`_Lock`).

    ``filelock`` offers no shared mode on a plain lock file (its read/write lock is
    an SQLite database, not meant for the shared file systems a ``--cluster`` job
    runs on), so this one is ``fcntl.flock`` (POSIX; a no-op elsewhere).
    """

    def __init__(self, out_dir: Path, shared: bool) -> None:
        self.path = out_dir / _WORKERS_LOCK_NAME
        self.shared = shared
        self.handle: Any = None

    def _flock(self) -> bool:
        """Lock the open file without waiting; False when another process holds it."""
        try:
            import fcntl
        except ImportError:  # Windows: no shared advisory lock
            return True
        assert self.handle is not None  # opened by __enter__
        try:
            fcntl.flock(self.handle.fileno(), (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def __enter__(self) -> _WorkersLock:
        self.handle = handle = open_append(self.path)
        if not self._flock():
            handle.close()
            raise CropJobTransientError(
                f"worker processes of an earlier, interrupted crop job are still writing to "
                f"{str(self.path.parent)!r}; try again in a few seconds"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
