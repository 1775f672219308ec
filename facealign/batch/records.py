"""The crop job's records in OUT_DIR: the manifest (JSON lines or CSV), the failures list,
the settings file, and what resuming reads back from them."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import POINT_NAMES
from ..failures import RETRIED_KINDS, FailureKind
from ..imageio import (
    atomic_file,
    json_line,
    name_from_b64,
    portable_name,
    raw_name_b64,
    write_bytes_atomic,
)
from .job import (
    _CROP_NAME,
    _DROPPED_NAME,
    _FIELDS_ADDED_IN_0_3,
    _PENDING_NAME,
    _SETTINGS_NAME,
    _STARTED_NAME,
    FAILURES_NAME,
    LOW_QUALITY,
    MANIFEST_FIELDS,
    MANIFEST_FORMATS,
    CropJobError,
    CropSettings,
    _Task,
    _unlink_quietly,
)
from .outdir import journal_of, open_text, read_bytes


def _source_b64(source: str) -> dict[str, str]:
    """``{"source_b64": ...}`` for a source name that is not valid UTF-8, else ``{}``."""
    raw = raw_name_b64(source)
    return {} if raw is None else {"source_b64": raw}


def _record_key(row: dict[str, Any]) -> str:
    """The source of a manifest or failure row as the file-system name (inverse of the row fields)."""
    raw = row.get("source_b64")
    return name_from_b64(str(raw)) if raw else str(row["source"])


def _failure(task: _Task, reason: str) -> dict[str, Any]:
    return {"source": portable_name(task.source), "reason": reason, "source_bytes": task.size,
            "source_mtime_ns": task.mtime_ns, **_source_b64(task.source)}  # fmt: skip


def manifest_name(fmt: str) -> str:
    """File name of the manifest for ``fmt`` (``"jsonl"`` or ``"csv"``)."""
    if fmt not in MANIFEST_FORMATS:
        raise CropJobError(f"unknown manifest format {fmt!r}; choose one of {list(MANIFEST_FORMATS)}")
    return f"manifest.{fmt}"


def _csv_columns(point_prefix: str = "image_") -> list[str]:
    """The CSV header; the landmark columns are ``image_left_eye_x``, ... (the eye on the
    *image's* left, the subject's right eye; MTFL order); facealign < 0.6 wrote them without
    the ``image_`` prefix (``point_prefix=""``)."""
    cols: list[str] = []
    for name in MANIFEST_FIELDS:
        if name == "box":
            cols += ["box_x1", "box_y1", "box_x2", "box_y2"]
        elif name == "landmarks":
            cols += [f"{point_prefix}{p}_{c}" for p in POINT_NAMES for c in ("x", "y")]
        elif name == "transform":
            cols += ["m00", "m01", "m02", "m10", "m11", "m12"]
        elif name == "size":
            cols += ["width", "height"]
        else:
            cols.append(name)
    return cols


CSV_COLUMNS: tuple[str, ...] = tuple(_csv_columns())

#: The CSV columns written by facealign 0.3 to 0.5: landmark columns ``left_eye_x``, ...
#: (read, then rewritten with the current names).
_CSV_COLUMNS_0_5: tuple[str, ...] = tuple(_csv_columns(point_prefix=""))

#: The CSV columns written by facealign 0.2.0 (read, then rewritten).
_LEGACY_CSV_COLUMNS: tuple[str, ...] = tuple(c for c in _CSV_COLUMNS_0_5 if c not in _FIELDS_ADDED_IN_0_3)


def _flatten(row: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    for name in MANIFEST_FIELDS:
        value = row.get(name)
        if name in ("box", "landmarks", "transform", "size"):
            out += np.asarray(value).reshape(-1).tolist()
        elif name == "warnings":
            out.append(json.dumps(value, ensure_ascii=False) if value else "")
        else:
            out.append("" if value is None else value)
    return out


def _encode_rows(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(json_line(r) + "\n" for r in rows)
    buffer = io.StringIO()
    for r in rows:
        _csv_writer(buffer, values := _flatten(r)).writerow(values)
    return buffer.getvalue()


def _csv_writer(buffer: Any, values: list[Any]) -> Any:
    """A CSV writer for a row of ``values``: fields quoted where needed, and every field
    quoted when one holds a carriage return (which the minimal quoting of a ``\\n``
    line terminator leaves bare, and readers would take for a line break)."""
    bare_cr = any(isinstance(v, str) and "\r" in v for v in values)
    return csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL if bare_cr else csv.QUOTE_MINIMAL)


@dataclass
class _Records:
    """What earlier runs recorded: the identity of each recorded source, and its crops.

    Held for the whole job: memory proportional to the images already recorded
    (the work done), not to IN_DIR.
    """

    done: dict[str, tuple[int, int]] = field(default_factory=dict)  # source -> (bytes, mtime_ns)
    settings: tuple[str, str, str, str] | None = None  # template, engine, detector, width
    outputs: set[str] = field(default_factory=set)  # crops listed in the manifest
    dropped: set[tuple[str, str]] = field(default_factory=set)  # (stem, ext) of the crops of dropped rows
    gone: int = 0  # sources no longer in IN_DIR whose records were dropped
    crops: dict[str, list[str]] = field(default_factory=dict)  # source -> its crops (manifest rows)
    failure_rows: Counter = field(default_factory=Counter)  # source -> its failure rows
    folders: dict[str, set[str]] = field(default_factory=dict)  # folder of a source -> recorded sources there
    shared: Counter = field(default_factory=Counter)  # crops listed by several sources (edited by hand) -> how many
    missing: int = 0  # sources no longer in IN_DIR whose records were kept (no prune)


def _read_text(path: Path) -> tuple[str, bool]:
    """A record file's complete lines (``\\n``-terminated; a leading byte-order mark
    removed, other bytes as they are) and whether it needs rewriting: a torn last line
    was cut off, or the mark removed. Never read through a link."""
    text = read_bytes(path).decode("utf-8", errors="replace")  # a torn write may cut a character
    bom = text.startswith("\ufeff")  # re-saved by an editor
    text = text.removeprefix("\ufeff")
    end = text.rfind("\n") + 1
    return text[:end], end != len(text) or bom


def _lines(text: str) -> list[str]:
    """The lines of a JSON-lines text: split at ``\\n`` only (U+2028 and the like are text),
    a ``\\r`` before it (a re-save with CRLF) dropped."""
    return [line.removesuffix("\r") for line in text.split("\n")[:-1]]


def _manifest_entries(path: Path, fmt: str) -> tuple[list[tuple[dict[str, Any], Any]], bool]:
    """Parsed manifest rows as ``(info, raw)`` pairs, and whether anything was dropped.

    ``info`` holds the fields resuming needs; ``raw`` is the JSON line or the list
    of CSV values, to write the row back unchanged. Malformed rows are dropped.
    """
    text, torn = _read_text(path)
    entries: list[tuple[dict[str, Any], Any]] = []
    dropped = torn
    if fmt == "jsonl":
        raws: list[Any] = _lines(text)
        dropped = dropped or "\r\n" in text  # re-saved with CRLF: rewritten with \n
        rows: list[dict[str, Any] | None] = []
        for line in raws:
            try:
                rows.append(json.loads(line))
            except ValueError:
                rows.append(None)
    else:
        try:
            raws = list(csv.reader(io.StringIO(text, newline="")))
        except csv.Error:
            raise CropJobError(f"{path} is not a readable CSV manifest; rerun with --overwrite") from None
        if raws and tuple(raws[0]) == _LEGACY_CSV_COLUMNS:  # written by facealign < 0.3: add the new columns
            raws = [raws[0]] + [v + [""] * (len(CSV_COLUMNS) - len(v)) for v in raws[1:]]
            dropped = True  # rewrite with the current header
        elif raws and tuple(raws[0]) == _CSV_COLUMNS_0_5:  # the same columns, landmarks named as before 0.6
            dropped = True  # rewrite with the current header
        elif raws and tuple(raws[0]) != CSV_COLUMNS:
            raise CropJobError(f"{path} does not have the columns of a facealign manifest; rerun with --overwrite")
        raws = raws[1:]
        rows = [dict(zip(CSV_COLUMNS, v)) if len(v) == len(CSV_COLUMNS) else None for v in raws]
    for raw, row in zip(raws, rows):
        try:
            if row is None:
                raise ValueError("not a row of the manifest's width")
            width = row["size"][0] if fmt == "jsonl" else row["width"]
            info = {
                "source": _record_key(row),
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
        csv.writer(buffer, lineterminator="\n").writerow(CSV_COLUMNS)
        for values in raws:
            _csv_writer(buffer, values).writerow(values)
        text = buffer.getvalue()
    _rewrite(path, text)


def _rewrite(path: Path, text: str) -> None:
    """Replace a record file atomically (:func:`facealign.imageio.write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def _recorded_outputs(out_dir: Path, fmt: str) -> list[str]:
    """The crops the manifest lists as made from their own source (the output's folder and
    name follow from the source's, as the job names them), to start the journal of an
    OUT_DIR made by a version that kept none (:meth:`facealign.batch.outdir.Journal.seed`)."""
    try:
        entries, _ = _manifest_entries(out_dir / manifest_name(fmt), fmt)
    except CropJobError:
        return []
    outputs = []
    for info, _ in entries:
        source, output = portable_name(info["source"]), info["output"]
        match = _CROP_NAME.match(output)
        stem = source.rpartition(".")[0] or source
        if match and (match["stem"] == source or match["stem"].split("~")[0] == stem):
            outputs.append(output)
    return outputs


def _load_records(out_dir: Path, fmt: str) -> _Records:
    """Read earlier records, dropping incomplete images and the rows a killed run had dropped.

    Which sources are gone from IN_DIR or changed is not known yet (the walk
    streams): :class:`_Planner` drops their records folder by folder
    (:meth:`_Planner.drop`). Here the rows named in the dropped list
    (``.facealign-crop.dropped``) of a run that was killed before it rewrote
    the record files are removed, as are incomplete images (with their crops)
    and failures in :data:`RETRIED_REASONS` (retried). The record files are
    rewritten when rows are dropped, so every crop is listed exactly once
    afterwards.
    """
    records = _Records()
    tombstones = _read_dropped(out_dir / _DROPPED_NAME)
    manifest = out_dir / manifest_name(fmt)
    entries, dropped = _manifest_entries(manifest, fmt)
    live = []
    for info, raw in entries:
        if (info["source"], info["id"]) in tombstones:  # its crops were removed, or are unrecorded now
            dropped = True
            match = _CROP_NAME.match(info["output"])
            if match:
                records.dropped.add((match["stem"], match["ext"]))
        else:
            live.append((info, raw))
    groups: dict[str, list[dict[str, Any]]] = {}
    for info, _ in live:
        groups.setdefault(info["source"], []).append(info)
    keep = set()
    listed: Counter = Counter()
    for source, group in groups.items():
        complete = (
            len({r["id"] for r in group}) == 1
            and group[0]["num_faces"] == len(group)  # (never a range of an edited number)
            and sorted(r["face"] for r in group) == list(range(len(group)))
        )
        if complete:
            keep.add(source)
            records.done[source] = group[0]["id"]
            records.settings = records.settings or group[0]["settings"]
            records.outputs.update(r["output"] for r in group)
            records.crops[source] = [r["output"] for r in group]
            listed.update(set(records.crops[source]))
    records.shared = Counter({output: n for output, n in listed.items() if n > 1})
    for source, group in groups.items():
        if source not in keep:
            for r in group:
                if r["output"] not in records.outputs:  # a kept record lists it (a hand-edited manifest)
                    _remove_output(out_dir, r["output"])
                match = _CROP_NAME.match(r["output"])
                if match:
                    records.dropped.add((match["stem"], match["ext"]))
    if dropped or len(keep) != len(groups):
        _write_manifest(manifest, fmt, [raw for info, raw in live if info["source"] in keep])

    failures_path = out_dir / FAILURES_NAME
    text, dropped = _read_text(failures_path)
    dropped = dropped or "\r\n" in text
    kept_lines = []
    for line in _lines(text):
        try:
            row = json.loads(line)
            source, ident = _record_key(row), (int(row["source_bytes"]), int(row["source_mtime_ns"]))
            retried = FailureKind.of(str(row["reason"])) in RETRIED_KINDS
        except (ValueError, KeyError, TypeError):
            dropped = True
            continue
        low_quality = row.get("reason") == LOW_QUALITY
        if (
            retried
            or (source, ident) in tombstones
            or (source in keep and not low_quality)
            or (source in groups and source not in keep)
        ):
            dropped = True  # retried, dropped by a killed run, superseded by crops, or its image is redone
            continue
        records.done.setdefault(source, ident)
        records.failure_rows[source] += 1
        kept_lines.append(line)
    if dropped:
        _rewrite(failures_path, "".join(line + "\n" for line in kept_lines))
    _unlink_quietly(out_dir / _DROPPED_NAME)  # applied
    for source in records.done:
        records.folders.setdefault(source.rpartition("/")[0], set()).add(source)
    return records


def _read_dropped(path: Path) -> set[tuple[str, tuple[int, int]]]:
    """The ``(source, (bytes, mtime_ns))`` of the records a run dropped (see :class:`_Planner`)."""
    text, _ = _read_text(path)
    found = set()
    for line in _lines(text):
        try:
            source, size, mtime_ns = json.loads(line)
            found.add((str(source), (int(size), int(mtime_ns))))
        except (ValueError, TypeError):
            continue
    return found


def _filter_records(path: Path, fmt: str, drop: set[tuple[str, tuple[int, int]]]) -> None:
    """Rewrite a record file (``fmt``: ``"jsonl"`` or ``"csv"``) without the rows of ``drop``,
    streaming (one row in memory at a time), atomically (the temporary is renamed onto it)."""
    source = open_text(path)
    if source is None:
        return
    if fmt == "csv":  # quoted fields may hold line breaks: the csv module splits the lines
        source.reconfigure(newline="")
    with source, atomic_file(path, "w", encoding="utf-8", newline="") as target:
        if fmt == "jsonl":
            for line in source:
                try:
                    row = json.loads(line)
                    key = (_record_key(row), (int(row["source_bytes"]), int(row["source_mtime_ns"])))
                except (ValueError, KeyError, TypeError):
                    key = None  # left to the next run's checks
                if key not in drop:
                    target.write(line)
        else:
            reader = csv.reader(source)
            for n, values in enumerate(reader):
                row = dict(zip(CSV_COLUMNS, values))
                try:
                    key = (_record_key(row), (int(row["source_bytes"]), int(row["source_mtime_ns"])))
                except (ValueError, KeyError, TypeError):
                    key = None  # the header, or left to the next run's checks
                if n == 0 or key not in drop:
                    _csv_writer(target, values).writerow(values)


def _remove_output(out_dir: Path, output: str) -> None:
    """Delete a crop, but only one the job wrote: the file under that name inside
    ``out_dir`` (reached without following links) has the size and hash the journal
    records (:meth:`facealign.batch.outdir.Journal.remove`)."""
    journal_of(out_dir).remove(output)


def _append(handle: io.RawIOBase, text: str) -> None:
    """Append to a record file (opened ``"ab", buffering=0``) and flush it to disk.

    Raises the ``OSError`` of a failed write (disk full, ...); what was written
    of the text then is a torn last line, which resuming discards.
    """
    data = memoryview(text.encode("utf-8"))
    while data:
        data = data[handle.write(data) :]
    if text:
        os.fsync(handle.fileno())


def _job_settings(settings: CropSettings, template: Any, largest_only: bool, fmt: str | None) -> dict[str, Any]:
    """What a job computes, as written in OUT_DIR's settings file (resuming must not change any)."""
    values = dataclasses.asdict(settings)
    del values["providers"]  # where the networks run, not what they compute
    values.update(template=template.name, size=list(template.size), largest_only=largest_only,
                  format=fmt or "jpg for JPEG sources, png otherwise")  # fmt: skip
    return values


def _check_settings(out_dir: Path, wanted: dict[str, Any], has_records: bool) -> None:
    """Refuse to resume with settings other than those of the records in OUT_DIR."""
    path = out_dir / _SETTINGS_NAME
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return
    except ValueError:
        earlier = {}
    # A setting added to CropSettings after the records were made had its default then.
    defaults = dataclasses.asdict(CropSettings())
    earlier = {k: earlier.get(k, defaults.get(k)) for k in wanted} if isinstance(earlier, dict) else {}
    if has_records and earlier != wanted:
        changed = ", ".join(f"{k}: {earlier.get(k)!r}, now {v!r}" for k, v in wanted.items() if earlier.get(k) != v)
        raise CropJobError(
            f"OUT_DIR holds crops made with other settings ({changed or 'unreadable ' + _SETTINGS_NAME}); "
            "rerun with --overwrite or choose another OUT_DIR"
        )


def _has_records(out_dir: Path) -> bool:
    """Whether OUT_DIR holds a non-empty manifest or failures list."""
    names = [manifest_name(f) for f in MANIFEST_FORMATS] + [FAILURES_NAME]
    return any((out_dir / n).is_file() and (out_dir / n).stat().st_size > 0 for n in names)


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
    for name in (FAILURES_NAME, _SETTINGS_NAME, _PENDING_NAME, _STARTED_NAME, _DROPPED_NAME):
        _unlink_quietly(out_dir / name)
