"""Walking a folder tree of images: what each folder holds, streamed folder by folder."""

from __future__ import annotations

import errno
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facealign.constants import IMAGE_EXTENSIONS

from .decoding import os_error_reason
from .writing import PART_SUFFIX


def _is_image_name(name: str) -> bool:
    return (
        not name.startswith(".")
        and not name.endswith(PART_SUFFIX)
        and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
    )


# --------------------------------------------------------------------------- #
# Walking a folder of images
# --------------------------------------------------------------------------- #

#: Kinds of directory entries that :func:`scan_folder` leaves out, for its counts.
IGNORED_KINDS: tuple[str, ...] = (
    "unknown extension",
    "hidden",
    "directory symlink",
    "broken symlink",
    "unreadable folder",
    "not a regular file",
)


@dataclass
class FolderScan:
    """What :func:`scan_folder` found under a folder.

    Attributes
    ----------
    images : list of (Path, os.stat_result or None, str or None)
        Every entry named like an image (extension in
        :data:`facealign.constants.IMAGE_EXTENSIONS`, not hidden), sorted by
        path components: its path, its ``stat`` (links followed) when it is a
        readable regular file, else ``None`` and why not (``"broken symbolic
        link"``, ``"not a regular file"``, ``"permission denied"``, ...).
    ignored : collections.Counter
        Entries left out, by kind (:data:`IGNORED_KINDS`): files with another
        extension, hidden entries, symbolic links to folders (not followed),
        links to nothing or to themselves, sub-folders that cannot be listed, and
        special files (FIFOs, sockets, devices) that are not named like images.
    unreadable_folders : list of Path
        Sub-folders that could not be listed (their files are unknown).
    folders : list of Path
        With :func:`walk_images` only: the folder's sub-folders, sorted.
    """

    images: list[tuple[Path, os.stat_result | None, str | None]] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)
    unreadable_folders: list[Path] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)


def _classify(entry: os.DirEntry, by_fd: bool = False) -> tuple[str, os.stat_result | None, str | None]:
    """``("dir" | "image" | "other", stat, problem)`` for one directory entry (``by_fd``: of a
    folder listed through a descriptor, :func:`_scandir_long`)."""
    try:
        if entry.is_dir(follow_symlinks=False):
            return "dir", None, None
        is_link = entry.is_symlink()
        info = entry.stat() if by_fd else os.stat(entry.path)  # follows links
    except OSError as exc:
        problem = "broken symbolic link" if exc.errno in (errno.ENOENT, errno.ELOOP) else os_error_reason(exc)
        return ("image" if _is_image_name(entry.name) else "other"), None, problem
    if is_link and stat.S_ISDIR(info.st_mode):
        return "other", info, "directory symlink"
    if not _is_image_name(entry.name):
        return "other", info, None if stat.S_ISREG(info.st_mode) else "not a regular file"
    if not stat.S_ISREG(info.st_mode):
        return "image", None, "not a regular file"
    return "image", info, None


def scan_folder(root: str | os.PathLike[str]) -> FolderScan:
    """Walk a folder for images, never stopped by what is in it.

    Hidden entries (names starting with ``.``) and ``.part`` temporaries of
    :func:`write_image_atomic` are skipped, symbolic links to files are
    followed, symbolic links to folders are not. Unlike :func:`os.walk`, every
    entry left out is counted by kind, an image-named entry that cannot be read
    (a broken link, a FIFO) is listed with the reason, and a sub-folder that
    cannot be listed is counted and named instead of silently skipped.

    Parameters
    ----------
    root : str or os.PathLike
        Folder to walk.

    Returns
    -------
    FolderScan

    Raises
    ------
    FileNotFoundError
        If ``root`` does not exist.
    OSError
        If ``root`` itself cannot be listed.
    """
    scan = FolderScan()

    def gather(folder: Path, part: FolderScan) -> list[tuple[Path, os.stat_result | None, str | None]]:
        scan.ignored.update(part.ignored)
        scan.unreadable_folders.extend(part.unreadable_folders)
        return part.images

    scan.images.extend(walk_images(root, gather))  # the walk's order: sorted by path components
    return scan


def list_image_folder(folder: Path) -> tuple[list[tuple[str, Any]], FolderScan]:
    """One folder's entries for :func:`walk_images`: ``("dir", path)`` and ``("image", index)``
    sorted by name, and the folder's own :class:`FolderScan` (its images, sorted; its
    ignored entries). Raises the ``OSError`` of listing it."""
    by_fd = False
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        entries, by_fd = _scandir_long(folder), True
    scan = FolderScan()
    order: list[tuple[str, Any]] = []
    for entry in entries:
        if entry.name.startswith("."):
            scan.ignored["hidden"] += 1
            continue
        kind, info, problem = _classify(entry, by_fd)
        path = folder / entry.name
        if kind == "dir":
            order.append(("dir", path))
            scan.folders.append(path)
        elif kind == "image":
            order.append(("image", len(scan.images)))
            scan.images.append((path, info, problem))
        elif problem == "broken symbolic link":
            scan.ignored["broken symlink"] += 1
        elif problem in ("directory symlink", "not a regular file"):
            scan.ignored[problem] += 1
        else:
            scan.ignored["unknown extension"] += 1
    return order, scan


def _scandir_long(folder: Path) -> list[os.DirEntry]:
    """The entries of a folder whose path is longer than the system allows (``PATH_MAX``),
    reached one component at a time through descriptors; sorted by name. Their ``stat``
    works (relative to the folder's descriptor); their ``path`` is the name only."""
    parts = folder.parts
    fd = os.open(parts[0] if folder.is_absolute() else ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        for name in parts[1:] if folder.is_absolute() else parts:
            child = os.open(name, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0), dir_fd=fd)
            os.close(fd)
            fd = child
        with os.scandir(fd) as listing:
            entries = sorted(listing, key=lambda e: e.name)
            for entry in entries:  # while the descriptor is open
                try:
                    entry.stat()
                except OSError:
                    pass
            return entries
    finally:
        os.close(fd)


def walk_images(root: str | os.PathLike[str], plan: Callable[[Path, FolderScan], Sequence[Any]]) -> Iterator[Any]:
    """Walk a folder for images as :func:`scan_folder` does, one folder at a time, without
    ever holding the whole listing.

    Each folder is listed once, when the walk reaches it; ``plan(folder, scan)``
    is then called with that folder's own :class:`FolderScan` (its image-named
    entries sorted by name, with their ``stat`` or problem, and its ignored
    entries by kind; ``images`` excludes sub-folders) and returns one item per
    image of ``scan.images``. The walk yields those items (leaving out ``None``)
    in the order of :func:`scan_folder` (sorted by path components: a folder's
    images and sub-folders interleaved by name), so ``plan`` runs for a folder
    before any item of that folder is yielded. A sub-folder that cannot be
    listed gives ``plan(folder, scan)`` with ``scan.images`` empty,
    ``scan.unreadable_folders == [folder]`` and ``ignored["unreadable folder"] == 1``.

    Memory: the entries of the folder being walked and of the folders above it
    (their entries not yet walked), not of the whole tree.

    Raises
    ------
    FileNotFoundError
        If ``root`` does not exist.
    OSError
        If ``root`` itself cannot be listed (raised by this call, which lists
        it; ``plan`` runs from the first ``next`` on).
    """
    root = Path(root)
    return _walk(root, list_image_folder(root), plan)


def _walk(
    root: Path, listed: tuple[list[tuple[str, Any]], FolderScan], plan: Callable[[Path, FolderScan], Sequence[Any]]
) -> Iterator[Any]:
    """The generator of :func:`walk_images`, given the listing of ``root``."""

    def enter(folder: Path) -> Iterator[tuple[str, Any]] | None:
        try:
            order, scan = list_image_folder(folder)
        except OSError:
            unreadable = FolderScan(unreadable_folders=[folder])
            unreadable.ignored["unreadable folder"] += 1
            plan(folder, unreadable)
            return None
        return planned(folder, order, scan)

    def planned(folder: Path, order: list[tuple[str, Any]], scan: FolderScan) -> Iterator[tuple[str, Any]]:
        items = plan(folder, scan)
        if len(items) != len(scan.images):
            raise ValueError(f"plan returned {len(items)} items for {len(scan.images)} images")
        return ((kind, value if kind == "dir" else items[value]) for kind, value in order)

    frames = [planned(root, *listed)]
    del listed
    while frames:
        entry = next(frames[-1], None)
        if entry is None:
            frames.pop()
            continue
        kind, value = entry
        if kind == "dir":
            frame = enter(value)
            if frame is not None:
                frames.append(frame)
        elif value is not None:
            yield value


def count_images(root: str | os.PathLike[str]) -> tuple[int, int]:
    """``(image-named entries, sub-folders that cannot be listed)`` under ``root``, cheaply.

    A walk like :func:`scan_folder`'s that reads names only: no ``stat`` of the
    files (the entry type from the listing; file systems that do not give it
    cost one ``stat`` per entry) and nothing held but the folders still to
    list. The count is an estimate of :func:`scan_folder`'s ``images``: a
    symbolic link to a folder named like an image counts, and the tree may
    change before it is walked again.

    Raises
    ------
    OSError
        If ``root`` itself cannot be listed.
    """
    root = Path(root)
    images = unreadable = 0
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as listing:
                for entry in listing:
                    if entry.name.startswith("."):
                        continue
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        is_dir = False
                    if is_dir:
                        pending.append(Path(entry.path))
                    elif _is_image_name(entry.name):
                        images += 1
        except OSError:
            if folder == root:
                raise
            unreadable += 1
    return images, unreadable


def find_images(root: str | os.PathLike[str]) -> list[Path]:
    """List the image files under a directory, recursively, in sorted order.

    A file counts as an image when its extension, compared case-insensitively,
    is in :data:`facealign.constants.IMAGE_EXTENSIONS`. Hidden files and
    directories (names starting with ``.``) and ``.part`` temporaries of
    :func:`write_image_atomic` are skipped; symbolic links to directories are
    not followed. Image-named entries that cannot be read (broken links) are
    listed too, so that callers report them; :func:`scan_folder` says why.

    Parameters
    ----------
    root : str or os.PathLike
        Directory to search; a single image file is returned as a one-element
        list.

    Returns
    -------
    list of pathlib.Path
        Paths (``root`` joined with the relative path), sorted by their
        components.

    Raises
    ------
    FileNotFoundError
        If ``root`` does not exist.
    """
    root = Path(root)
    if root.is_file():
        return [root] if _is_image_name(root.name) else []
    if not root.is_dir():
        raise FileNotFoundError(f"no such directory: {str(root)!r}")
    return [path for path, _, _ in scan_folder(root).images]
