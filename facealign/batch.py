"""The ``facealign crop`` batch job: every face of every image in a folder, aligned.

Layout
------
``IN_DIR`` is walked recursively (:func:`facealign.imageio.find_images`) and its
sub-folders are mirrored in ``OUT_DIR``: face ``k`` (``k`` from 0, largest face
first) of ``IN_DIR/a/b/photo.jpg`` becomes ``OUT_DIR/a/b/photo_<k>.<ext>``. When
two sources of one folder would share output names (``photo.jpg`` and
``photo.png`` with ``--format png``, or ``photo.jpg`` and ``photo.jpeg``) their
crops are named ``photo.jpg_<k>.<ext>`` and ``photo.png_<k>.<ext>`` instead.

Two append-only record files sit in ``OUT_DIR``:

* ``manifest.jsonl`` (or ``manifest.csv``): one row per crop, see
  :data:`MANIFEST_FIELDS`. Boxes, landmarks and the transform are in pixels of
  the *original* image as a viewer shows it (EXIF orientation applied), whatever
  resolution the job worked at.
* ``failures.jsonl``: one row per image that gave no crop, with a ``reason``
  (``unreadable image: ...``, ``no face found``, ``failed: ...``), and one row
  with reason ``low quality`` per image with faces over the quality limits
  (``max_expected_error``, ``max_p_fail``; :mod:`facealign.quality`): those
  faces are not cropped and are listed under ``faces`` with their detection
  index (largest first), box, score, ``expected_error`` and ``p_fail``. The
  faces kept are numbered ``0..num_faces-1`` in the manifest.

An empty hidden file ``.facealign-crop.lock`` is locked while a job runs, so
that a second job on the same ``OUT_DIR`` stops with an error instead of
interleaving records.

Resuming
--------
Records are written by the parent process as results arrive and flushed after
each chunk of images. The rows of one image are written in a single write, and
only after all its crops have been written (each atomically, with
:func:`facealign.imageio.write_image_atomic`), so an image is recorded either
completely or not at all. On a rerun, images recorded in the manifest or the
failures list with the same relative path, byte size and modification time are
skipped; an image that changed since it was recorded is processed again and its
old rows and crops are dropped. A torn last line (the job killed mid-write) is
discarded. ``overwrite=True`` deletes the records and the crops they list and
starts again.

Large photographs
-----------------
Each image is decoded once, at the *working* resolution its detector needs
(:func:`facealign.detection.working_side`): the CNN detectors search a pyramid
of tiles (:class:`facealign.detection.PyramidDetector`) and want the full
resolution to find faces down to ``min_face`` (20 px by default) anywhere in a
photo up to the decoder's pixel limit; dlib and Haar search at most 1,280 px
and get at most :data:`WORK_MAX_SIDE` pixels (JPEGs in Pillow's draft mode).
Detection, landmarks and the warp all run on that working image; coordinates
are mapped back to the original pixels for the records. Within a worker,
decoded images are batched for the landmark network until
:data:`BATCH_PIXELS` pixels are held, which bounds memory per worker.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .alignment import warp_face
from .constants import DEFAULT_DETECTOR, POINT_NAMES, WORK_MAX_SIDE
from .imageio import ImageReadError, find_images, read_image_reduced, write_image_atomic

if TYPE_CHECKING:  # torch-heavy; imported lazily at run time
    from .aligner import Face, FaceAligner

__all__ = [
    "BATCH_PIXELS",
    "CHUNK_SIZE",
    "CropJobError",
    "CropSettings",
    "FAILURES_NAME",
    "ImageFaces",
    "MANIFEST_FIELDS",
    "Summary",
    "WORK_MAX_SIDE",
    "get_aligner",
    "iter_image_faces",
    "manifest_name",
    "run_crop_job",
]


#: Decoded pixels a worker holds at most before running the landmark network
#: (about 150 MB of RGB); a single larger image is processed on its own.
BATCH_PIXELS: int = 50_000_000

#: Images per parallel task (the landmark network is batched across a task).
CHUNK_SIZE: int = 32

#: Name of the failures list in ``OUT_DIR``.
FAILURES_NAME: str = "failures.jsonl"

#: Failure reason of faces over the quality limits.
LOW_QUALITY: str = "low quality"

MANIFEST_FORMATS: tuple[str, ...] = ("jsonl", "csv")
OUTPUT_FORMATS: tuple[str, ...] = ("jpg", "png")
_LOCK_NAME = ".facealign-crop.lock"

#: Manifest fields, in order. ``box`` is ``[x1, y1, x2, y2]``, ``landmarks`` five
#: ``[x, y]`` in MTFL order and ``transform`` the 2 x 3 source-to-crop matrix, all
#: in original-image pixels; ``size`` is the crop ``[width, height]``;
#: ``source_bytes`` / ``source_mtime_ns`` identify the version of the source
#: that was processed; ``decode_scale`` is the working-image scale (1 = full size);
#: ``expected_error`` (% of the inter-ocular distance) and ``p_fail`` are the
#: face's quality figures (:mod:`facealign.quality`), empty when unknown.
MANIFEST_FIELDS: tuple[str, ...] = (
    "source",
    "face",
    "num_faces",
    "box",
    "score",
    "landmarks",
    "transform",
    "output",
    "size",
    "template",
    "engine",
    "detector",
    "decode_scale",
    "source_bytes",
    "source_mtime_ns",
    "expected_error",
    "p_fail",
)
#: Manifest fields added after the first release: CSV manifests without them
#: are read, and rewritten with them (empty) when a job resumes.
_QUALITY_FIELDS: tuple[str, ...] = ("expected_error", "p_fail")
_FAILURE_FIELDS: tuple[str, ...] = ("source", "reason", "source_bytes", "source_mtime_ns")


class CropJobError(Exception):
    """A crop job cannot start: bad folders, settings or records (a user error)."""


@dataclass(frozen=True)
class CropSettings:
    """What a crop job computes; hashable, so it keys the per-process aligner cache.

    Parameters
    ----------
    detector : str
        Detector name (:data:`facealign.constants.BUILTIN_DETECTORS` or a plug-in).
    engine : str
        Landmark engine, ``"tcnn"`` or ``"vanilla"``.
    template : str
        Built-in template name or path of a template JSON file.
    size : int, optional
        Crop side; defaults to the template's own size.
    min_face : float, optional
        Smallest face the detector looks for (pixels); None keeps its default.
    max_expected_error, max_p_fail : float, optional
        Quality limits: faces over either are not cropped (see the module notes).
    """

    detector: str = DEFAULT_DETECTOR
    engine: str = "tcnn"
    template: str = "arcface"
    size: int | None = None
    min_face: float | None = None
    max_expected_error: float | None = None
    max_p_fail: float | None = None


@dataclass
class Summary:
    """Counts and timing of a crop job.

    ``images`` were found, of which ``skipped`` were already recorded and
    ``processed`` were handled by this run, giving ``faces`` crops and
    ``failures`` failure records.
    """

    images: int = 0
    processed: int = 0
    skipped: int = 0
    faces: int = 0
    failures: int = 0
    seconds: float = 0.0
    manifest: str = ""
    failures_file: str = ""

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """One-line human summary."""
        return (
            f"{self.images} images: {self.processed} processed, {self.skipped} skipped; "
            f"{self.faces} faces cropped, {self.failures} failures; "
            f"{self.seconds:.1f} s, {self.images_per_second:.1f} images/s"
        )


# --------------------------------------------------------------------------- #
# Aligner cache and the detect-then-landmark pipeline (shared with the CLI)
# --------------------------------------------------------------------------- #

_ALIGNERS: dict[CropSettings, "FaceAligner"] = {}


def get_aligner(settings: CropSettings) -> "FaceAligner":
    """The :class:`FaceAligner` for ``settings``, built once per process."""
    aligner = _ALIGNERS.get(settings)
    if aligner is None:
        from .aligner import FaceAligner

        aligner = FaceAligner(settings.detector, settings.engine, settings.template, settings.size, settings.min_face)
        _ALIGNERS[settings] = aligner
    return aligner


def _scale_matrix(scale: float) -> np.ndarray:
    """3 x 3 map from original pixels to working pixels: ``q = (p + 0.5) * s - 0.5``."""
    off = 0.5 * (scale - 1.0)
    return np.array([[scale, 0.0, off], [0.0, scale, off], [0.0, 0.0, 1.0]])


@dataclass
class ImageFaces:
    """Faces of one image at its working resolution (see :func:`iter_image_faces`).

    ``boxes`` (N x 4), ``scores`` (N,) and ``landmarks`` (N x 5 x 2) are in pixels
    of ``image``, the working image, which is ``scale`` times the original
    (pixel-centre rule). ``error`` is set, and ``image`` is None, when the image
    could not be read or analysed.
    """

    path: Path
    image: np.ndarray | None = None
    scale: float = 1.0
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,)))
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((0, 5, 2)))
    error: str | None = None
    #: The boxes the landmark engine is given (:meth:`FaceAligner.engine_boxes`).
    engine_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    #: Per-face quality arrays (:meth:`LandmarkEngine.predict_faces`); empty before landmarking.
    quality: dict[str, np.ndarray] = field(default_factory=dict)

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """Map ``(..., 2)`` working-image points (or box corners) to original pixels."""
        return (np.asarray(points, np.float64) + 0.5) / self.scale - 0.5

    def faces(self) -> list["Face"]:
        """The faces with boxes and landmarks in original-image pixels."""
        from .aligner import Face

        boxes = self.to_original(self.boxes.reshape(-1, 2, 2)).reshape(-1, 4)
        points = self.to_original(self.landmarks)
        unknown = np.full(len(boxes), np.nan)
        errors, p_fail = self.quality.get("expected_error", unknown), self.quality.get("p_fail", unknown)
        return [
            Face(b, float(s), p, float(e), float(f))
            for b, s, p, e, f in zip(boxes, self.scores, points, errors, p_fail)
        ]

    def drop_faces(self, drop: np.ndarray) -> None:
        """Remove the faces where the boolean mask ``drop`` is True."""
        keep = ~np.asarray(drop, bool)
        self.boxes, self.scores, self.landmarks = self.boxes[keep], self.scores[keep], self.landmarks[keep]
        self.engine_boxes = self.engine_boxes[keep]
        self.quality = {name: values[keep] for name, values in self.quality.items()}


def _load_and_detect(aligner: "FaceAligner", path: Path, largest_only: bool, max_side: int | None) -> ImageFaces:
    from .detection import working_side

    def side_for(width: int, height: int) -> int:
        side = working_side(aligner.detector, width, height)
        return side if max_side is None else min(side, max_side)

    try:
        image, scale = read_image_reduced(path, side_for)
    except ImageReadError as exc:
        return ImageFaces(path, error=f"unreadable image: {exc.reason}")
    except MemoryError:
        return ImageFaces(path, error="unreadable image: out of memory while decoding")
    try:
        det = aligner.detect(image)
    except Exception as exc:  # a detector failing on one odd image must not stop a batch
        return ImageFaces(path, error=f"failed: detection raised {type(exc).__name__}: {exc}")
    det = det.take(slice(0, 1 if largest_only else len(det)))
    return ImageFaces(
        path,
        image,
        scale,
        det.boxes.astype(np.float64),
        det.scores.astype(np.float64),
        engine_boxes=aligner.engine_boxes(det),
    )


def iter_image_faces(
    aligner: "FaceAligner",
    paths: Sequence["str | os.PathLike[str]"],
    *,
    largest_only: bool = False,
    max_side: int | None = None,
    batch_pixels: int = BATCH_PIXELS,
) -> Iterator[ImageFaces]:
    """Decode, detect and landmark images, yielding one :class:`ImageFaces` each, in order.

    Each image is decoded once, at the working resolution its detector needs
    (:func:`facealign.detection.working_side`: full resolution for the CNN
    detectors at the default ``min_face``, at most 4,096 pixels for dlib and
    Haar), and at most ``max_side`` pixels (longer side) when given. Images are detected one by one and accumulated until
    ``batch_pixels`` decoded pixels are held; then the landmark network runs
    once on every face of the batch (:meth:`LandmarkEngine.predict_many`).
    Unreadable images and detector errors are reported in ``error``, never raised.
    """
    pending: list[ImageFaces] = []
    held = 0

    def flush() -> Iterator[ImageFaces]:
        ok = [item for item in pending if item.error is None and len(item.boxes)]
        if ok:
            points, quality = aligner.engine.predict_many(
                [item.image for item in ok], [item.engine_boxes for item in ok], return_quality=True
            )
            for item, pts, figures in zip(ok, points, quality):
                item.landmarks = np.asarray(pts, np.float64)
                item.quality = figures
        yield from pending
        pending.clear()

    for path in paths:
        item = _load_and_detect(aligner, Path(path), largest_only, max_side)
        pending.append(item)
        if item.image is not None:
            held += item.image.shape[0] * item.image.shape[1]
        if held >= batch_pixels:
            yield from flush()
            held = 0
    yield from flush()


# --------------------------------------------------------------------------- #
# Worker side: one chunk of images -> crops on disk + records
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class _Task:
    """One source image to crop (all paths as strings for cheap pickling)."""

    source: str  # relative to IN_DIR, POSIX separators
    path: str  # absolute
    output_stem: str  # relative to OUT_DIR, without "_<k>.<ext>"
    ext: str  # ".jpg" or ".png"
    size: int
    mtime_ns: int


def _round(values: np.ndarray, digits: int) -> list:
    return np.round(np.asarray(values, np.float64), digits).tolist()


def _crop_rows(
    item: ImageFaces, task: _Task, settings: CropSettings, aligner: "FaceAligner", out_dir: Path
) -> list[dict[str, Any]]:
    """Warp and write every face of one image; its manifest rows (raises on failure)."""
    rows = []
    to_work = _scale_matrix(item.scale)
    faces = item.faces()
    template = aligner.template
    for k, (face, work_points) in enumerate(zip(faces, item.landmarks)):
        crop, matrix = warp_face(item.image, work_points, template)
        output = f"{task.output_stem}_{k}{task.ext}"
        write_image_atomic(out_dir / output, crop)
        transform = matrix @ to_work  # original pixels -> crop pixels
        record = face.to_json()
        rows.append(
            {
                "source": task.source,
                "face": k,
                "num_faces": len(faces),
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
                "expected_error": record["expected_error"],
                "p_fail": record["p_fail"],
            }
        )
    return rows


def _low_quality_failure(item: ImageFaces, task: _Task, settings: CropSettings) -> dict[str, Any] | None:
    """Drop the faces over the quality limits from ``item``; their failure record, or None."""
    from .quality import over_limits

    if settings.max_expected_error is None and settings.max_p_fail is None:
        return None
    faces = item.faces()
    over = over_limits(
        np.array([f.expected_error for f in faces]), np.array([f.p_fail for f in faces]),
        settings.max_expected_error, settings.max_p_fail,
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


def _failure(task: _Task, reason: str) -> dict[str, Any]:
    return {"source": task.source, "reason": reason, "source_bytes": task.size, "source_mtime_ns": task.mtime_ns}


def _process_chunk(
    tasks: list[_Task], settings: CropSettings, largest_only: bool, out_dir: str, single_thread: bool
) -> list[tuple[list[dict[str, Any]], dict[str, Any] | None]]:
    """Crop a chunk of images; per image ``(manifest rows, failure or None)``, in order."""
    if single_thread:
        _limit_threads()
    aligner = get_aligner(settings)
    if single_thread and hasattr(aligner.detector, "set_threads"):
        aligner.detector.set_threads(1)  # onnxruntime's own thread pool
    by_path = {t.path: t for t in tasks}
    results = []
    for item in iter_image_faces(aligner, [t.path for t in tasks], largest_only=largest_only):
        task = by_path[str(item.path)]
        if item.error is not None:
            results.append(([], _failure(task, item.error)))
        elif not len(item.boxes):
            results.append(([], _failure(task, "no face found")))
        else:
            low_quality = _low_quality_failure(item, task, settings)
            try:
                results.append((_crop_rows(item, task, settings, aligner, Path(out_dir)), low_quality))
            except Exception as exc:
                results.append(([], _failure(task, f"failed: {type(exc).__name__}: {exc}")))
        item.image = None  # release the decoded pixels early
    return results


_THREADS_LIMITED = False


def _limit_threads() -> None:
    """One compute thread per worker process (the job is parallel over processes)."""
    global _THREADS_LIMITED
    if not _THREADS_LIMITED:
        import cv2
        import torch

        torch.set_num_threads(1)
        cv2.setNumThreads(1)
        _THREADS_LIMITED = True


# --------------------------------------------------------------------------- #
# Parent side: planning, records, resuming
# --------------------------------------------------------------------------- #


def manifest_name(fmt: str) -> str:
    """File name of the manifest for ``fmt`` (``"jsonl"`` or ``"csv"``)."""
    if fmt not in MANIFEST_FORMATS:
        raise CropJobError(f"unknown manifest format {fmt!r}; choose one of {list(MANIFEST_FORMATS)}")
    return f"manifest.{fmt}"


def _csv_columns() -> list[str]:
    cols: list[str] = []
    for name in MANIFEST_FIELDS:
        if name == "box":
            cols += ["box_x1", "box_y1", "box_x2", "box_y2"]
        elif name == "landmarks":
            cols += [f"{p}_{c}" for p in POINT_NAMES for c in ("x", "y")]
        elif name == "transform":
            cols += ["m00", "m01", "m02", "m10", "m11", "m12"]
        elif name == "size":
            cols += ["width", "height"]
        else:
            cols.append(name)
    return cols


CSV_COLUMNS: tuple[str, ...] = tuple(_csv_columns())
_CSV_COLUMNS_BEFORE_QUALITY: tuple[str, ...] = tuple(c for c in CSV_COLUMNS if c not in _QUALITY_FIELDS)


def _flatten(row: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    for name in MANIFEST_FIELDS:
        value = row[name]
        if name in ("box", "landmarks", "transform", "size"):
            out += np.asarray(value).reshape(-1).tolist()
        else:
            out.append(value)
    return out


def _encode_rows(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for r in rows:
        writer.writerow(_flatten(r))
    return buffer.getvalue()


@dataclass
class _Records:
    """What earlier runs recorded: the identity of each recorded source."""

    done: dict[str, tuple[int, int]] = field(default_factory=dict)  # source -> (bytes, mtime_ns)
    settings: tuple[str, str, str, str] | None = None  # template, engine, detector, width


def _read_text(path: Path) -> tuple[str, bool]:
    """A record file's complete lines and whether a torn last line was cut off."""
    if not path.exists():
        return "", False
    text = path.read_text(encoding="utf-8")
    end = text.rfind("\n") + 1
    return text[:end], end != len(text)


def _manifest_entries(path: Path, fmt: str) -> tuple[list[tuple[dict[str, Any], Any]], bool]:
    """Parsed manifest rows as ``(info, raw)`` pairs, and whether anything was dropped.

    ``info`` holds the fields resuming needs; ``raw`` is the JSON line or the list
    of CSV values, to write the row back unchanged. Malformed rows are dropped.
    """
    text, torn = _read_text(path)
    entries: list[tuple[dict[str, Any], Any]] = []
    dropped = torn
    if fmt == "jsonl":
        raws: list[Any] = text.splitlines()
        rows: list[dict[str, Any] | None] = []
        for line in raws:
            try:
                rows.append(json.loads(line))
            except ValueError:
                rows.append(None)
    else:
        try:
            raws = list(csv.reader(io.StringIO(text)))
        except csv.Error:
            raise CropJobError(f"{path} is not a readable CSV manifest; rerun with --overwrite") from None
        if raws and tuple(raws[0]) == _CSV_COLUMNS_BEFORE_QUALITY:
            # An earlier version's manifest: pad its rows with empty quality
            # figures; "dropped" makes _load_records rewrite it with the new header.
            raws = [raws[0] + list(_QUALITY_FIELDS)] + [row + [""] * len(_QUALITY_FIELDS) for row in raws[1:]]
            dropped = True
        if raws and tuple(raws[0]) != CSV_COLUMNS:
            raise CropJobError(f"{path} does not have the columns of a facealign manifest; rerun with --overwrite")
        raws = raws[1:]
        rows = [dict(zip(CSV_COLUMNS, v)) if len(v) == len(CSV_COLUMNS) else None for v in raws]
    for raw, row in zip(raws, rows):
        try:
            width = row["size"][0] if fmt == "jsonl" else row["width"]
            info = {
                "source": str(row["source"]),
                "face": int(row["face"]),
                "num_faces": int(row["num_faces"]),
                "output": str(row["output"]),
                "id": (int(row["source_bytes"]), int(row["source_mtime_ns"])),
                "settings": (str(row["template"]), str(row["engine"]), str(row["detector"]), str(int(float(width)))),
            }
        except (ValueError, KeyError, TypeError, IndexError):
            dropped = True
            continue
        entries.append((info, raw))
    return entries, dropped


def _write_manifest(path: Path, fmt: str, raws: list[Any]) -> None:
    """Replace a manifest atomically with these raw rows."""
    if fmt == "jsonl":
        text = "".join(line + "\n" for line in raws)
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows(raws)
        text = buffer.getvalue()
    _rewrite(path, text)


def _rewrite(path: Path, text: str) -> None:
    """Replace a record file atomically."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _load_records(out_dir: Path, fmt: str, current: dict[str, tuple[int, int]]) -> _Records:
    """Read earlier records, dropping incomplete images and sources that changed since.

    ``current`` maps each source found now to its ``(bytes, mtime_ns)``. The
    record files are rewritten when rows are dropped, and the crops of dropped
    manifest rows are deleted, so every crop is listed exactly once afterwards.
    """
    records = _Records()
    manifest = out_dir / manifest_name(fmt)
    entries, dropped = _manifest_entries(manifest, fmt)
    groups: dict[str, list[dict[str, Any]]] = {}
    for info, _ in entries:
        groups.setdefault(info["source"], []).append(info)
    keep = set()
    for source, group in groups.items():
        complete = len({r["id"] for r in group}) == 1 and sorted(r["face"] for r in group) == list(
            range(group[0]["num_faces"])
        )
        changed = source in current and current[source] != group[0]["id"]
        if complete and not changed:
            keep.add(source)
            records.done[source] = group[0]["id"]
            records.settings = records.settings or group[0]["settings"]
        else:
            for r in group:
                _remove_output(out_dir, r["output"])
    if dropped or len(keep) != len(groups):
        _write_manifest(manifest, fmt, [raw for info, raw in entries if info["source"] in keep])

    failures_path = out_dir / FAILURES_NAME
    text, dropped = _read_text(failures_path)
    kept_lines = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
            source, ident = str(row["source"]), (int(row["source_bytes"]), int(row["source_mtime_ns"]))
        except (ValueError, KeyError, TypeError):
            dropped = True
            continue
        low_quality = row.get("reason") == LOW_QUALITY
        if (
            (source in current and current[source] != ident)
            or (source in keep and not low_quality)
            or (source in groups and source not in keep)
        ):
            dropped = True  # changed since (try again), superseded by crops, or its image is redone
            continue
        records.done.setdefault(source, ident)
        kept_lines.append(line)
    if dropped:
        _rewrite(failures_path, "".join(line + "\n" for line in kept_lines))
    return records


def _remove_output(out_dir: Path, output: str) -> None:
    """Delete a recorded crop, but only a file inside ``out_dir``."""
    target = (out_dir / output).resolve()
    if target.is_relative_to(out_dir.resolve()) and target.is_file():
        target.unlink()


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
    if dst.exists() and not dst.is_dir():
        raise CropJobError(f"OUT_DIR {str(out_dir)!r} exists and is not a folder")
    try:
        dst.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".facealign-probe.", dir=dst)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CropJobError(f"cannot write to OUT_DIR {str(out_dir)!r}: {exc.strerror or exc}") from exc
    return src, dst


def _output_ext(source: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in OUTPUT_FORMATS:
            raise CropJobError(f"unknown output format {fmt!r}; choose one of {list(OUTPUT_FORMATS)}")
        return f".{fmt}"
    suffix = source.suffix.lower()
    return ".jpg" if suffix in (".jpg", ".jpeg") else ".png"


def _plan(in_dir: Path, paths: list[Path], fmt: str | None) -> list[_Task]:
    """One task per image, with collision-free output names (see the module notes)."""
    rels = [p.relative_to(in_dir) for p in paths]
    exts = [_output_ext(p, fmt) for p in paths]
    keys = [(r.parent.as_posix(), r.stem.lower(), e) for r, e in zip(rels, exts)]
    counts: dict[tuple[str, str, str], int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    tasks = []
    for path, rel, ext, key in zip(paths, rels, exts, keys):
        stem = rel.name if counts[key] > 1 else rel.stem
        stat = path.stat()
        tasks.append(
            _Task(rel.as_posix(), str(path), (rel.parent / stem).as_posix(), ext, stat.st_size, stat.st_mtime_ns)
        )
    return tasks


class _Lock:
    """Exclusive lock on ``OUT_DIR`` so that two jobs never append to one manifest."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / _LOCK_NAME
        self.handle = None

    def __enter__(self) -> "_Lock":
        self.handle = open(self.path, "a")
        try:
            import fcntl
        except ImportError:  # Windows: no advisory lock
            return self
        try:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.close()
            raise CropJobError(f"another crop job is writing to {str(self.path.parent)!r}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        # The (empty, hidden) lock file stays: deleting it would let two later
        # jobs lock different files.
        if self.handle is not None:
            self.handle.close()


def _append(handle: io.TextIOBase, text: str) -> None:
    if text:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def run_crop_job(
    in_dir: "str | os.PathLike[str]",
    out_dir: "str | os.PathLike[str]",
    *,
    detector: str = DEFAULT_DETECTOR,
    min_face: float | None = None,
    engine: str = "tcnn",
    template: str = "arcface",
    size: int | None = None,
    largest_only: bool = False,
    jobs: int | None = None,
    fmt: str | None = None,
    overwrite: bool = False,
    manifest_format: str = "jsonl",
    chunk_size: int = CHUNK_SIZE,
    progress: Callable[[int, int], None] | None = None,
    max_expected_error: float | None = None,
    max_p_fail: float | None = None,
) -> Summary:
    """Detect, landmark and align every face of every image under ``in_dir``.

    Parameters
    ----------
    in_dir, out_dir : path
        Source folder (read only) and output folder (created). ``out_dir`` must
        not be ``in_dir`` nor lie inside it.
    detector, min_face, engine, template, size
        As :class:`facealign.FaceAligner`; ``template`` is a built-in name or a
        JSON file path, ``size`` the crop side (default: the template's).
    largest_only : bool
        Crop only the largest face of each image.
    jobs : int, optional
        Worker processes (joblib, loky); None or -1 means all cores. With more
        than one, each worker runs torch and OpenCV single-threaded.
    fmt : {"jpg", "png"}, optional
        Crop file format; by default JPEG sources give ``.jpg`` crops and all
        others ``.png``.
    overwrite : bool
        Delete earlier records and the crops they list, then process everything.
        Otherwise images already recorded (same size and mtime) are skipped.
    manifest_format : {"jsonl", "csv"}
        Manifest file format.
    chunk_size : int
        Images per task (at most; smaller when there are few images per worker).
    progress : callable, optional
        ``progress(done, total)``, called with ``done = 0`` before the first
        image and after each chunk, in the parent process; ``total`` counts the
        images this run processes. An exception raised by it stops the job
        after the chunk's records were written.
    max_expected_error : float, optional
        Do not crop faces whose ``expected_error`` (% of the inter-ocular
        distance) is above this; list them in the failures file as ``low quality``.
    max_p_fail : float, optional
        The same for ``p_fail``, the probability that the error exceeds 10%.
        The limits apply to the images this run processes.

    Returns
    -------
    Summary

    Raises
    ------
    CropJobError
        Missing ``in_dir``, ``out_dir`` inside ``in_dir`` or unwritable, unknown
        settings, records written with other settings (rerun with overwrite).
    """
    start = time.perf_counter()
    in_path, out_path = Path(in_dir), Path(out_dir)
    mname = manifest_name(manifest_format)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    settings = CropSettings(detector, engine, template, size, min_face, max_expected_error, max_p_fail)
    n_jobs = _resolve_jobs(jobs)
    try:  # fail early on unknown names or missing weights (workers build their own)
        resolved = get_aligner(settings).template
    except (ValueError, FileNotFoundError) as exc:
        raise CropJobError(str(exc)) from exc
    if (max_expected_error is not None or max_p_fail is not None) and get_aligner(settings).engine.quality_model is None:
        raise CropJobError(f"the {engine} weights carry no quality model (run facealign fit-quality); "
                           "--max-expected-error and --max-p-fail need one")
    src, dst = _check_dirs(in_path, out_path)

    with _Lock(dst):
        other = dst / manifest_name("csv" if manifest_format == "jsonl" else "jsonl")
        if overwrite:
            _clear(dst)
        elif other.exists():
            raise CropJobError(
                f"{str(out_path / other.name)!r} holds records of an earlier run in the other format; "
                f"rerun with --manifest-format {other.suffix[1:]} or --overwrite"
            )
        tasks = _plan(src, find_images(src), fmt)
        current = {t.source: (t.size, t.mtime_ns) for t in tasks}
        records = _load_records(dst, manifest_format, current)
        wanted = (resolved.name, engine, detector, str(resolved.size[0]))
        if records.settings is not None and records.settings != wanted:
            raise CropJobError(
                "OUT_DIR holds crops made with other settings "
                f"(template, engine, detector, size = {', '.join(records.settings)}); "
                "rerun with --overwrite or choose another OUT_DIR"
            )
        todo = [t for t in tasks if records.done.get(t.source) != (t.size, t.mtime_ns)]
        summary = Summary(images=len(tasks), skipped=len(tasks) - len(todo), manifest=str(out_path / mname),
                          failures_file=str(out_path / FAILURES_NAME))
        manifest_path = dst / mname
        new_csv = manifest_format == "csv" and (not manifest_path.exists() or manifest_path.stat().st_size == 0)
        with open(manifest_path, "a", encoding="utf-8", newline="") as manifest, open(
            dst / FAILURES_NAME, "a", encoding="utf-8"
        ) as failures:
            if new_csv:
                _append(manifest, ",".join(CSV_COLUMNS) + "\n")
            if progress is not None:
                progress(0, len(todo))
            done = 0
            for chunk_tasks, results in _run_chunks(todo, settings, largest_only, dst, n_jobs, chunk_size):
                rows = [r for image_rows, _ in results for r in image_rows]
                fails = [f for _, f in results if f is not None]
                _append(manifest, _encode_rows(rows, manifest_format))
                _append(failures, "".join(json.dumps(f, ensure_ascii=False) + "\n" for f in fails))
                summary.processed += len(chunk_tasks)
                summary.faces += len(rows)
                summary.failures += len(fails)
                done += len(chunk_tasks)
                summary.seconds = time.perf_counter() - start
                if progress is not None:
                    progress(done, len(todo))
    summary.seconds = time.perf_counter() - start
    return summary


def _resolve_jobs(jobs: int | None) -> int:
    import joblib

    if jobs is None or jobs == -1:
        return max(1, joblib.cpu_count())
    if jobs < 1:
        raise CropJobError(f"jobs must be a positive number of processes (or -1 for all cores), got {jobs}")
    return int(jobs)


def _clear(out_dir: Path) -> None:
    """Delete the records of earlier runs and the crops they list (``overwrite``)."""
    for fmt in MANIFEST_FORMATS:
        manifest = out_dir / manifest_name(fmt)
        if manifest.exists():
            try:
                entries, _ = _manifest_entries(manifest, fmt)
            except CropJobError:
                entries = []  # not ours to interpret: remove the file only
            for info, _ in entries:
                _remove_output(out_dir, info["output"])
            manifest.unlink()
    failures = out_dir / FAILURES_NAME
    if failures.exists():
        failures.unlink()


def _run_chunks(
    todo: list[_Task], settings: CropSettings, largest_only: bool, out_dir: Path, n_jobs: int, chunk_size: int
) -> Iterator[tuple[list[_Task], list]]:
    """Yield ``(tasks, results)`` per chunk, in order, running chunks in parallel when ``n_jobs > 1``."""
    if not todo:
        return
    n_jobs = min(n_jobs, len(todo))
    # Enough chunks to keep every worker busy, but large enough to batch the network.
    size = max(1, min(chunk_size, math.ceil(len(todo) / (4 * n_jobs)))) if n_jobs > 1 else chunk_size
    chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
    if n_jobs == 1:
        for chunk in chunks:
            yield chunk, _process_chunk(chunk, settings, largest_only, str(out_dir), False)
        return
    from joblib import Parallel, delayed

    parallel = Parallel(n_jobs=n_jobs, backend="loky", return_as="generator")
    results = parallel(delayed(_process_chunk)(c, settings, largest_only, str(out_dir), True) for c in chunks)
    try:
        for chunk, result in zip(chunks, results):
            yield chunk, result
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()
