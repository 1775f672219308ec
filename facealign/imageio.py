"""Image input and output at the package boundary.

Everything inside :mod:`facealign` works on ``H x W x 3`` ``uint8`` **RGB**
arrays (see :mod:`facealign.constants`). This module is the only place where
files are decoded (with Pillow, which understands EXIF orientation, palettes,
CMYK, 16-bit data and multi-frame files) or encoded (with OpenCV, whose BGR
order is converted here).

Decoding is strict: a zero-byte, truncated or non-image file raises
:class:`ImageReadError` instead of returning a partly grey picture. Pillow's
decompression-bomb guard (a process-wide setting) is replaced by the explicit
``max_pixels`` argument of :func:`read_image`, so very large photographs are
read without changing Pillow's global configuration for other code.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import logging
import math
import os
import stat
import tempfile
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps

from facealign.constants import IMAGE_EXTENSIONS

__all__ = [
    "DECODED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "FolderScan",
    "ImageReadError",
    "count_images",
    "decode_image_bytes",
    "find_images",
    "is_url",
    "name_from_b64",
    "pil_image_to_rgb",
    "portable_name",
    "raw_name_b64",
    "read_image",
    "read_image_reduced",
    "scan_folder",
    "walk_images",
    "atomic_file",
    "write_bytes_atomic",
    "to_jsonable",
    "json_line",
    "write_json",
    "write_image_atomic",
    "encode_image",
]

#: Default upper bound on the number of pixels of an image to decode
#: (250 megapixels: a 20000 x 12500 photograph, about 750 MB as RGB).
DEFAULT_MAX_PIXELS: int = 250_000_000

#: The Pillow formats decoded, by content whatever the file's extension (the raster
#: formats of :data:`facealign.constants.IMAGE_EXTENSIONS`; JPEG includes the
#: multi-picture MPO of cameras, PPM the PBM/PGM/PNM family). Every other file, such as
#: PostScript (which Pillow hands to Ghostscript), is ``unsupported format X``.
DECODED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "JPEG2000")

#: Suffix of the temporary files written by :func:`write_image_atomic`.
PART_SUFFIX: str = ".part"

# Pillow reads ``Image.MAX_IMAGE_PIXELS`` and ``ImageFile.LOAD_TRUNCATED_IMAGES``
# as module globals, both when a file is opened and while it is decoded (GIF
# frames are checked on load). They are overridden only for the duration of one
# decode, under this lock, so decodes in one process are serialised (parallel
# batch jobs use processes, each with its own lock).
_PILLOW_SETTINGS_LOCK = threading.RLock()

# OpenCV encoder parameters per extension; the quality argument is inserted.
_QUALITY_PARAM: dict[str, int] = {
    ".jpg": cv2.IMWRITE_JPEG_QUALITY,
    ".jpeg": cv2.IMWRITE_JPEG_QUALITY,
    ".webp": cv2.IMWRITE_WEBP_QUALITY,
}
_WRITABLE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jp2"}
)


class ImageReadError(Exception):
    """A file could not be decoded as an image.

    Parameters
    ----------
    path : str or os.PathLike
        The file that failed.
    reason : str
        Why it failed.
    errno : int, optional
        The operating-system error number when the *file* could not be opened
        or read (permission, I/O error, too many open files, ...), as opposed
        to a file that was read but is not a valid image (``None``).
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, errno: int | None = None) -> None:
        self.path = Path(path)
        self.reason = reason
        self.errno = errno
        super().__init__(f"cannot read image {str(self.path)!r}: {reason}")


class _ListHandler(logging.Handler):
    """Collects the messages of log records into a list."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _strict_pillow(decoder_warnings: list[str] | None = None) -> Iterator[None]:
    """Disable Pillow's bomb guard and enable strict truncation checks, locally.

    The size limit is enforced by the caller instead (``max_pixels``). With a
    ``decoder_warnings`` list, the Python warnings and the ``PIL`` log messages
    (warning level and above) raised meanwhile are appended to it instead of
    being shown.
    """
    with _PILLOW_SETTINGS_LOCK:
        saved_max, saved_truncated = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
        Image.MAX_IMAGE_PIXELS = None
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        pil_logger = logging.getLogger("PIL")
        handler, saved_propagate = None, pil_logger.propagate
        if decoder_warnings is not None:
            handler = _ListHandler(decoder_warnings)
            pil_logger.addHandler(handler)
            pil_logger.propagate = False
        try:
            with warnings.catch_warnings(record=decoder_warnings is not None) as caught:
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                if decoder_warnings is not None:
                    warnings.simplefilter("always")
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                try:
                    yield
                finally:
                    if caught and decoder_warnings is not None:
                        decoder_warnings.extend(str(w.message) for w in caught)
        finally:
            Image.MAX_IMAGE_PIXELS = saved_max
            ImageFile.LOAD_TRUNCATED_IMAGES = saved_truncated
            if handler is not None:
                pil_logger.removeHandler(handler)
                pil_logger.propagate = saved_propagate


def _check_pixels(path: Path, size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageReadError(path, f"empty image ({width} x {height})")
    if width * height > max_pixels:
        raise ImageReadError(
            path,
            f"{width} x {height} = {width * height} pixels exceeds max_pixels={max_pixels}",
        )


def _to_uint8_gray(array: np.ndarray, mode: str) -> np.ndarray:
    """Scale a single-channel high-bit-depth array to ``uint8``.

    Integer data are scaled by the range of their storage type (16-bit: the
    top byte, ``v >> 8``), never clipped. Pillow's 32-bit ``I`` mode mostly
    holds 16-bit samples (``0..65535``) and is treated as such; values outside
    that range are mapped linearly from ``[min, max]``. Floating-point (``F``)
    data in ``[0, 1]`` are scaled by 255; other ranges are mapped linearly from
    ``[min, max]``.
    """
    if array.dtype == np.uint8:
        return array
    lo: float
    hi: float
    if array.dtype.kind == "u" and array.dtype.itemsize == 2:
        return (array.astype(np.uint16) >> 8).astype(np.uint8)
    if array.dtype.kind == "i" and array.dtype.itemsize == 2:
        return ((array.astype(np.int32) + 32768) >> 8).astype(np.uint8)
    if array.dtype.kind in "iu":
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if lo >= 0 and hi <= 65535:
            return (array.astype(np.int64) >> 8).astype(np.uint8)
        return _stretch(array.astype(np.float64), lo, hi)
    if array.dtype.kind == "f":
        data = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
        if lo >= 0.0 and hi <= 1.0:
            return np.rint(data * 255.0).astype(np.uint8)
        return _stretch(data, lo, hi)
    raise ValueError(f"unsupported sample type {array.dtype} for Pillow mode {mode!r}")


def _stretch(data: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(data.shape, np.uint8)
    return np.rint((data - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Blend an ``H x W x 4`` ``uint8`` RGBA array onto white, rounding."""
    rgb = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:4].astype(np.uint32)
    out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    """Convert a loaded Pillow image of any mode to ``H x W x 3`` ``uint8`` RGB."""
    mode = image.mode
    if mode in ("I", "F") or mode.startswith("I;"):
        gray = _to_uint8_gray(np.asarray(image), mode)
        return np.repeat(gray[:, :, None], 3, axis=2)
    has_alpha = "A" in image.getbands() or "a" in mode or "transparency" in image.info
    if has_alpha:
        return _composite_on_white(np.asarray(image.convert("RGBA")))
    if mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


#: The EXIF tag of the orientation (1: upright, as stored).
_EXIF_ORIENTATION = 0x0112


def _decode(
    path: str | os.PathLike[str],
    max_pixels: int,
    max_side: int | MaxSide | None,
    decoder_warnings: list[str] | None = None,
) -> tuple[np.ndarray, float]:
    """Decode ``path``; with ``max_side``, use JPEG draft mode and return the DCT scale."""
    path = Path(path)
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    try:
        info = path.stat()
    except OSError as exc:
        raise ImageReadError(path, _os_reason(exc), exc.errno) from exc
    if not stat.S_ISREG(info.st_mode):
        raise ImageReadError(path, "not a regular file")
    if info.st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    scale = 1.0
    try:
        with _strict_pillow(decoder_warnings), Image.open(path, formats=DECODED_FORMATS) as image:
            if max_side is not None:
                width, height = image.size
                if callable(max_side):
                    max_side = max(1, int(max_side(width, height)))
                target = max_side / max(width, height)
                if target < 1.0:
                    request = (
                        max(1, math.ceil(width * target)),
                        max(1, math.ceil(height * target)),
                    )
                    drafted = image.draft("RGB", request)
                    if drafted is not None:
                        scale = drafted[1][2] / width  # box = (0, 0, width / s, height / s)
            _check_pixels(path, image.size, max_pixels)
            image.load()
            # exif_transpose copies the pixels even when there is nothing to turn
            # (60 ms on a 12 MP photo); most photos are upright
            upright = image.getexif().get(_EXIF_ORIENTATION, 1) in (None, 1)
            rgb = _pil_to_rgb(image if upright else ImageOps.exif_transpose(image))
    except ImageReadError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # Pillow raises many types for corrupt data
        if isinstance(exc, OSError) and exc.errno is not None:  # the file, not its contents
            raise ImageReadError(path, _os_reason(exc), exc.errno) from exc
        raise ImageReadError(path, _read_reason(exc, _head(path))) from exc
    return np.ascontiguousarray(rgb, dtype=np.uint8), scale


#: The name given to an image decoded from bytes in errors (:func:`decode_image_bytes`).
_BYTES_NAME = "<bytes>"
#: The name given to a Pillow image in errors (:func:`pil_image_to_rgb`).
_PIL_NAME = "<PIL image>"


def _read_reason(exc: Exception, head: bytes = b"") -> str:
    if isinstance(exc, Image.UnidentifiedImageError):
        other = _other_format(head)
        return f"unsupported format {other}" if other else "not a recognised image format"
    return f"{type(exc).__name__}: {exc}"


def _other_format(head: bytes) -> str | None:
    """The Pillow format outside :data:`DECODED_FORMATS` whose signature ``head`` (the first
    16 bytes of a file) has, by Pillow's own checks of the first bytes (no decoder runs)."""
    Image.init()
    for name, (_, accept) in Image.OPEN.items():
        if name not in DECODED_FORMATS and accept is not None:
            try:
                if accept(head[:16]) is True:
                    return name
            except Exception:  # a check that fails on these bytes does not match
                continue
    return None


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(16)
    except OSError:
        return b""


def decode_image_bytes(data: bytes | bytearray | memoryview, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode the bytes of an image file (JPEG, PNG, ...) as :func:`read_image` decodes a file.

    Raises
    ------
    ImageReadError
        For empty bytes, bytes that are not an image, a truncated image or one
        larger than ``max_pixels``; its path is ``<bytes>``.
    """
    if not len(data):
        raise ImageReadError(_BYTES_NAME, "no bytes (0 bytes)")
    try:
        with _strict_pillow(), Image.open(io.BytesIO(bytes(data)), formats=DECODED_FORMATS) as image:
            _check_pixels(Path(_BYTES_NAME), image.size, max_pixels)
            image.load()
            rgb = _pil_to_rgb(ImageOps.exif_transpose(image))
    except (ImageReadError, MemoryError):
        raise
    except Exception as exc:  # Pillow raises many types for corrupt data
        raise ImageReadError(_BYTES_NAME, _read_reason(exc, bytes(data[:16]))) from exc
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def pil_image_to_rgb(image: Image.Image) -> np.ndarray:
    """A Pillow image as an ``H x W x 3`` ``uint8`` RGB array, with the conversions of
    :func:`read_image` (EXIF orientation applied, any mode to RGB, alpha onto white).

    Raises
    ------
    ImageReadError
        When the image's pixels cannot be loaded (a truncated file opened lazily).
    """
    try:
        with _strict_pillow():
            image.load()
            rgb = _pil_to_rgb(ImageOps.exif_transpose(image))
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageReadError(_PIL_NAME, _read_reason(exc)) from exc
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def is_url(text: str) -> bool:
    """Whether ``text`` looks like a URL (``scheme://...``): facealign reads local files only."""
    head, sep, _ = text.partition("://")
    return bool(sep) and head[:1].isalpha() and all(c.isalnum() or c in "+.-" for c in head)


def _os_reason(exc: OSError) -> str:
    """Lower-case ``"no such file or directory"``-style text of an operating-system error."""
    return (exc.strerror or f"{type(exc).__name__}: {exc}").lower()


def read_image(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file into an ``H x W x 3`` ``uint8`` RGB array.

    The file is decoded once with Pillow and its EXIF orientation applied, so
    the array is upright as a viewer shows it. Every Pillow mode is converted
    to RGB: grey and 1-bit images are replicated to three channels, palettes
    expanded, CMYK converted, transparency (alpha, palette or ``tRNS``)
    composited onto white, and 16-bit / 32-bit / float samples scaled to
    8 bits by their type's range (16-bit: ``v >> 8``). Of a multi-frame file
    (animated GIF, multi-page TIFF), the first frame is returned.

    Parameters
    ----------
    path : str or os.PathLike
        Image file.
    max_pixels : int, optional
        Largest accepted ``width * height`` before decoding; larger files
        raise :class:`ImageReadError` without allocating the pixels. This
        replaces Pillow's global decompression-bomb limit for this call.

    Returns
    -------
    numpy.ndarray
        C-contiguous ``(H, W, 3)`` ``uint8`` array in RGB order.

    Raises
    ------
    ImageReadError
        If the file is missing, empty, truncated, not an image, or larger than
        ``max_pixels``.
    """
    return _decode(path, max_pixels, None)[0]


#: A longer-side limit that depends on the image: ``max_side(width, height) -> int``.
MaxSide = Callable[[int, int], int]


def read_image_reduced(
    path: str | os.PathLike[str],
    max_side: int | MaxSide,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    decoder_warnings: list[str] | None = None,
    exact: bool = True,
) -> tuple[np.ndarray, float]:
    """Decode an image so that its longer side is at most ``max_side`` pixels.

    JPEG files are decoded directly at a reduced DCT scale (1/2, 1/4 or 1/8,
    Pillow's draft mode), so a huge photograph never exists in memory at full
    resolution; the result is then resampled (area average) to the exact
    uniform scale ``max_side / max(W, H)``. Images already small enough are
    returned unchanged with scale 1.

    Parameters
    ----------
    path : str or os.PathLike
        Image file.
    max_side : int or callable
        Largest side of the returned image, in pixels (positive), or a function
        ``max_side(width, height)`` of the full-resolution size that gives it
        (read from the file header, before decoding).
    max_pixels : int, optional
        Largest accepted number of pixels *decoded* (after the DCT reduction).
    decoder_warnings : list of str, optional
        When given, the warnings of the decoder on an image that still decodes
        (Python warnings and ``PIL`` log messages, e.g. ``"Corrupt EXIF data"``)
        are appended to it instead of being printed.
    exact : bool, optional
        False: return the image as decoded, without resampling it to
        ``max_side``: a JPEG at the smallest DCT scale whose longer side is at
        least ``max_side`` (or full size), any other format at full size; for
        callers that want *at least* that resolution and resample themselves.

    Returns
    -------
    rgb : numpy.ndarray
        ``(h, w, 3)`` ``uint8`` RGB array with ``max(h, w) <= max_side``.
    scale : float
        Uniform factor from the full-resolution (EXIF-oriented) image to the
        returned one, in the pixel-centre convention: a point ``p`` of the full
        image is at ``(p + 0.5) * scale - 0.5`` in ``rgb``, and a point ``q``
        of ``rgb`` is at ``(q + 0.5) / scale - 0.5`` in the full image. At the
        right and bottom edges less than one output pixel may be cut off.

    Raises
    ------
    ImageReadError
        As :func:`read_image`.
    ValueError
        If ``max_side`` is not positive.
    """
    if not callable(max_side) and max_side <= 0:
        raise ValueError(f"max_side must be positive, got {max_side}")
    resolved: list[int] = []
    if callable(max_side):
        side_for = max_side

        def max_side(width: int, height: int) -> int:
            resolved.append(max(1, int(side_for(width, height))))
            return resolved[-1]

    rgb, draft_scale = _decode(path, max_pixels, max_side, decoder_warnings)
    if resolved:
        max_side = resolved[-1]
    height, width = rgb.shape[:2]
    # Full-resolution size (EXIF orientation swaps both sides alike).
    full_w, full_h = width / draft_scale, height / draft_scale
    target = max_side / max(full_w, full_h)
    if target >= 1.0 or (not exact and draft_scale == 1.0):
        return rgb, 1.0
    if not exact:
        return rgb, draft_scale
    out_w = max(1, min(max_side, math.floor(full_w * target + 1e-9)))
    out_h = max(1, min(max_side, math.floor(full_h * target + 1e-9)))
    if (out_w, out_h) == (width, height) and math.isclose(draft_scale, target):
        return rgb, draft_scale
    # Exact uniform scale: the source box is the output size divided by the
    # residual factor, in the (continuous) coordinates of the drafted image.
    residual = target / draft_scale
    box = (0.0, 0.0, min(width, out_w / residual), min(height, out_h / residual))
    resized = Image.fromarray(rgb).resize((out_w, out_h), Image.Resampling.BOX, box=box)
    return np.ascontiguousarray(np.asarray(resized)), target


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


def _is_image_name(name: str) -> bool:
    return (
        not name.startswith(".")
        and not name.endswith(PART_SUFFIX)
        and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
    )


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


# --------------------------------------------------------------------------- #
# Walking a folder of images
# --------------------------------------------------------------------------- #

#: Kinds of directory entries that :func:`scan_folder` leaves out, for its counts.
IGNORED_KINDS: tuple[str, ...] = (
    "unknown extension",
    "hidden",
    "directory symlink",
    "broken symlink",
    "unreadable folder",
    "not a regular file",
)


@dataclass
class FolderScan:
    """What :func:`scan_folder` found under a folder.

    Attributes
    ----------
    images : list of (Path, os.stat_result or None, str or None)
        Every entry named like an image (extension in
        :data:`facealign.constants.IMAGE_EXTENSIONS`, not hidden), sorted by
        path components: its path, its ``stat`` (links followed) when it is a
        readable regular file, else ``None`` and why not (``"broken symbolic
        link"``, ``"not a regular file"``, ``"permission denied"``, ...).
    ignored : collections.Counter
        Entries left out, by kind (:data:`IGNORED_KINDS`): files with another
        extension, hidden entries, symbolic links to folders (not followed),
        links to nothing or to themselves, sub-folders that cannot be listed, and
        special files (FIFOs, sockets, devices) that are not named like images.
    unreadable_folders : list of Path
        Sub-folders that could not be listed (their files are unknown).
    folders : list of Path
        With :func:`walk_images` only: the folder's sub-folders, sorted.
    """

    images: list[tuple[Path, os.stat_result | None, str | None]] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)
    unreadable_folders: list[Path] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)


def _classify(entry: os.DirEntry, by_fd: bool = False) -> tuple[str, os.stat_result | None, str | None]:
    """``("dir" | "image" | "other", stat, problem)`` for one directory entry (``by_fd``: of a
    folder listed through a descriptor, :func:`_scandir_long`)."""
    try:
        if entry.is_dir(follow_symlinks=False):
            return "dir", None, None
        is_link = entry.is_symlink()
        info = entry.stat() if by_fd else os.stat(entry.path)  # follows links
    except OSError as exc:
        problem = "broken symbolic link" if exc.errno in (errno.ENOENT, errno.ELOOP) else _os_reason(exc)
        return ("image" if _is_image_name(entry.name) else "other"), None, problem
    if is_link and stat.S_ISDIR(info.st_mode):
        return "other", info, "directory symlink"
    if not _is_image_name(entry.name):
        return "other", info, None if stat.S_ISREG(info.st_mode) else "not a regular file"
    if not stat.S_ISREG(info.st_mode):
        return "image", None, "not a regular file"
    return "image", info, None


def scan_folder(root: str | os.PathLike[str]) -> FolderScan:
    """Walk a folder for images, never stopped by what is in it.

    Hidden entries (names starting with ``.``) and ``.part`` temporaries of
    :func:`write_image_atomic` are skipped, symbolic links to files are
    followed, symbolic links to folders are not. Unlike :func:`os.walk`, every
    entry left out is counted by kind, an image-named entry that cannot be read
    (a broken link, a FIFO) is listed with the reason, and a sub-folder that
    cannot be listed is counted and named instead of silently skipped.

    Parameters
    ----------
    root : str or os.PathLike
        Folder to walk.

    Returns
    -------
    FolderScan

    Raises
    ------
    FileNotFoundError
        If ``root`` does not exist.
    OSError
        If ``root`` itself cannot be listed.
    """
    scan = FolderScan()

    def gather(folder: Path, part: FolderScan) -> list[tuple[Path, os.stat_result | None, str | None]]:
        scan.ignored.update(part.ignored)
        scan.unreadable_folders.extend(part.unreadable_folders)
        return part.images

    scan.images.extend(walk_images(root, gather))  # the walk's order: sorted by path components
    return scan


def _list_folder(folder: Path) -> tuple[list[tuple[str, Any]], FolderScan]:
    """One folder's entries for :func:`walk_images`: ``("dir", path)`` and ``("image", index)``
    sorted by name, and the folder's own :class:`FolderScan` (its images, sorted; its
    ignored entries). Raises the ``OSError`` of listing it."""
    by_fd = False
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        entries, by_fd = _scandir_long(folder), True
    scan = FolderScan()
    order: list[tuple[str, Any]] = []
    for entry in entries:
        if entry.name.startswith("."):
            scan.ignored["hidden"] += 1
            continue
        kind, info, problem = _classify(entry, by_fd)
        path = folder / entry.name
        if kind == "dir":
            order.append(("dir", path))
            scan.folders.append(path)
        elif kind == "image":
            order.append(("image", len(scan.images)))
            scan.images.append((path, info, problem))
        elif problem == "broken symbolic link":
            scan.ignored["broken symlink"] += 1
        elif problem in ("directory symlink", "not a regular file"):
            scan.ignored[problem] += 1
        else:
            scan.ignored["unknown extension"] += 1
    return order, scan


def _scandir_long(folder: Path) -> list[os.DirEntry]:
    """The entries of a folder whose path is longer than the system allows (``PATH_MAX``),
    reached one component at a time through descriptors; sorted by name. Their ``stat``
    works (relative to the folder's descriptor); their ``path`` is the name only."""
    parts = folder.parts
    fd = os.open(parts[0] if folder.is_absolute() else ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        for name in parts[1:] if folder.is_absolute() else parts:
            child = os.open(name, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0), dir_fd=fd)
            os.close(fd)
            fd = child
        with os.scandir(fd) as listing:
            entries = sorted(listing, key=lambda e: e.name)
            for entry in entries:  # while the descriptor is open
                try:
                    entry.stat()
                except OSError:
                    pass
            return entries
    finally:
        os.close(fd)


def walk_images(root: str | os.PathLike[str], plan: Callable[[Path, FolderScan], Sequence[Any]]) -> Iterator[Any]:
    """Walk a folder for images as :func:`scan_folder` does, one folder at a time, without
    ever holding the whole listing.

    Each folder is listed once, when the walk reaches it; ``plan(folder, scan)``
    is then called with that folder's own :class:`FolderScan` (its image-named
    entries sorted by name, with their ``stat`` or problem, and its ignored
    entries by kind; ``images`` excludes sub-folders) and returns one item per
    image of ``scan.images``. The walk yields those items (leaving out ``None``)
    in the order of :func:`scan_folder` (sorted by path components: a folder's
    images and sub-folders interleaved by name), so ``plan`` runs for a folder
    before any item of that folder is yielded. A sub-folder that cannot be
    listed gives ``plan(folder, scan)`` with ``scan.images`` empty,
    ``scan.unreadable_folders == [folder]`` and ``ignored["unreadable folder"] == 1``.

    Memory: the entries of the folder being walked and of the folders above it
    (their entries not yet walked), not of the whole tree.

    Raises
    ------
    FileNotFoundError
        If ``root`` does not exist.
    OSError
        If ``root`` itself cannot be listed (raised by this call, which lists
        it; ``plan`` runs from the first ``next`` on).
    """
    root = Path(root)
    return _walk(root, _list_folder(root), plan)


def _walk(
    root: Path, listed: tuple[list[tuple[str, Any]], FolderScan], plan: Callable[[Path, FolderScan], Sequence[Any]]
) -> Iterator[Any]:
    """The generator of :func:`walk_images`, given the listing of ``root``."""

    def enter(folder: Path) -> Iterator[tuple[str, Any]] | None:
        try:
            order, scan = _list_folder(folder)
        except OSError:
            unreadable = FolderScan(unreadable_folders=[folder])
            unreadable.ignored["unreadable folder"] += 1
            plan(folder, unreadable)
            return None
        return planned(folder, order, scan)

    def planned(folder: Path, order: list[tuple[str, Any]], scan: FolderScan) -> Iterator[tuple[str, Any]]:
        items = plan(folder, scan)
        if len(items) != len(scan.images):
            raise ValueError(f"plan returned {len(items)} items for {len(scan.images)} images")
        return ((kind, value if kind == "dir" else items[value]) for kind, value in order)

    frames = [planned(root, *listed)]
    del listed
    while frames:
        entry = next(frames[-1], None)
        if entry is None:
            frames.pop()
            continue
        kind, value = entry
        if kind == "dir":
            frame = enter(value)
            if frame is not None:
                frames.append(frame)
        elif value is not None:
            yield value


def count_images(root: str | os.PathLike[str]) -> tuple[int, int]:
    """``(image-named entries, sub-folders that cannot be listed)`` under ``root``, cheaply.

    A walk like :func:`scan_folder`'s that reads names only: no ``stat`` of the
    files (the entry type from the listing; file systems that do not give it
    cost one ``stat`` per entry) and nothing held but the folders still to
    list. The count is an estimate of :func:`scan_folder`'s ``images``: a
    symbolic link to a folder named like an image counts, and the tree may
    change before it is walked again.

    Raises
    ------
    OSError
        If ``root`` itself cannot be listed.
    """
    root = Path(root)
    images = unreadable = 0
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as listing:
                for entry in listing:
                    if entry.name.startswith("."):
                        continue
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        is_dir = False
                    if is_dir:
                        pending.append(Path(entry.path))
                    elif _is_image_name(entry.name):
                        images += 1
        except OSError:
            if folder == root:
                raise
            unreadable += 1
    return images, unreadable


def find_images(root: str | os.PathLike[str]) -> list[Path]:
    """List the image files under a directory, recursively, in sorted order.

    A file counts as an image when its extension, compared case-insensitively,
    is in :data:`facealign.constants.IMAGE_EXTENSIONS`. Hidden files and
    directories (names starting with ``.``) and ``.part`` temporaries of
    :func:`write_image_atomic` are skipped; symbolic links to directories are
    not followed. Image-named entries that cannot be read (broken links) are
    listed too, so that callers report them; :func:`scan_folder` says why.

    Parameters
    ----------
    root : str or os.PathLike
        Directory to search; a single image file is returned as a one-element
        list.

    Returns
    -------
    list of pathlib.Path
        Paths (``root`` joined with the relative path), sorted by their
        components.

    Raises
    ------
    FileNotFoundError
        If ``root`` does not exist.
    """
    root = Path(root)
    if root.is_file():
        return [root] if _is_image_name(root.name) else []
    if not root.is_dir():
        raise FileNotFoundError(f"no such directory: {str(root)!r}")
    return [path for path, _, _ in scan_folder(root).images]
