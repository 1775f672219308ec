"""Conventions shared by every module of facealign, named once.

Coordinate conventions
----------------------
* Images are ``H x W x 3`` ``uint8`` arrays in **RGB** channel order (never BGR;
  OpenCV's BGR is converted at the I/O boundary in :mod:`facealign.imageio`).
* Points are ``(x, y)`` pairs, **x before y**, in pixels.
* Pixel centres sit at integer coordinates: the centre of the top-left pixel is
  ``(0, 0)`` and the image spans ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``. This is
  the convention of OpenCV's ``warpAffine`` and of the MTFL annotations.
* Boxes are ``(x1, y1, x2, y2)`` in the same pixel frame, ``x2 > x1``, ``y2 > y1``;
  the box covers the continuous region between the corners (so its width is
  ``x2 - x1``).
* "Left" and "right" are the **image's** left and right (the subject's right eye
  is the image-left eye), as in MTFL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import numpy as np

#: Number of landmarks predicted by the engines.
NUM_POINTS: Final[int] = 5

#: Point order used everywhere (MTFL order). Image-left first.
POINT_NAMES: Final[tuple[str, ...]] = (
    "left_eye",
    "right_eye",
    "nose",
    "left_mouth",
    "right_mouth",
)

#: Index permutation that maps the points of a horizontally mirrored face back to
#: MTFL order: after flipping, the image-left eye becomes the image-right eye.
MIRROR_PERMUTATION: Final[tuple[int, ...]] = (1, 0, 2, 4, 3)

#: Indices of the two eye centres, used for the inter-ocular normalisation.
LEFT_EYE: Final[int] = 0
RIGHT_EYE: Final[int] = 1
#: Index of the nose tip.
NOSE: Final[int] = 2

#: Landmark engines shipped with weights (:class:`facealign.engine.LandmarkEngine`); the first is the default.
ENGINES: Final[tuple[str, ...]] = ("tcnn", "vanilla")
DEFAULT_ENGINE: Final[str] = ENGINES[0]
#: Every kind of network :class:`facealign.engine.LandmarkEngine` runs: the shipped
#: engines and ``compact`` (engine v3, :mod:`facealign.research.compact`), which ships
#: no weights yet (it has not beaten ``tcnn`` on validation: docs/hard/engine-v3.md)
#: and runs from a weights file that ``facealign train-compact`` writes.
ENGINE_KINDS: Final[tuple[str, ...]] = (*ENGINES, "compact")

#: Folder of the shipped weights (``<engine>.pt``, ``<engine>.npz``, ``box_maps.json``).
WEIGHTS_DIR: Final[Path] = Path(__file__).resolve().parent / "weights"


def shipped_weights(engine: str) -> Path:
    """Path of the training weights shipped for ``engine`` (``<engine>.pt``, a torch file).

    Training, tweaking and the research commands read and write this file; the
    run-time engine reads :func:`shipped_runtime_weights`, compiled from it. The
    file is in the source tree only (the wheel leaves the training weights out):
    the research commands run from a checkout installed with ``pip install -e``.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {list(ENGINES)}")
    return WEIGHTS_DIR / f"{engine}.pt"


def shipped_runtime_weights(engine: str) -> Path:
    """Path of the run-time weights shipped for ``engine`` (``<engine>.npz``: numpy arrays and
    the convolutional layers as ONNX; :mod:`facealign.research.export` compiles it from
    :func:`shipped_weights`, and a test checks that the two agree)."""
    return shipped_weights(engine).with_suffix(".npz")


#: Normalised error (fraction of the inter-ocular distance) above which a face counts as a
#: failure: what the run time's ``p_fail`` (:mod:`facealign.quality`) is the probability of,
#: and what evaluation counts.
FAILURE_THRESHOLD: Final[float] = 0.10

#: ``p_fail`` (the probability that a face's landmark error exceeds 10% of the
#: inter-ocular distance, :mod:`facealign.quality`) above which a crop is poor:
#: counted in ``facealign crop``'s summary, framed red by ``facealign draw`` and
#: ``facealign sheet``, left out by ``--max-p-fail 0.5``.
P_FAIL_POOR: Final[float] = 0.5

#: Side of the square RGB network input, in pixels (paper, section 2.1).
INPUT_SIZE: Final[int] = 40

#: Names of the detector back-ends built into :mod:`facealign.detection`; the
#: first is the default (chosen by the figures in README, "Face detection").
BUILTIN_DETECTORS: Final[tuple[str, ...]] = ("retinaface", "libfacedetection", "dlib", "dlib-fast", "haar")

#: The detector used when none is named.
DEFAULT_DETECTOR: Final[str] = BUILTIN_DETECTORS[0]

#: The detector whose boxes the landmark engines were trained on; other
#: detectors' boxes are mapped to its convention (:class:`facealign.reboxing.DetectorBoxMap`).
TRAINING_DETECTOR: Final[str] = "dlib"

#: Longer side, in pixels, of the working image a photo is decoded to for the
#: detectors that search a reduced image anyway (dlib, Haar: at most 1,280 px);
#: crops keep the detail of this resolution.
WORK_MAX_SIDE: Final[int] = 4096

#: Image file extensions that the batch tools pick up (lower case, with dot).
IMAGE_EXTENSIONS: Final[frozenset[str]] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".jp2"}
)

#: ArcFace-family 5-point template for a 112 x 112 crop (insightface
#: ``arcface_dst``), in MTFL order and pixel-centre coordinates.
ARCFACE_TEMPLATE_112: Final[np.ndarray] = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
ARCFACE_TEMPLATE_SIZE: Final[int] = 112
