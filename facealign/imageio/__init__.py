"""Image input and output at the package boundary, one module per job.

Everything inside :mod:`facealign` works on ``H x W x 3`` ``uint8`` **RGB**
arrays (see :mod:`facealign.constants`). This package is the only place where
files are decoded (with Pillow, which understands EXIF orientation, palettes,
CMYK, 16-bit data and multi-frame files) or encoded (with OpenCV, whose BGR
order is converted here).

* :mod:`~facealign.imageio.decoding`: strict decoding. A zero-byte, truncated or
  non-image file raises :class:`ImageReadError` instead of returning a partly grey
  picture; only :data:`DECODED_FORMATS` are decoded, by content. Pillow's
  decompression-bomb guard (a process-wide setting) is replaced by the explicit
  ``max_pixels`` argument of :func:`read_image`.
* :mod:`~facealign.imageio.writing`: encoding and atomic writes.
* :mod:`~facealign.imageio.jsonio`: JSON values, lines and files.
* :mod:`~facealign.imageio.names`: file names that are not valid UTF-8.
* :mod:`~facealign.imageio.walk`: the folder walk and its classification of entries.

The names below are the public interface; import them from here.
"""

from __future__ import annotations

from .decoding import (
    DECODED_FORMATS,
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    decode_image_bytes,
    is_url,
    os_error_reason,
    pil_image_to_rgb,
    read_image,
    read_image_reduced,
)
from .jsonio import json_line, to_jsonable, write_json
from .names import name_from_b64, portable_name, raw_name_b64
from .walk import IGNORED_KINDS, FolderScan, count_images, find_images, list_image_folder, scan_folder, walk_images
from .writing import PART_SUFFIX, atomic_file, encode_image, write_bytes_atomic, write_image_atomic

__all__ = [
    "DECODED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "IGNORED_KINDS",
    "PART_SUFFIX",
    "FolderScan",
    "ImageReadError",
    "atomic_file",
    "count_images",
    "decode_image_bytes",
    "encode_image",
    "find_images",
    "is_url",
    "json_line",
    "list_image_folder",
    "name_from_b64",
    "os_error_reason",
    "pil_image_to_rgb",
    "portable_name",
    "raw_name_b64",
    "read_image",
    "read_image_reduced",
    "scan_folder",
    "to_jsonable",
    "walk_images",
    "write_bytes_atomic",
    "write_image_atomic",
    "write_json",
]
