"""JSON output: plain values from dataclasses, numpy and paths; one JSON line; a JSON file written atomically."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .writing import write_bytes_atomic


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, numpy scalars and arrays, paths -> plain JSON values; NaN and infinities -> None."""
    if hasattr(obj, "__dataclass_fields__") and not isinstance(obj, type):
        from dataclasses import asdict

        return to_jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


#: Characters that ``str.splitlines`` and other line readers (JavaScript, some editors and
#: log shippers) take as line breaks although JSON allows them raw in strings: written
#: escaped by :func:`json_line`. (JSON escapes the C0 controls itself.)
_LINE_BREAKING: dict[int, str] = {c: f"\\u{c:04x}" for c in [*range(0x7F, 0xA0), 0x2028, 0x2029]}


def json_line(obj: Any) -> str:
    """``obj`` as one line of JSON (no final newline): UTF-8 text kept readable, with
    DEL, the C1 controls (U+0080-U+009F, NEL among them) and U+2028 / U+2029 escaped,
    so that no reader splits the line (read JSON lines at ``\\n`` only, all the same)."""
    return json.dumps(obj, ensure_ascii=False).translate(_LINE_BREAKING)


def write_json(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``obj`` as indented JSON (UTF-8, final newline) to ``path`` atomically
    (:func:`write_bytes_atomic`), creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_bytes_atomic(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))
