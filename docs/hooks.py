"""MkDocs hooks (mkdocs.yml ``hooks:``): pages generated at build time from the repository's files.

Three directives, each an HTML comment alone on a line of a page:

* ``<!-- include: PATH -->`` is replaced by the file ``PATH`` (relative to the
  repository root), e.g. ``CHANGELOG.md`` in ``docs/changelog.md``;
* ``<!-- weights-meta: ENGINE -->`` by a table of the training settings recorded
  in the shipped ``facealign/weights/ENGINE.npz``;
* ``<!-- bench-table: FILE KEYS [COLUMNS [ROWS]] -->`` is replaced by a Markdown table of
  the JSON file ``docs/FILE`` as a bench script wrote it: ``KEYS`` is a dotted
  path (``.`` for the whole file) to a dict of dicts (one row per key) or a list
  of dicts (one row per item); ``COLUMNS`` (comma-separated dotted paths into
  each row; ``-`` or absent: the row's numbers and strings); ``ROWS`` keeps the
  rows of these keys only. Numbers are shown with 4
  significant digits. A missing file or key fails the build.

Nothing here reaches the network; the build stays a few seconds long.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
_INCLUDE = re.compile(r"^<!-- include: (?P<path>\S+) -->$", re.M)
_TABLE = re.compile(
    r"^<!-- bench-table: (?P<file>\S+) (?P<keys>\S+)(?: (?P<columns>\S+))?(?: (?P<rows>\S+))? -->$", re.M
)
_WEIGHTS = re.compile(r"^<!-- weights-meta: (?P<engine>\S+) -->$", re.M)


def _get(value: Any, dotted: str) -> Any:
    if dotted in ("", "."):
        return value
    for key in dotted.split("."):
        if isinstance(value, list):
            value = value[int(key)]
        else:
            value = value[key]
    return value


def _lookup(row: dict, dotted: str) -> Any:
    """``row``'s value at ``dotted``; keys may hold dots themselves (``tar_at_far.1e-03.mean``)."""
    parts, value, i = dotted.split("."), row, 0
    while i < len(parts):
        if not isinstance(value, dict):
            return None
        for j in range(len(parts), i, -1):
            key = ".".join(parts[i:j])
            if key in value:
                value, i = value[key], j
                break
        else:
            return None
    return value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (int, str)):
        return str(value).replace("|", "\\|")
    return json.dumps(value)[:40]


def bench_table(file: str, keys: str, columns: str | None = None, only: str | None = None) -> str:
    """The Markdown table of a bench JSON file (see the module docstring)."""
    path = DOCS / file
    data = json.loads(path.read_text(encoding="utf-8"))
    table = _get(data, keys)
    if isinstance(table, dict):
        rows = [(str(k), v) for k, v in table.items() if isinstance(v, dict)]
        first = [""]
    elif isinstance(table, list):
        rows = [("", v) for v in table if isinstance(v, dict)]
        first = []
    else:
        raise ValueError(f"{file} {keys}: neither a dict nor a list of rows")
    if only:
        wanted = only.split(",")
        rows = [row for row in rows if row[0] in wanted]
    if not rows:
        raise ValueError(f"{file} {keys}: no rows")
    if columns and columns != "-":
        names = columns.split(",")
    else:
        names = [k for k, v in rows[0][1].items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    header = first + names
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, row in rows:
        cells = ([key] if first else []) + [_cell(_lookup(row, name)) for name in names]
        lines.append("| " + " | ".join(cells) + " |")
    machine = data.get("machine") if isinstance(data, dict) else None
    source = f"Generated from `docs/{file}`" + (f" (`{keys}`)" if keys not in ("", ".") else "")
    if isinstance(machine, dict) and machine.get("date"):
        source += f", measured {machine['date'][:10]} on {machine.get('cpu_count', '?')} cores ({machine.get('cpu', '')})"
    return "\n".join(lines) + "\n\n" + source + "."


def weights_meta(engine: str) -> str:
    """A table of the training settings recorded in the shipped run-time weights of ``engine``."""
    import numpy as np

    with np.load(ROOT / "facealign" / "weights" / f"{engine}.npz", allow_pickle=False) as archive:
        meta = json.loads(str(archive["meta"]))
    rows = []
    for prefix, part in (("", meta), ("vanilla network: ", meta.get("vanilla_meta", {}))):
        for key, value in part.items():
            if key == "config":
                rows += [(f"{prefix}{k}", v) for k, v in value.items()]
            elif not isinstance(value, dict):
                rows.append((f"{prefix}{key}", value))
    lines = ["| setting | value |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in rows]
    return "\n".join(lines) + f"\n\nGenerated from the `meta` of `facealign/weights/{engine}.npz`."


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Expand the directives of a page (MkDocs event)."""
    markdown = _INCLUDE.sub(lambda m: (ROOT / m["path"]).read_text(encoding="utf-8"), markdown)
    markdown = _WEIGHTS.sub(lambda m: weights_meta(m["engine"]), markdown)
    return _TABLE.sub(lambda m: bench_table(m["file"], m["keys"], m["columns"], m["rows"]), markdown)
