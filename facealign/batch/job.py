"""What every part of the crop job shares: its settings, file names, errors, the
records' fields and the task of one image."""

from __future__ import annotations

import errno
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..constants import DEFAULT_DETECTOR, P_FAIL_POOR
from ..failures import RETRIED_KINDS, FailureKind
from .outdir import JOURNAL_NAME

#: Images per parallel task (the landmark network is batched across a task).
CHUNK_SIZE: int = 32


#: Name of the failures list in ``OUT_DIR``.
FAILURES_NAME: str = "failures.jsonl"


#: With ``jobs="auto"``, one worker process per this many images to process
#: (at most one per core): starting workers (Python, the networks, the weights) makes
#: two processes pay off from about 200 images (measured: see README, ``--jobs``).
AUTO_IMAGES_PER_PROCESS: int = 100


#: Prefixes of the failure reasons that every rerun retries, because what caused them can be
#: fixed without the source file changing (permissions, a link, OUT_DIR, memory that was
#: short for a moment): the kinds of :data:`facealign.failures.RETRIED_KINDS`.
RETRIED_REASONS: tuple[str, ...] = tuple(kind.prefix for kind in FailureKind if kind in RETRIED_KINDS)


#: Failure reason of an image whose worker process died on it, twice.
WORKER_DIED_REASON: str = FailureKind.FAILED.reason(
    "the worker process died on it (a crash in a decoder, or killed for memory)"
)

#: Failure reason of faces over the quality limits.
LOW_QUALITY: str = FailureKind.LOW_QUALITY.reason()


MANIFEST_FORMATS: tuple[str, ...] = ("jsonl", "csv")


OUTPUT_FORMATS: tuple[str, ...] = ("jpg", "png")


_LOCK_NAME = ".facealign-crop.lock"


#: Locked (shared) by worker processes while they run a chunk, so that a new job
#: waits for the workers of a killed one.
_WORKERS_LOCK_NAME = ".facealign-crop.workers"


#: The settings of the job that made OUT_DIR (JSON).
_SETTINGS_NAME = ".facealign-crop.json"


#: Output names (stem and extension) that the current run may write, one JSON
#: array per line; the crops of these not in the manifest are removed on resume.
_PENDING_NAME = ".facealign-crop.pending"


#: Indices of the chunks that worker processes started, one per line: when a worker
#: dies, the images of these chunks are redone one per process (see _run_chunks).
_STARTED_NAME = ".facealign-crop.started"


#: The records a run dropped (sources gone from IN_DIR or changed), one JSON
#: ``[source, bytes, mtime_ns]`` a line, written before their crops are deleted;
#: the record files are rewritten without them at the end of the run, or by the
#: next run when this one is killed first.
_DROPPED_NAME = ".facealign-crop.dropped"


#: The hidden files of the job's state in OUT_DIR (never followed when links).
_STATE_NAMES: tuple[str, ...] = (
    _LOCK_NAME, _WORKERS_LOCK_NAME, _SETTINGS_NAME, _PENDING_NAME, _STARTED_NAME, _DROPPED_NAME,
    JOURNAL_NAME,
)  # fmt: skip


#: A crop file name: ``<stem>_<face><ext>``.
_CROP_NAME = re.compile(r"^(?P<stem>.+)_(?P<face>[0-9]+)(?P<ext>\.jpg|\.png)\Z", re.DOTALL)  # any character


#: Manifest fields, in order. ``box`` is ``[x1, y1, x2, y2]``, ``landmarks`` five
#: ``[x, y]`` in MTFL order and ``transform`` the 2 x 3 source-to-crop matrix, all
#: in original-image pixels; ``size`` is the crop ``[width, height]``;
#: ``source_bytes`` / ``source_mtime_ns`` identify the version of the source
#: that was processed; ``decode_scale`` is the working-image scale (1 = full size);
#: ``warnings`` lists what the decoder warned about an image that still decoded.
#: ``source`` is the path relative to IN_DIR with POSIX separators, as text: a
#: name that is not valid UTF-8 has each such byte written ``%XX``, and then
#: ``source_b64`` holds the exact bytes (base64; JSON rows carry the key only
#: then, CSV rows leave the column empty otherwise).
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
    "warnings",
    "source_b64",
    "expected_error",
    "p_fail",
)


#: Manifest fields added after 0.2.0, all at the end: CSV manifests without them
#: are read, and rewritten with them (empty) when a job resumes.
_FIELDS_ADDED_IN_0_3: tuple[str, ...] = ("warnings", "source_b64", "expected_error", "p_fail")


_FAILURE_FIELDS: tuple[str, ...] = ("source", "reason", "source_bytes", "source_mtime_ns")


class CropJobError(Exception):
    """A crop job cannot start: bad folders, settings or records (a user error)."""


class CropJobTransientError(CropJobError):
    """The job stopped on a condition that is not the images' fault (disk full, I/O error,
    permissions or too many open files in OUT_DIR, workers of a killed job still running).

    Nothing is recorded for the images in progress; rerunning the same command
    after the condition is fixed continues the job.
    """


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
    det_threshold : float, optional
        Detector score a face needs (:class:`facealign.FaceAligner`); None keeps
        the detector's own rule.
    providers : tuple of str, optional
        onnxruntime execution providers (:mod:`facealign.inference`); None: the
        default (the CPU). Not a setting of the results: not recorded in, nor
        compared with, OUT_DIR's settings file.
    """

    detector: str = DEFAULT_DETECTOR
    engine: str = "tcnn"
    template: str = "arcface"
    size: int | None = None
    min_face: float | None = None
    max_expected_error: float | None = None
    max_p_fail: float | None = None
    det_threshold: float | None = None
    providers: tuple[str, ...] | None = None


@dataclass
class Summary:
    """Counts and timing of a crop job.

    ``images`` were found, of which ``skipped`` were already recorded and
    ``processed`` were handled by this run, giving ``faces`` crops and
    ``failures`` failure records. ``ignored`` counts the entries of IN_DIR that
    are not images, by kind (:data:`facealign.imageio.IGNORED_KINDS`), and
    ``gone`` the sources recorded earlier that are no longer in IN_DIR and whose
    records and crops were removed (``prune``), ``missing`` those whose records and
    crops were kept (without ``prune``). ``chunks`` counts the chunks of images
    (tasks) completed, and ``poor`` the crops of this run whose ``p_fail``
    is above :data:`P_FAIL_POOR`.
    """

    images: int = 0
    processed: int = 0
    skipped: int = 0
    faces: int = 0
    failures: int = 0
    seconds: float = 0.0
    manifest: str = ""
    failures_file: str = ""
    ignored: Counter = field(default_factory=Counter)
    gone: int = 0
    chunks: int = 0
    poor: int = 0
    missing: int = 0

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """One-line human summary."""
        ignored = ", ".join(f"{n} {kind}" for kind, n in sorted(self.ignored.items()) if n)
        return (
            f"{self.images} images: {self.processed} processed, {self.skipped} skipped; "
            f"{self.faces} faces cropped, {self.failures} failures; "
            + (f"ignored: {ignored}; " if ignored else "")
            + (f"records of {self.gone} deleted sources dropped; " if self.gone else "")
            + (
                f"{self.missing} recorded sources missing from IN_DIR (records and crops kept; --prune drops them); "
                if self.missing
                else ""
            )
            + f"{self.seconds:.1f} s, {self.images_per_second:.1f} images/s"
            + (f" ({self.chunks} chunks)" if self.chunks else "")
            + (
                f"; {self.poor} crops with p_fail > {P_FAIL_POOR} (likely misplaced landmarks or not a face: "
                f"facealign sheet OUT_DIR shows them first; --max-p-fail {P_FAIL_POOR} leaves them out)"
                if self.poor
                else ""
            )
        )


@dataclass(frozen=True)
class _Task:
    """One source image to crop (all paths as strings for cheap pickling)."""

    source: str  # relative to IN_DIR, POSIX separators (surrogate-escaped when not UTF-8)
    path: str  # absolute
    output_stem: str  # relative to OUT_DIR, without "_<k>.<ext>"; valid UTF-8
    ext: str  # ".jpg" or ".png"
    size: int
    mtime_ns: int


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


#: Errors reading an input file that are the process's state, not the file's: stop the job.
_STOP_READ_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})


#: Errors writing a crop because OUT_DIR holds something else under a needed name (a file
#: where a folder is needed, a folder, a symbolic link: :mod:`facealign.batch.outdir`).
_TAKEN_WRITE_ERRNOS = frozenset({errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ELOOP})


#: Errors writing a crop that the same image will always give.
_PERMANENT_WRITE_ERRNOS = frozenset({errno.ENAMETOOLONG})


def _stop_message(what: str, exc: OSError) -> str:
    """One line for a condition that stops the job (see :class:`CropJobTransientError`)."""
    return f"{what}: {exc.strerror or exc}"
