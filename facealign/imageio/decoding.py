"""Decoding image files and bytes into ``H x W x 3`` uint8 RGB arrays, strictly and only in the
formats of :data:`DECODED_FORMATS` (see :mod:`facealign.imageio`)."""

from __future__ import annotations

import io
import logging
import math
import os
import stat
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

#: Default upper bound on the number of pixels of an image to decode
#: (250 megapixels: a 20000 x 12500 photograph, about 750 MB as RGB).
DEFAULT_MAX_PIXELS: int = 250_000_000

#: The Pillow formats decoded, by content whatever the file's extension (the raster
#: formats of :data:`facealign.constants.IMAGE_EXTENSIONS`; JPEG includes the
#: multi-picture MPO of cameras, PPM the PBM/PGM/PNM family). Every other file, such as
#: PostScript (which Pillow hands to Ghostscript), is ``unsupported format X``.
DECODED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "JPEG2000")

# Pillow reads ``Image.MAX_IMAGE_PIXELS`` and ``ImageFile.LOAD_TRUNCATED_IMAGES``
# as module globals, both when a file is opened and while it is decoded (GIF
# frames are checked on load). They are overridden only for the duration of one
# decode, under this lock, so decodes in one process are serialised (parallel
# batch jobs use processes, each with its own lock).
_PILLOW_SETTINGS_LOCK = threading.RLock()


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
        raise ImageReadError(path, os_error_reason(exc), exc.errno) from exc
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
            raise ImageReadError(path, os_error_reason(exc), exc.errno) from exc
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


def os_error_reason(exc: OSError) -> str:
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
