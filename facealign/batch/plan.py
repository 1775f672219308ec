"""Planning the crop job: checking IN_DIR and OUT_DIR, collision-free output names, one
folder at a time as the input walk streams (:class:`_Planner`), and the clean-up of
crops no record lists."""

from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..failures import FailureKind
from ..imageio import (
    FolderScan,
    json_line,
    list_image_folder,
    portable_name,
)
from .job import (
    _CROP_NAME,
    _DROPPED_NAME,
    _PENDING_NAME,
    _PERMANENT_WRITE_ERRNOS,
    _TAKEN_WRITE_ERRNOS,
    CropJobError,
    CropJobTransientError,
    Summary,
    _Task,
)
from .outdir import journal_of, list_folder, open_append, open_text, remove_temporaries
from .records import _append, _failure, _Records, _remove_output


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
    unreadable = FailureKind.UNREADABLE_FILE
    return [t for t, p in planned if p is None], [(t, unreadable.reason(p)) for t, p in planned if p is not None]


def _plan_images(
    in_dir: Path, images: Sequence[tuple[Path, os.stat_result | None, str | None]], fmt: str | None,
    taken: set[tuple[str, str]], twins: Sequence[Path] = (),
) -> list[tuple[_Task, str | None]]:  # fmt: skip
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
    for (path, info, problem), rel, ext, name_key in zip(images, rels, exts, keys):
        stem = portable_name((rel.parent / (rel.name if counts[name_key] > 1 else rel.stem)).as_posix())
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


def _crop_files(out_dir: Path, folders: set[str]) -> tuple[dict[tuple[str, str], list[str]], list[tuple[str, str]]]:
    """Files in these folders of OUT_DIR (relative, POSIX) named like crops, by ``(stem, ext)``,
    and the ``.part`` temporaries there as ``(folder, name)``. Folders are reached without
    following links (:func:`facealign.batch.outdir.list_folder`); one that is a link, or
    missing, has none."""
    crops: dict[tuple[str, str], list[str]] = {}
    parts: list[tuple[str, str]] = []
    for folder in folders:
        try:
            names, temporaries = list_folder(out_dir, folder)
        except OSError:
            continue
        parts += [(folder, name) for name in temporaries]
        for name in names:
            match = _CROP_NAME.match(name)
            if match:
                rel = f"{folder}/{name}" if folder else name
                stem = f"{folder}/{match['stem']}" if folder else match["stem"]
                crops.setdefault((stem, match["ext"]), []).append(rel)
    return crops, parts


def _remove_parts(out_dir: Path, parts: list[tuple[str, str]]) -> None:
    """Delete ``.part`` temporaries listed by :func:`_crop_files`."""
    by_folder: dict[str, list[str]] = {}
    for folder, name in parts:
        by_folder.setdefault(folder, []).append(name)
    for folder, names in by_folder.items():
        remove_temporaries(out_dir, folder, names)


def _folder(stem: str) -> str:
    return stem.rpartition("/")[0]


def _remove_unrecorded(
    out_dir: Path, recorded: set[str], dropped: frozenset[tuple[str, str]] | set[tuple[str, str]] = frozenset()
) -> None:
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
    if parts:
        _remove_parts(out_dir, temporaries)


def _pending_groups(out_dir: Path) -> Iterator[set[tuple[str, str]]]:
    """The ``(stem, ext)`` of the pending file, a group of consecutive lines of one output
    folder at a time (the planner appends a folder at a time), read as a stream."""
    path = out_dir / _PENDING_NAME
    handle = open_text(path)
    if handle is None:
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
    """``{source: why}`` for the images to process whose crops cannot be written: their
    output folder in OUT_DIR is a symbolic link or a file, or their crop names are held by
    files that no record lists and the job did not write (a user's own files: never
    overwritten; crops a run wrote but did not record are recognised by the journal and
    rewritten)."""
    folders = {_folder(t.output_stem) for t in todo}
    blocked: dict[str, str] = {}
    for folder in folders:
        try:
            list_folder(out_dir, folder)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                blocked[folder] = f"{exc.filename} {exc.strerror}"
            elif exc.errno == errno.ENOTDIR:
                blocked[folder] = f"OUT_DIR/{folder} is not a folder; move it away and rerun"
    crops, _ = _crop_files(out_dir, folders - set(blocked))
    journal = journal_of(out_dir)
    taken = {}
    for task in todo:
        folder = _folder(task.output_stem)
        if folder in blocked:
            taken[task.source] = blocked[folder]
            continue
        named = crops.get((task.output_stem, task.ext), [])
        foreign = [rel for rel in named if rel not in recorded and not journal.is_ours(rel)]
        if foreign:
            taken[task.source] = f"{foreign[0]} in OUT_DIR was not written by facealign; move it away and rerun"
    return taken


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
    * records: the recorded sources of the folder that changed are dropped
      (:meth:`drop`), and with ``prune`` those gone from IN_DIR (else they are
      kept and counted as missing, and their crop names stay theirs); sources
      recorded unchanged are skipped; a recorded folder the walk never reached
      is gone at the end (:meth:`finish`), unless it lies in a folder that
      could not be listed;
    * failures of unreadable files and of names a user's file holds are appended;
    * the folder's images to process are appended, durably, to the pending file
      before the first of them is yielded (:meth:`tasks`).

    Memory: the records (:class:`_Records`, the work done), the folder being
    planned (so a folder of a million images costs the driver as much as a
    listing of a million images), and the names of case-variant folders.
    """

    def __init__(self, src: Path, dst: Path, fmt: str | None, records: _Records, failures: io.RawIOBase,
                 summary: Summary, estimate: int, prune: bool = False) -> None:  # fmt: skip
        self.src, self.dst, self.fmt, self.records, self.prune = src, dst, fmt, records, prune
        self.failures, self.summary, self.estimate = failures, summary, estimate
        self.planned = 0  # images to process planned so far
        self.walked = False
        self.hidden: list[str] = []  # "folder/" of the sub-folders that could not be listed
        self.dropped: set[tuple[str, tuple[int, int]]] = set()
        self._dropped_file: io.RawIOBase | None = None
        self._pending = open_append(dst / _PENDING_NAME)
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
        missing = self._judge(rel, {t.source: (t.size, t.mtime_ns) for t, _ in planned})
        self.summary.images += len(planned)
        readable = [t for t, problem in planned if problem is None]
        todo = [t for t in readable if self.records.done.get(t.source) != (t.size, t.mtime_ns)]
        self.summary.skipped += len(readable) - len(todo)
        taken = _taken_outputs(self.dst, todo, self.records.outputs) if todo else {}
        taken.update(self._held(todo, missing))
        early = [(t, FailureKind.UNREADABLE_FILE.reason(problem)) for t, problem in planned if problem is not None] + [
            (t, FailureKind.OUTPUT_NAME_TAKEN.reason(taken[t.source])) for t in todo if t.source in taken
        ]
        todo = [t for t in todo if t.source not in taken]
        _append(self.failures, "".join(json_line(_failure(t, reason)) + "\n" for t, reason in early))
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
                _, scan = list_image_folder(other)
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

    def _judge(self, rel: str, current: dict[str, tuple[int, int]]) -> list[str]:
        """Drop the records of the sources of folder ``rel`` that changed, and those of the
        sources gone with ``prune``; the gone sources whose records are kept."""
        recorded = self.records.folders.pop(rel, set())
        gone = sorted(s for s in recorded if s not in current)
        changed = [s for s in recorded if s in current and current[s] != self.records.done[s]]
        self.drop(sorted(changed), gone=False)
        if self.prune:
            self.drop(gone, gone=True)
            return []
        self.records.missing += len(gone)
        return gone

    def _held(self, todo: list[_Task], missing: list[str]) -> dict[str, str]:
        """``{source: why}`` for the images of ``todo`` whose crop names are held by the kept
        records of sources missing from IN_DIR (without ``prune``)."""
        held: dict[tuple[str, str], tuple[str, str]] = {}
        for source in missing:
            for output in self.records.crops.get(source, []):
                match = _CROP_NAME.match(output)
                if match:
                    held.setdefault((match["stem"], match["ext"]), (output, source))
        found = {}
        for task in todo:
            if (task.output_stem, task.ext) in held:
                output, source = held[(task.output_stem, task.ext)]
                found[task.source] = (
                    f"{portable_name(output)} is the crop of {portable_name(source)}, which is missing from IN_DIR; "
                    "rerun with --prune to drop its records"
                )
        return found

    def drop(self, sources: list[str], gone: bool) -> None:
        """Drop the records of ``sources``: list them in the dropped file (durably, so that a
        killed run's rows are dropped by the next), then delete their crops (and files named
        like them that no record lists). The record files are rewritten at the end."""
        if not sources:
            return
        if self._dropped_file is None:
            self._dropped_file = open_append(self.dst / _DROPPED_NAME)
        records = self.records
        _append(self._dropped_file, "".join(json.dumps([s, *records.done[s]]) + "\n" for s in sources))
        names = set()
        for source in sources:
            self.dropped.add((source, records.done.pop(source)))
            crops = records.crops.pop(source, [])
            failures = records.failure_rows.pop(source, 0)
            records.gone += (bool(crops) + failures) if gone else 0
            for output in crops:
                if records.shared[output] > 1:  # another record lists it too (a hand-edited manifest)
                    records.shared[output] -= 1
                    continue
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
                if self.prune:
                    self.drop(sorted(self.records.folders[folder]), gone=True)
                else:
                    self.records.missing += len(self.records.folders[folder])
        self.records.folders.clear()

    def close(self) -> None:
        self._pending.close()
        if self._dropped_file is not None:
            self._dropped_file.close()


def _is_within(path: str, folder: str) -> bool:
    """Whether POSIX relative ``path`` is ``folder`` or inside it (``""`` is the root)."""
    return not folder or path == folder or path.startswith(folder + "/")
