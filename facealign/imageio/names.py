"""File names that are not valid UTF-8, as portable text and as their exact bytes."""

from __future__ import annotations

import base64
import os

# --------------------------------------------------------------------------- #
# File names that are not valid UTF-8
# --------------------------------------------------------------------------- #
# On POSIX a file name is bytes; Python gives names that are not valid UTF-8 as
# str with "surrogate escapes" (byte 0xE9 -> "\udce9"), which round-trip through
# os.fsencode but are not valid text for JSON, CSV or a UTF-8 terminal.


def _is_text(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def portable_name(name: str) -> str:
    """``name`` as valid Unicode text: each byte that is not UTF-8 becomes ``%XX``.

    A file name read from disk that is not valid UTF-8 (bytes ``caf\xe9.jpg``
    from an old Latin-1 or FAT copy) becomes ``"caf%E9.jpg"``; every other name
    is returned unchanged. The result can be written to JSON, CSV and terminals;
    it is not reversible on its own (a real file may be named ``caf%E9.jpg``):
    :func:`raw_name_b64` gives the exact bytes.
    """
    if _is_text(name):
        return name
    raw = os.fsencode(name).decode("utf-8", "surrogateescape")
    return "".join(f"%{ord(c) - 0xDC00:02X}" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in raw)


def raw_name_b64(name: str) -> str | None:
    """Base64 of the bytes of a file name that is not valid UTF-8, else ``None``.

    ``os.fsdecode(base64.b64decode(value))`` gives the name back (see
    :func:`name_from_b64`).
    """
    return None if _is_text(name) else base64.b64encode(os.fsencode(name)).decode("ascii")


def name_from_b64(value: str) -> str:
    """The file name (surrogate-escaped str) whose bytes :func:`raw_name_b64` encoded."""
    return os.fsdecode(base64.b64decode(value))
