"""OUT_DIR's files, written and removed only inside OUT_DIR.

Every file the crop job creates, appends to, renames or deletes under OUT_DIR is
reached from an open descriptor of OUT_DIR, one folder at a time, without
following symbolic links (``O_NOFOLLOW``, ``O_DIRECTORY`` and ``dir_fd``-relative
calls), so a link planted in OUT_DIR (``OUT_DIR/sub -> /elsewhere``,
``OUT_DIR/manifest.jsonl -> /elsewhere/file``) is reported, never written through,
and a folder swapped for a link while the job runs makes the call fail instead
of escaping.

Nothing is deleted that the job did not write: the crops are listed, before they
get their final names, in the journal ``.facealign-crop.written`` (one JSON
``[output, bytes, sha256]`` a line, appended and flushed by the job's process), and
a crop is deleted only when the file under its name still has the size and hash
the journal gives (:meth:`Journal.is_ours`).

Durable writes in batches
-------------------------
A worker writes a chunk's crops to temporaries (:func:`stage_file`), then makes
them durable with one ``syncfs`` of the file system (Linux; elsewhere one
``fsync`` per file). The job's process then lists them in the journal (one write,
one flush), gives them their final names (``rename`` in the folder), flushes the
folders, and only then appends their manifest rows (:func:`commit_files`). A crash
at any point leaves rows only for complete crops; crops without rows that the
journal lists are recognised by the next run.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..imageio import PART_SUFFIX

#: The journal of the crops the job wrote (see the module notes).
JOURNAL_NAME = ".facealign-crop.written"

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

#: The reason given when a path in OUT_DIR is a symbolic link.
LINK_REASON = "is a symbolic link; facealign writes only inside OUT_DIR: remove the link and rerun"


def link_error(rel: str) -> OSError:
    """The ``OSError`` (``ELOOP``) for a symbolic link at ``rel`` in OUT_DIR."""
    return OSError(errno.ELOOP, LINK_REASON, f"OUT_DIR/{rel}")


def _parts(folder: str) -> list[str]:
    parts = [p for p in folder.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise OSError(errno.EINVAL, "not a path inside OUT_DIR", folder)
    return parts


def open_folder(root: Path, folder: str, create: bool = False) -> int:
    """A descriptor of ``root/folder`` (``folder`` relative, POSIX), reached without
    following links; with ``create``, missing folders are made.

    Raises
    ------
    OSError
        ``ELOOP`` (:func:`link_error`) when a component is a symbolic link,
        ``ENOTDIR`` when it is another file, ``ENOENT`` when missing.
    """
    fd = os.open(root, _DIR_FLAGS & ~getattr(os, "O_NOFOLLOW", 0))  # root itself: the user's choice
    try:
        done: list[str] = []
        for name in _parts(folder):
            done.append(name)
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
                child = _open_child(name, fd, "/".join(done))
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    _raise_if_link(name, fd, "/".join(done))
                raise
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_child(name: str, fd: int, rel: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            _raise_if_link(name, fd, rel)
        raise


def _raise_if_link(name: str, fd: int, rel: str) -> None:
    try:
        info = os.lstat(name, dir_fd=fd)
    except OSError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise link_error(rel)


@contextmanager
def folder(root: Path, rel: str, create: bool = False) -> Iterator[int]:
    """:func:`open_folder` as a context manager."""
    fd = open_folder(root, rel, create)
    try:
        yield fd
    finally:
        os.close(fd)


def split(rel: str) -> tuple[str, str]:
    """``(folder, name)`` of a relative POSIX path in OUT_DIR."""
    head, _, name = rel.rpartition("/")
    if not name or name in (".", ".."):
        raise OSError(errno.EINVAL, "not a file name", rel)
    return head, name


def check_not_link(root: Path, name: str) -> None:
    """Raise :func:`link_error` when ``root/name`` is a symbolic link (it may be missing)."""
    try:
        info = os.lstat(root / name)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise link_error(name)


def open_append(path: Path) -> Any:
    """``path`` opened to append (``"ab"``, unbuffered), created ``0644``, never through a link."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise link_error(path.name) from None
        raise
    return os.fdopen(fd, "ab", buffering=0)


def read_bytes(path: Path) -> bytes:
    """The content of ``path`` (b"" when missing), never through a link."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except FileNotFoundError:
        return b""
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise link_error(path.name) from None
        raise
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def open_text(path: Path) -> Any:
    """``path`` opened to read as UTF-8 text, lines split at ``\\n`` only (None when missing),
    never through a link."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise link_error(path.name) from None
        raise
    return os.fdopen(fd, encoding="utf-8", errors="replace", newline="\n")


def digest(data: bytes) -> str:
    """The SHA-256 (hex) the journal records."""
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- #
# Worker side: temporaries
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class StagedFile:
    """A crop written to a temporary, waiting for its final name."""

    output: str  # relative to OUT_DIR, POSIX
    temporary: str  # name of the temporary in the same folder
    size: int
    sha256: str


def temporary_name() -> str:
    """A short hidden temporary name (the same length for every crop name)."""
    return f".fa-{secrets.token_hex(8)}{PART_SUFFIX}"


def stage_file(root: Path, output: str, data: bytes, folders: dict[str, int]) -> StagedFile:
    """Write ``data`` to a temporary beside ``root/output`` (folders made as needed, never
    through a link); ``folders`` caches the descriptors of the folders (close them with
    :func:`close_folders`). Not flushed: see :func:`sync`."""
    head, _ = split(output)
    fd = folders.get(head)
    if fd is None:
        fd = folders[head] = open_folder(root, head, create=True)
    name = temporary_name()
    out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644, dir_fd=fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(out, view) :]
        if not _HAS_SYNCFS:
            os.fsync(out)
    except BaseException:
        os.close(out)
        _unlink_at(fd, name)
        raise
    os.close(out)
    return StagedFile(output, name, len(data), digest(data))


def close_folders(folders: dict[str, int]) -> None:
    for fd in folders.values():
        os.close(fd)
    folders.clear()


def discard(root: Path, files: Iterable[StagedFile]) -> None:
    """Delete these temporaries (quietly)."""
    for staged in files:
        try:
            with folder(root, split(staged.output)[0]) as fd:
                _unlink_at(fd, staged.temporary)
        except OSError:
            pass


def _unlink_at(fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=fd)
    except OSError:
        pass


def _load_syncfs() -> Any:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syncfs
    except (OSError, AttributeError):
        return None


_SYNCFS = _load_syncfs()
_HAS_SYNCFS = _SYNCFS is not None


def sync(root: Path, fds: Sequence[int] = ()) -> None:
    """Make what was written under ``root`` durable: one ``syncfs`` of its file system
    (Linux), else ``fsync`` of the descriptors ``fds`` (the temporaries were each
    flushed when written, :func:`stage_file`)."""
    if _SYNCFS is not None:
        fd = os.open(root, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            if _SYNCFS(fd) != 0:
                import ctypes

                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code), str(root))
        finally:
            os.close(fd)
        return
    for fd in fds:
        try:
            os.fsync(fd)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EBADF):  # folders cannot always be flushed
                raise


# --------------------------------------------------------------------------- #
# Job side: the journal, final names, removal
# --------------------------------------------------------------------------- #


class Journal:
    """The crops the job wrote, by output name: ``(bytes, sha256 or None)``.

    Read lazily (only when a file is to be deleted or recognised); entries of
    crops recorded by facealign 0.5.0, which kept no journal, are seeded with their
    size only (:meth:`seed`).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / JOURNAL_NAME
        self._entries: dict[str, tuple[int, str | None]] | None = None
        self._handle: Any = None

    def exists(self) -> bool:
        return os.path.lexists(self.path)

    def entries(self) -> dict[str, tuple[int, str | None]]:
        if self._entries is None:
            entries: dict[str, tuple[int, str | None]] = {}
            for line in read_bytes(self.path).decode("utf-8", "replace").split("\n"):
                try:
                    output, size, sha = json.loads(line)
                    entries[str(output)] = (int(size), None if sha is None else str(sha))
                except (ValueError, TypeError):
                    continue  # a torn last line
            self._entries = entries
        return self._entries

    def append(self, items: Sequence[tuple[str, int, str | None]]) -> None:
        """Add entries, durably, before the files get their names."""
        if self._handle is None:
            self._handle = open_append(self.path)
        text = "".join(json.dumps([o, s, h], ensure_ascii=True) + "\n" for o, s, h in items)
        data = memoryview(text.encode("ascii"))
        while data:
            data = data[self._handle.write(data) :]
        if text:
            os.fsync(self._handle.fileno())
        if self._entries is not None:
            for output, size, sha in items:
                self._entries[output] = (size, sha)

    def seed(self, outputs: Iterable[str]) -> None:
        """Start the journal of an OUT_DIR made before it existed: the recorded crops
        that exist, with their size (no hash: they were not read)."""
        items = []
        for output in outputs:
            try:
                head, name = split(output)
                with folder(self.root, head) as fd:
                    info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                items.append((output, info.st_size, None))
        self.append(items)  # opens (creates) the journal even when there is nothing to add

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def is_ours(self, output: str) -> bool:
        """Whether ``root/output`` is a regular file (not a link) with the size and hash
        the journal records for it."""
        entry = self.entries().get(output)
        if entry is None:
            return False
        try:
            head, name = split(output)
            with folder(self.root, head) as dfd:
                fd = os.open(name, os.O_RDONLY | _NOFOLLOW, dir_fd=dfd)
                with os.fdopen(fd, "rb") as handle:
                    info = os.fstat(handle.fileno())
                    if not stat.S_ISREG(info.st_mode) or info.st_size != entry[0]:
                        return False
                    return entry[1] is None or digest(handle.read()) == entry[1]
        except OSError:
            return False

    def remove(self, output: str) -> bool:
        """Delete ``root/output`` if it is ours (:meth:`is_ours`); whether it was deleted."""
        if not self.is_ours(output):
            return False
        try:
            head, name = split(output)
            with folder(self.root, head) as fd:
                os.unlink(name, dir_fd=fd)
        except OSError:
            return False
        return True


_JOURNALS: dict[Path, Journal] = {}


def journal_of(root: Path) -> Journal:
    """The :class:`Journal` of OUT_DIR ``root`` in this process (one per job: see :func:`forget_journal`)."""
    journal = _JOURNALS.get(root)
    if journal is None:
        journal = _JOURNALS[root] = Journal(root)
    return journal


def forget_journal(root: Path) -> None:
    """Close and forget the :class:`Journal` of ``root`` (the job ends, or starts anew)."""
    journal = _JOURNALS.pop(root, None)
    if journal is not None:
        journal.close()


def commit_files(root: Path, journal: Journal, images: Sequence[Sequence[StagedFile]]) -> list[OSError | None]:
    """Give the temporaries of each image their final names, durably (see the module notes).

    Returns, per image, ``None`` when all its crops are in place, else the error
    that stopped it (its temporaries and the crops already renamed are removed).
    """
    journal.append([(f.output, f.size, f.sha256) for files in images for f in files])
    folders: dict[str, int] = {}
    outcome: list[OSError | None] = []
    try:
        for files in images:
            done: list[tuple[int, str]] = []
            try:
                for f in files:
                    head, name = split(f.output)
                    fd = folders.get(head)
                    if fd is None:
                        fd = folders[head] = open_folder(root, head)
                    os.rename(f.temporary, name, src_dir_fd=fd, dst_dir_fd=fd)  # EISDIR onto a folder
                    done.append((fd, name))
            except OSError as exc:
                for fd, name in done:
                    _unlink_at(fd, name)
                discard(root, files)
                outcome.append(exc)
                continue
            outcome.append(None)
        sync(root, list(folders.values()))
    finally:
        close_folders(folders)
    return outcome


def list_folder(root: Path, rel: str) -> tuple[list[str], list[str]]:
    """``(names of files and links, names of .part temporaries)`` in ``root/rel``, reached
    without following links (raises as :func:`open_folder`)."""
    with folder(root, rel) as fd, os.scandir(fd) as listing:
        names = [e.name for e in listing if not e.is_dir(follow_symlinks=False)]
    return names, [n for n in names if n.startswith(".") and n.endswith(PART_SUFFIX)]


def remove_temporaries(root: Path, rel: str, names: Iterable[str]) -> None:
    """Delete these ``.part`` temporaries of folder ``rel`` (quietly)."""
    try:
        with folder(root, rel) as fd:
            for name in names:
                _unlink_at(fd, name)
    except OSError:
        pass
