"""IJB-A / Janus CS2 style verification protocols: reading and writing.

File layout
-----------
A protocol folder holds ``split1/`` ... ``splitN/``; split ``k`` contains

``train_k.csv``
    Training templates (image rows). In this benchmark they are only used to
    fit the PCA projection, never to tune anything on test subjects.
``verify_metadata_k.csv``
    Test templates (image rows).
``verify_comparisons_k.csv``
    One comparison per line: two ``TEMPLATE_ID`` values separated by a comma,
    no header (as in IJB-A).

Both metadata files are CSV with a header containing at least the columns
:data:`METADATA_COLUMNS` (``TEMPLATE_ID, SUBJECT_ID, FILE, MEDIA_ID,
SIGHTING_ID, FRAME, FACE_X, FACE_Y, FACE_WIDTH, FACE_HEIGHT``); extra columns
are tolerated and kept in :attr:`ImageRow.extra`. The ``FACE_*`` fields give
the face box as top-left corner, width and height in pixels; they may all be
empty, meaning that no box is given for that image. ``TEMPLATE_ID`` values are
integers; ``SUBJECT_ID`` values are kept as strings.

:func:`make_protocol` writes a protocol in this format from any list of
``(relative image path, identity)`` pairs, plus a ``protocol.json`` summary.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facealign.constants import IMAGE_EXTENSIONS

__all__ = [
    "METADATA_COLUMNS",
    "PROTOCOL_FORMAT",
    "ImageRow",
    "Split",
    "Protocol",
    "read_metadata",
    "read_comparisons",
    "read_split",
    "read_protocol",
    "list_splits",
    "make_protocol",
    "sample_subjects",
    "items_from_identity_list",
    "items_from_folders",
    "protocol_files",
    "protocol_boxes",
    "protocol_sizes",
    "DEFAULT_YAW_BINS",
    "yaw_bin_labels",
]

#: Upper edges (degrees of |yaw|) of the yaw bins of a cross-pose protocol but the last:
#: bins [0, 15), [15, 30) and [30, 90].
DEFAULT_YAW_BINS: tuple[float, ...] = (15.0, 30.0)

#: Columns every metadata CSV must have (in this order when written).
METADATA_COLUMNS: tuple[str, ...] = (
    "TEMPLATE_ID",
    "SUBJECT_ID",
    "FILE",
    "MEDIA_ID",
    "SIGHTING_ID",
    "FRAME",
    "FACE_X",
    "FACE_Y",
    "FACE_WIDTH",
    "FACE_HEIGHT",
)

#: Value of ``"format"`` in the ``protocol.json`` written by :func:`make_protocol`.
PROTOCOL_FORMAT = "facealign-cs2-v1"

_BOX_COLUMNS = ("FACE_X", "FACE_Y", "FACE_WIDTH", "FACE_HEIGHT")


@dataclass(frozen=True)
class ImageRow:
    """One image (or video frame) of a template.

    Attributes
    ----------
    template_id : int
        Template the image belongs to.
    subject_id : str
        Identity of the subject.
    file : str
        Image path relative to the image root of the data set.
    media_id, sighting_id, frame : str
        Pass-through IJB-A fields (may be empty).
    box : tuple of float or None
        Face box ``(x1, y1, x2, y2)`` in pixels (project convention), converted
        from ``FACE_X, FACE_Y, FACE_WIDTH, FACE_HEIGHT``; ``None`` when the
        ``FACE_*`` fields are empty.
    extra : dict
        Any additional columns, by header name.
    """

    template_id: int
    subject_id: str
    file: str
    media_id: str = ""
    sighting_id: str = ""
    frame: str = ""
    box: tuple[float, float, float, float] | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Split:
    """One split of a protocol.

    Attributes
    ----------
    index : int
        Split number (1-based, as in the folder name).
    train : list of ImageRow
        Training image rows (used only to fit the PCA).
    templates : dict
        Test templates: ``TEMPLATE_ID -> list of ImageRow`` (file order).
    comparisons : numpy.ndarray
        ``(M, 2)`` int64 array of template-id pairs.
    genuine : numpy.ndarray
        ``(M,)`` bool array, ``True`` where both templates of the comparison
        have the same ``SUBJECT_ID``.
    """

    index: int
    train: list[ImageRow]
    templates: dict[int, list[ImageRow]]
    comparisons: np.ndarray
    genuine: np.ndarray

    def template_subject(self, template_id: int) -> str:
        """Return the ``SUBJECT_ID`` of a test template."""
        return self.templates[template_id][0].subject_id

    @property
    def test_files(self) -> list[str]:
        """Sorted unique image files used by the test templates."""
        return sorted({row.file for rows in self.templates.values() for row in rows})

    @property
    def train_files(self) -> list[str]:
        """Sorted unique image files of the training rows."""
        return sorted({row.file for row in self.train})


@dataclass
class Protocol:
    """A protocol folder: its splits and, when present, its ``protocol.json``.

    Attributes
    ----------
    root : pathlib.Path
        The protocol folder.
    splits : list of Split
        Splits in increasing index order.
    summary : dict or None
        Parsed ``protocol.json`` (``None`` for e.g. the original IJB-A files).
    """

    root: Path
    splits: list[Split]
    summary: dict[str, Any] | None = None


# --------------------------------------------------------------------------- what a protocol holds


def protocol_files(protocol: Protocol) -> list[str]:
    """Sorted unique image files of all splits (training and test)."""
    return sorted({f for s in protocol.splits for f in (*s.train_files, *s.test_files)})


def protocol_boxes(protocol: Protocol) -> dict[str, tuple[float, float, float, float]]:
    """``file -> FACE_* box`` for images that have one (the first one listed)."""
    boxes: dict[str, tuple[float, float, float, float]] = {}
    for split in protocol.splits:
        rows = [*split.train, *(r for t in split.templates.values() for r in t)]
        for row in rows:
            if row.box is not None:
                boxes.setdefault(row.file, row.box)
    return boxes


def protocol_sizes(protocol: Protocol) -> dict[str, Any]:
    """Sizes of a protocol: per split and mean over splits."""
    per_split = []
    for s in protocol.splits:
        per_split.append(
            {
                "split": s.index,
                "train_subjects": len({r.subject_id for r in s.train}),
                "train_images": len(s.train_files),
                "test_subjects": len({rows[0].subject_id for rows in s.templates.values()}),
                "test_images": len(s.test_files),
                "test_templates": len(s.templates),
                "genuine": int(s.genuine.sum()),
                "impostor": int((~s.genuine).sum()),
            }
        )
    keys = [k for k in per_split[0] if k != "split"]
    return {
        "splits": len(per_split),
        "images": len(protocol_files(protocol)),
        "mean": {k: float(np.mean([p[k] for p in per_split])) for k in keys},
        "per_split": per_split,
    }


# --------------------------------------------------------------------------- reading


def _parse_box(row: Mapping[str, str], where: str) -> tuple[float, float, float, float] | None:
    values = [(row.get(name) or "").strip() for name in _BOX_COLUMNS]
    if all(v == "" for v in values):
        return None
    if any(v == "" for v in values):
        raise ValueError(f"{where}: FACE_X/FACE_Y/FACE_WIDTH/FACE_HEIGHT must be all given or all empty, got {values}")
    try:
        x, y, w, h = (float(v) for v in values)
    except ValueError as exc:
        raise ValueError(f"{where}: non-numeric face box {values}") from exc
    if not (w > 0 and h > 0) or not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ValueError(f"{where}: face box must have finite values and positive size, got {values}")
    return (x, y, x + w, y + h)


def read_metadata(path: str | Path) -> list[ImageRow]:
    """Read an IJB-A style metadata CSV (``train_k.csv`` or ``verify_metadata_k.csv``).

    Parameters
    ----------
    path : str or pathlib.Path
        CSV file with a header that contains :data:`METADATA_COLUMNS`
        (column names are matched after stripping spaces; extra columns are
        kept in :attr:`ImageRow.extra`).

    Returns
    -------
    list of ImageRow
        Rows in file order.

    Raises
    ------
    ValueError
        If a required column is missing, a ``TEMPLATE_ID`` is not an integer,
        ``SUBJECT_ID`` or ``FILE`` is empty, or a face box is malformed.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        try:
            header = [name.strip().lstrip("\ufeff") for name in next(reader)]
        except StopIteration:
            raise ValueError(f"{path}: empty metadata file (no header)") from None
        missing = [name for name in METADATA_COLUMNS if name not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; header is {header}")
        rows: list[ImageRow] = []
        for line_no, values in enumerate(reader, start=2):
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise ValueError(f"{path}:{line_no}: expected {len(header)} fields, got {len(values)}")
            record = {name: value.strip() for name, value in zip(header, values)}
            where = f"{path}:{line_no}"
            try:
                template_id = int(record["TEMPLATE_ID"])
            except ValueError:
                raise ValueError(f"{where}: TEMPLATE_ID must be an integer, got {record['TEMPLATE_ID']!r}") from None
            if not record["SUBJECT_ID"]:
                raise ValueError(f"{where}: empty SUBJECT_ID")
            if not record["FILE"]:
                raise ValueError(f"{where}: empty FILE")
            extra = {k: v for k, v in record.items() if k not in METADATA_COLUMNS}
            rows.append(
                ImageRow(
                    template_id=template_id,
                    subject_id=record["SUBJECT_ID"],
                    file=record["FILE"],
                    media_id=record["MEDIA_ID"],
                    sighting_id=record["SIGHTING_ID"],
                    frame=record["FRAME"],
                    box=_parse_box(record, where),
                    extra=extra,
                )
            )
    return rows


def read_comparisons(path: str | Path) -> np.ndarray:
    """Read a ``verify_comparisons_k.csv`` file (two template ids per line, no header).

    Returns
    -------
    numpy.ndarray
        ``(M, 2)`` int64 array (``(0, 2)`` for an empty file).

    Raises
    ------
    ValueError
        If a line does not hold exactly two integers.
    """
    path = Path(path)
    pairs: list[tuple[int, int]] = []
    with path.open(newline="", encoding="utf-8") as handle:
        for line_no, values in enumerate(csv.reader(handle), start=1):
            values = [v.strip() for v in values if v.strip()]
            if not values:
                continue
            if len(values) != 2:
                raise ValueError(f"{path}:{line_no}: expected two TEMPLATE_IDs, got {values}")
            try:
                pairs.append((int(values[0]), int(values[1])))
            except ValueError:
                raise ValueError(f"{path}:{line_no}: TEMPLATE_IDs must be integers, got {values}") from None
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def _group_templates(rows: Sequence[ImageRow], source: Path) -> dict[int, list[ImageRow]]:
    templates: dict[int, list[ImageRow]] = defaultdict(list)
    for row in rows:
        group = templates[row.template_id]
        if group and group[0].subject_id != row.subject_id:
            raise ValueError(
                f"{source}: template {row.template_id} mixes subjects {group[0].subject_id!r} and {row.subject_id!r}"
            )
        group.append(row)
    return dict(templates)


def read_split(root: str | Path, index: int) -> Split:
    """Read split ``index`` of the protocol folder ``root``.

    Parameters
    ----------
    root : str or pathlib.Path
        Protocol folder containing ``split{index}/``.
    index : int
        1-based split number.

    Returns
    -------
    Split
        With ``genuine[m]`` true iff both templates of comparison ``m`` share
        their ``SUBJECT_ID``.

    Raises
    ------
    FileNotFoundError
        If one of the three split files is missing.
    ValueError
        If the files are malformed, a template mixes subjects, or a comparison
        refers to a template absent from ``verify_metadata_{index}.csv``.
    """
    folder = Path(root) / f"split{index}"
    paths = {
        "train": folder / f"train_{index}.csv",
        "metadata": folder / f"verify_metadata_{index}.csv",
        "comparisons": folder / f"verify_comparisons_{index}.csv",
    }
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(f"protocol file not found: {path}")
    train = read_metadata(paths["train"])
    templates = _group_templates(read_metadata(paths["metadata"]), paths["metadata"])
    comparisons = read_comparisons(paths["comparisons"])
    unknown = sorted({int(t) for t in comparisons.ravel()} - templates.keys())
    if unknown:
        raise ValueError(
            f"{paths['comparisons']}: {len(unknown)} template id(s) not in {paths['metadata'].name}, e.g. {unknown[:5]}"
        )
    subject = {tid: rows[0].subject_id for tid, rows in templates.items()}
    genuine = np.fromiter(
        (subject[int(a)] == subject[int(b)] for a, b in comparisons), dtype=bool, count=len(comparisons)
    )
    return Split(index=index, train=train, templates=templates, comparisons=comparisons, genuine=genuine)


def list_splits(root: str | Path) -> list[int]:
    """Return the sorted split numbers ``k`` of the ``split{k}/`` folders in ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"protocol folder not found: {root}")
    indices = []
    for child in root.iterdir():
        suffix = child.name[len("split") :]
        if child.is_dir() and child.name.startswith("split") and suffix.isdigit():
            indices.append(int(suffix))
    return sorted(indices)


def read_protocol(root: str | Path, splits: Sequence[int] | None = None) -> Protocol:
    """Read a protocol folder.

    Parameters
    ----------
    root : str or pathlib.Path
        Folder with ``split1/`` ... ``splitN/`` (and optionally ``protocol.json``).
    splits : sequence of int, optional
        Split numbers to read; all found splits by default.

    Returns
    -------
    Protocol

    Raises
    ------
    FileNotFoundError
        If ``root`` or a requested split is missing.
    ValueError
        If ``root`` has no split folder, or a split is malformed.
    """
    root = Path(root)
    indices = list(splits) if splits is not None else list_splits(root)
    if not indices:
        raise ValueError(f"{root}: no split<k>/ folders found")
    summary_path = root / "protocol.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else None
    return Protocol(root=root, splits=[read_split(root, k) for k in indices], summary=summary)


# --------------------------------------------------------------------------- inputs


def items_from_identity_list(path: str | Path) -> list[tuple[str, str]]:
    """Read an ``image identity`` list (e.g. ``celeba_wild/identities.txt``).

    Blank lines and lines starting with ``#`` are skipped. Each other line is
    split at its last run of whitespace, so image paths may contain spaces.

    Returns
    -------
    list of (str, str)
        ``(image path, identity)`` pairs in file order.

    Raises
    ------
    ValueError
        On a line without two fields.
    """
    path = Path(path)
    items: list[tuple[str, str]] = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"{path}:{line_no}: expected 'image identity', got {line!r}")
        items.append((parts[0], parts[1]))
    return items


def items_from_folders(root: str | Path, extensions: frozenset[str] = IMAGE_EXTENSIONS) -> list[tuple[str, str]]:
    """List images of a folder holding one subfolder per identity.

    Parameters
    ----------
    root : str or pathlib.Path
        Folder whose immediate subfolders are identities; images are searched
        recursively inside each subfolder.
    extensions : frozenset of str
        Accepted lower-case file extensions (with dot).

    Returns
    -------
    list of (str, str)
        ``(path relative to root, with '/' separators, identity = subfolder name)``,
        sorted by path.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    items = [
        (path.relative_to(root).as_posix(), identity.name)
        for identity in sorted(p for p in root.iterdir() if p.is_dir())
        for path in sorted(identity.rglob("*"))
        if path.is_file() and path.suffix.lower() in extensions
    ]
    return items


# --------------------------------------------------------------------------- writing


def _template_count(n_images: int, template_size: int, max_templates: int) -> int:
    """Number of templates for a test subject with ``n_images`` (>= 2) images."""
    return max(2, min(max_templates, n_images // template_size, n_images))


def _sample_impostors(
    template_subject: np.ndarray,
    n_wanted: int,
    rng: np.random.Generator,
    template_group: np.ndarray | None = None,
    enumerate_limit: int = 20_000_000,
) -> np.ndarray:
    """Sample ``n_wanted`` distinct unordered different-subject template pairs (index pairs, i < j).

    With ``template_group`` (yaw bins), only pairs of different groups.
    """
    n = len(template_subject)
    if n_wanted <= 0:
        return np.zeros((0, 2), dtype=np.int64)
    if n * (n - 1) // 2 <= enumerate_limit or template_group is not None:
        i, j = np.triu_indices(n, k=1)
        keep = template_subject[i] != template_subject[j]
        if template_group is not None:
            keep &= template_group[i] != template_group[j]
        candidates = np.stack([i[keep], j[keep]], axis=1).astype(np.int64)
        if n_wanted >= len(candidates):
            return candidates
        chosen = rng.choice(len(candidates), size=n_wanted, replace=False)
        return candidates[np.sort(chosen)]
    # Very large template sets: rejection sampling (different-subject pairs dominate).
    seen: set[tuple[int, int]] = set()
    while len(seen) < n_wanted:
        a = rng.integers(0, n, size=2 * (n_wanted - len(seen)) + 16)
        b = rng.integers(0, n, size=len(a))
        for x, y in zip(a.tolist(), b.tolist()):
            if x != y and template_subject[x] != template_subject[y]:
                seen.add((min(x, y), max(x, y)))
                if len(seen) == n_wanted:
                    break
    return np.asarray(sorted(seen), dtype=np.int64)


def _box_fields(box: Sequence[float] | None) -> list[str]:
    if box is None:
        return ["", "", "", ""]
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"box must be (x1, y1, x2, y2) with x2 > x1 and y2 > y1, got {tuple(box)}")
    return [f"{x1:.2f}", f"{y1:.2f}", f"{x2 - x1:.2f}", f"{y2 - y1:.2f}"]


def _write_metadata(path: Path, rows: Sequence[list[str]], extra_columns: Sequence[str] = ()) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow([*METADATA_COLUMNS, *extra_columns])
        writer.writerows(rows)


def yaw_bin_labels(edges: Sequence[float]) -> list[str]:
    """Labels of the |yaw| bins with upper edges ``edges`` (``"0-15", "15-30", "30-90"``)."""
    bounds = [0.0, *(float(e) for e in edges), 90.0]
    return [f"{lo:g}-{hi:g}" for lo, hi in zip(bounds[:-1], bounds[1:])]


def _yaw_bin(yaw: float, edges: Sequence[float]) -> int:
    return int(np.searchsorted(np.asarray(edges, np.float64), abs(yaw), side="right"))


def sample_subjects(items: Sequence[tuple[str, str]], n_subjects: int, seed: int = 0) -> list[tuple[str, str]]:
    """The items of a seeded random sample of ``n_subjects`` subjects (all items if there are no more).

    Used to measure on a smaller protocol when features are costly (e.g.
    ``recognition make-protocol --subjects 150``); the order of ``items`` is kept.

    Raises
    ------
    ValueError
        If ``n_subjects < 2``.
    """
    if n_subjects < 2:
        raise ValueError(f"need at least 2 subjects, got {n_subjects}")
    subjects = sorted({subject for _, subject in items})
    if n_subjects >= len(subjects):
        return list(items)
    chosen = set(np.random.default_rng(seed).choice(subjects, n_subjects, replace=False).tolist())
    return [item for item in items if item[1] in chosen]


def make_protocol(
    items: Sequence[tuple[str, str]],
    out_dir: str | Path,
    n_splits: int = 10,
    seed: int = 0,
    *,
    train_fraction: float = 1.0 / 3.0,
    template_size: int = 4,
    max_templates_per_subject: int = 4,
    impostor_ratio: float = 10.0,
    boxes: Mapping[str, Sequence[float]] | None = None,
    yaw: Mapping[str, float] | None = None,
    yaw_bins: Sequence[float] = DEFAULT_YAW_BINS,
) -> dict[str, Any]:
    """Write a Janus CS2 style verification protocol for an identity-labelled image set.

    For each split ``k`` (``1..n_splits``), with a generator seeded by
    ``(seed, k)`` so every split is reproducible on its own:

    1. Subjects are shuffled. ``round((1 - train_fraction) * n_subjects)``
       subjects become *test* subjects, taken in shuffled order among those
       with at least two images (capped by how many there are); all others are
       *training* subjects. The two sets are disjoint. Each training subject
       forms one training template (``train_k.csv``); training rows are only
       meant for fitting the PCA.
    2. Each test subject's images are shuffled and cut into
       ``max(2, min(max_templates_per_subject, n_images // template_size))``
       templates of near-equal size (one or more images each).
    3. Genuine comparisons: every pair of templates of the same test subject.
       Impostor comparisons: a uniform random sample, without replacement, of
       ``min(round(impostor_ratio * n_genuine), available)`` different-subject
       template pairs. Comparisons are written sorted by template id.

    **Cross-pose** (``yaw`` given): each image falls in a bin of ``|yaw|``
    (upper edges ``yaw_bins``). Test subjects are drawn among those with
    images in at least two bins (and images with a yaw); each test subject's
    templates are made per bin (step 2 within every bin, at least one template
    per non-empty bin; images without a yaw are left out of the test
    templates); genuine comparisons are the same-subject template pairs *of
    different bins*, impostors a sample of different-subject pairs of
    different bins. The metadata get ``YAW`` (degrees, per image) and
    ``YAW_BIN`` (the template's bin label) columns, and ``protocol.json`` a
    ``cross_pose`` record with the bins and, per split, the genuine
    comparisons per bin pair. The yaw must come from a fixed reference, not
    from an aligner under test (``recognition make-protocol --cross-pose``
    uses dlib-ert's landmarks).

    Template ids are unique within a split: test templates are numbered
    ``1..T`` and training templates continue from ``T + 1``. ``MEDIA_ID`` and
    ``SIGHTING_ID`` are the 1-based position of the image in ``items``
    (stable across splits); ``FRAME`` is empty. A ``protocol.json`` summary
    records the parameters and, per split, the numbers of subjects, images,
    templates, genuine and impostor comparisons.

    Parameters
    ----------
    items : sequence of (str, str)
        ``(image path relative to an image root, identity)`` pairs; paths must
        be unique and identities non-empty.
    out_dir : str or pathlib.Path
        Output folder (created; existing split files are overwritten).
    n_splits : int
        Number of splits (10 in CS2).
    seed : int
        Base seed.
    train_fraction : float
        Target fraction of subjects used for training, in ``[0, 1)``.
    template_size : int
        Target number of images per test template (>= 1).
    max_templates_per_subject : int
        Upper bound on templates per test subject (>= 2).
    impostor_ratio : float
        Impostor comparisons per genuine comparison (>= 0).
    boxes : mapping, optional
        ``image path -> (x1, y1, x2, y2)`` face boxes written to ``FACE_*``;
        images without an entry get empty ``FACE_*`` fields.
    yaw : mapping, optional
        ``image path -> yaw`` in degrees: makes a cross-pose protocol (see above).
    yaw_bins : sequence of float
        Increasing upper edges of the ``|yaw|`` bins but the last (which ends at 90).

    Returns
    -------
    dict
        The ``protocol.json`` summary.

    Raises
    ------
    ValueError
        On invalid parameters, duplicate paths, empty identities, or fewer
        than two possible test subjects.
    """
    if n_splits < 1:
        raise ValueError(f"n_splits must be >= 1, got {n_splits}")
    if not 0.0 <= train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in [0, 1), got {train_fraction}")
    if template_size < 1:
        raise ValueError(f"template_size must be >= 1, got {template_size}")
    if max_templates_per_subject < 2:
        raise ValueError(f"max_templates_per_subject must be >= 2, got {max_templates_per_subject}")
    if not impostor_ratio >= 0.0:
        raise ValueError(f"impostor_ratio must be >= 0, got {impostor_ratio}")

    paths = [str(p) for p, _ in items]
    identities = [str(s) for _, s in items]
    dupes = [p for p, count in Counter(paths).items() if count > 1]
    if dupes:
        raise ValueError(f"{len(dupes)} duplicate image path(s) in items, e.g. {dupes[:3]}")
    if any(not s.strip() for s in identities):
        raise ValueError("empty identity in items")
    boxes = dict(boxes or {})
    edges = [float(e) for e in yaw_bins]
    if yaw is not None and (any(not 0 < e < 90 for e in edges) or sorted(set(edges)) != edges or not edges):
        raise ValueError(f"yaw_bins must be increasing edges strictly between 0 and 90, got {list(yaw_bins)}")
    labels = yaw_bin_labels(edges)
    bin_of = [None if yaw is None or p not in yaw else _yaw_bin(yaw[p], edges) for p in paths]

    by_subject: dict[str, list[int]] = defaultdict(list)
    for index, subject in enumerate(identities):
        by_subject[subject].append(index)
    subjects = sorted(by_subject)

    def eligible(subject: str) -> bool:
        if yaw is None:
            return len(by_subject[subject]) >= 2
        return len({bin_of[i] for i in by_subject[subject] if bin_of[i] is not None}) >= 2

    eligible_count = sum(eligible(s) for s in subjects)
    n_test_target = min(round((1.0 - train_fraction) * len(subjects)), eligible_count)
    if n_test_target < 2:
        raise ValueError(
            f"need at least two test subjects with >= 2 images{' in different yaw bins' if yaw else ''}; "
            f"{len(subjects)} subjects, {eligible_count} eligible, train_fraction={train_fraction}"
        )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    split_summaries: list[dict[str, int]] = []
    for k in range(1, n_splits + 1):
        rng = np.random.default_rng([seed, k])
        order = [subjects[i] for i in rng.permutation(len(subjects))]
        test_subjects = [s for s in order if eligible(s)][:n_test_target]
        test_set = set(test_subjects)
        train_subjects = [s for s in order if s not in test_set]

        # Test templates, numbered 1..T in the (shuffled) subject order.
        template_rows: list[list[str]] = []
        template_subject: list[str] = []
        template_bin: list[int] = []
        template_ids_of: dict[str, list[int]] = {}
        for subject in test_subjects:
            images = np.asarray(by_subject[subject])[rng.permutation(len(by_subject[subject]))]
            if yaw is None:
                groups = [(-1, images, _template_count(len(images), template_size, max_templates_per_subject))]
            else:
                groups = []
                for b in range(len(labels)):
                    in_bin = np.asarray([i for i in images.tolist() if bin_of[i] == b], np.int64)
                    if len(in_bin):
                        count = max(1, min(max_templates_per_subject, len(in_bin) // template_size))
                        groups.append((b, in_bin, count))
            ids = []
            for b, group, n_templates in groups:
                for chunk in np.array_split(group, n_templates):
                    template_id = len(template_subject) + 1
                    template_subject.append(subject)
                    template_bin.append(b)
                    ids.append(template_id)
                    for i in sorted(chunk.tolist()):
                        extra = [] if yaw is None else [f"{float(yaw[paths[i]]):.1f}", labels[b]]
                        template_rows.append(
                            [str(template_id), subject, paths[i], str(i + 1), str(i + 1), ""]
                            + _box_fields(boxes.get(paths[i]))
                            + extra
                        )
            template_ids_of[subject] = ids

        genuine = [
            (a, b)
            for ids in template_ids_of.values()
            for n, a in enumerate(ids)
            for b in ids[n + 1 :]
            if yaw is None or template_bin[a - 1] != template_bin[b - 1]
        ]
        n_impostor = int(round(impostor_ratio * len(genuine)))
        impostor_index = _sample_impostors(
            np.asarray(template_subject), n_impostor, rng, None if yaw is None else np.asarray(template_bin)
        )
        impostor = [(int(a) + 1, int(b) + 1) for a, b in impostor_index]
        comparisons = sorted(genuine + impostor)

        train_rows: list[list[str]] = []
        next_id = len(template_subject) + 1
        for n, subject in enumerate(sorted(train_subjects)):
            for i in by_subject[subject]:
                train_rows.append(
                    [str(next_id + n), subject, paths[i], str(i + 1), str(i + 1), ""] + _box_fields(boxes.get(paths[i]))
                )

        folder = out_dir / f"split{k}"
        folder.mkdir(exist_ok=True)
        _write_metadata(folder / f"train_{k}.csv", train_rows)
        _write_metadata(folder / f"verify_metadata_{k}.csv", template_rows, () if yaw is None else ("YAW", "YAW_BIN"))
        with (folder / f"verify_comparisons_{k}.csv").open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle, lineterminator="\n").writerows(comparisons)

        split_summaries.append(
            {
                "split": k,
                "train_subjects": len(train_subjects),
                "train_images": len(train_rows),
                "test_subjects": len(test_subjects),
                "test_images": len(template_rows),
                "test_templates": len(template_subject),
                "genuine": len(genuine),
                "impostor": len(impostor),
            }
        )
        if yaw is not None:
            pairs = Counter(
                "|".join(sorted((labels[template_bin[a - 1]], labels[template_bin[b - 1]]))) for a, b in genuine
            )
            split_summaries[-1]["genuine_by_yaw_bins"] = dict(sorted(pairs.items()))  # type: ignore[assignment]

    summary: dict[str, Any] = {
        "format": PROTOCOL_FORMAT,
        "n_splits": n_splits,
        "seed": seed,
        "parameters": {
            "train_fraction": train_fraction,
            "template_size": template_size,
            "max_templates_per_subject": max_templates_per_subject,
            "impostor_ratio": impostor_ratio,
        },
        "images": len(paths),
        "subjects": len(subjects),
        "subjects_with_2_or_more_images": eligible_count,
        "images_with_box": sum(p in boxes for p in paths),
        "splits": split_summaries,
    }
    if yaw is not None:
        summary["cross_pose"] = {
            "yaw_bins": edges,
            "bin_labels": labels,
            "images_per_bin": {labels[b]: sum(x == b for x in bin_of) for b in range(len(labels))},
            "images_without_yaw": sum(x is None for x in bin_of),
        }
    from facealign.imageio import write_json

    write_json(summary, out_dir / "protocol.json")
    return summary
