"""Short content digests that key the caches of :mod:`recognition` (features, detections, landmarks)."""

from __future__ import annotations

import hashlib
import os

__all__ = ["file_digest", "text_digest"]


def file_digest(path: str | os.PathLike[str], length: int = 12) -> str:
    """First ``length`` hex digits of the SHA-1 of a file's content."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def text_digest(text: str, length: int = 12) -> str:
    """First ``length`` hex digits of the SHA-1 of a text (UTF-8)."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:length]
