"""Encoding crops and writing files atomically (a temporary file, fsync, rename): never a
half-written file under the final name."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np

#: Suffix of the temporary files written by :func:`write_image_atomic`.
PART_SUFFIX: str = ".part"

# OpenCV encoder parameters per extension; the quality argument is inserted.
_QUALITY_PARAM: dict[str, int] = {
    ".jpg": cv2.IMWRITE_JPEG_QUALITY,
    ".jpeg": cv2.IMWRITE_JPEG_QUALITY,
    ".webp": cv2.IMWRITE_WEBP_QUALITY,
}
_WRITABLE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jp2"}
)


def _encode_params(extension: str, quality: int) -> list[int]:
    if not 0 <= quality <= 100:
        raise ValueError(f"quality must be in [0, 100], got {quality}")
    param = _QUALITY_PARAM.get(extension)
    return [param, int(quality)] if param is not None else []


def write_image_atomic(path: str | os.PathLike[str], rgb: np.ndarray, quality: int = 95) -> Path:
    """Encode an RGB image and write it so that the file appears all at once.

    The image is encoded in memory with OpenCV (format from the extension of
    ``path``), written to a hidden temporary file ``.<name>.<random>.part`` in
    the destination directory, flushed to disk with ``fsync`` and renamed onto
    ``path`` with :func:`os.replace`. An interrupted job therefore leaves
    either the previous file or no file, plus at worst a ``.part`` file that
    :func:`find_images` ignores, never a truncated image under the final name.

    Parameters
    ----------
    path : str or os.PathLike
        Destination; parent directories are created.
    rgb : numpy.ndarray
        ``(H, W, 3)`` ``uint8`` RGB array (or ``(H, W)`` grey).
    quality : int, optional
        JPEG / WebP quality in ``[0, 100]``; ignored by lossless formats.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        If the array is not ``uint8`` ``(H, W, 3)`` / ``(H, W)``, the extension
        is not a writable image type, or OpenCV fails to encode.
    """
    path = Path(path)
    data = encode_image(path, rgb, quality)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_bytes_atomic(path, data)


def encode_image(path: str | os.PathLike[str], rgb: np.ndarray, quality: int = 95) -> bytes:
    """The bytes :func:`write_image_atomic` writes to ``path`` (format from its extension).

    Raises
    ------
    ValueError
        As :func:`write_image_atomic`.
    """
    extension = Path(path).suffix.lower()
    if extension not in _WRITABLE_EXTENSIONS:
        raise ValueError(
            f"cannot write {str(path)!r}: extension {extension!r} is not one of {sorted(_WRITABLE_EXTENSIONS)}"
        )
    array = np.asarray(rgb)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)) or array.size == 0:
        raise ValueError(
            f"expected a non-empty (H, W, 3) or (H, W) uint8 array, got shape {array.shape} dtype {array.dtype}"
        )
    bgr = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    ok, encoded = cv2.imencode(extension, bgr, _encode_params(extension, quality))
    if not ok:
        raise ValueError(f"OpenCV could not encode {str(path)!r} as {extension}")
    return encoded.tobytes()


@contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "wb", **open_args: Any) -> Iterator[Any]:
    """Open a file that appears at ``path`` all at once, with its new content or its old.

    The writes go to a hidden temporary file ``.<name>.<random>.part`` in the
    same folder (``mode`` and ``open_args`` as for :func:`open`); when the block
    ends it is flushed to disk with ``fsync``, made ``0644`` and renamed onto
    ``path`` (:func:`os.replace`). On any error the temporary file is removed and
    the error raised, ``path`` untouched. The folder must exist. Every atomic
    write of facealign and ``recognition`` goes through here.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PART_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_args) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` so that ``path`` appears all at once (:func:`atomic_file`); returns ``path``."""
    with atomic_file(path) as handle:
        handle.write(data)
    return Path(path)
