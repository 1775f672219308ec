"""The public face of facealign: detect, landmark and align in a few calls.

Every method that takes an image takes any of :data:`ImageInput`: an
``H x W x 3`` ``uint8`` RGB array, the path of an image file, the bytes of one,
or a Pillow image (files, bytes and Pillow images are decoded as
:func:`facealign.read_image` decodes a file: EXIF orientation applied, any mode
to RGB). In the examples, ``photo`` is the path of a photo with one face.

>>> from facealign import FaceAligner
>>> aligner = FaceAligner()                      # RetinaFace, TCNN, arcface 112
>>> [aligned] = aligner.crop_faces(photo)        # every face, largest first
>>> aligned.crop.shape                           # the aligned crop, RGB
(112, 112, 3)
>>> aligned.face.box.shape, aligned.face.landmarks.shape
((4,), (5, 2))
>>> faces = aligner.process(photo)               # boxes, scores, 5 points, quality
>>> crop, matrix = aligner.align(photo, faces[0].landmarks)
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import cv2
import numpy as np

from .alignment import Template, get_template
from .constants import DEFAULT_DETECTOR
from .detection import Detections, Detector, check_image, get_detector, options_not_taken
from .engine import DEFAULT_ENGINE, LandmarkEngine
from .inference import resolve_providers
from .pipeline import AlignedFace, Face, ImageFaces, Pipeline

if TYPE_CHECKING:  # for the annotations only
    from PIL import Image

__all__ = ["AlignedFace", "Face", "FaceAligner", "ImageInput", "to_rgb"]

#: What the methods of :class:`FaceAligner` take as an image: an ``H x W x 3``
#: ``uint8`` RGB array, a file path (``str`` or ``os.PathLike``), the bytes of an
#: image file, or a Pillow image.
ImageInput = Union[np.ndarray, str, "os.PathLike[str]", bytes, bytearray, memoryview, "Image.Image"]

#: Images per landmark-network pass in :meth:`FaceAligner.crop_many` by default.
CROP_MANY_BATCH = 32


def to_rgb(image: ImageInput) -> np.ndarray:
    """The ``H x W x 3`` ``uint8`` RGB array of any :data:`ImageInput`.

    An array is returned as it is (checked, not copied); a path, bytes or a
    Pillow image is decoded as :func:`facealign.read_image` decodes a file.

    Raises
    ------
    ValueError
        An array of another shape or type; a URL (facealign reads local files only).
    TypeError
        Anything else.
    facealign.ImageReadError
        A file or bytes that cannot be decoded.

    Examples
    --------
    >>> import numpy as np
    >>> to_rgb(np.zeros((4, 6, 3), np.uint8)).shape
    (4, 6, 3)
    >>> to_rgb(photo).dtype
    dtype('uint8')
    >>> to_rgb("https://example.com/face.jpg")
    Traceback (most recent call last):
    ...
    ValueError: 'https://example.com/face.jpg' is a URL; facealign reads local files only: download it first
    >>> to_rgb(3)
    Traceback (most recent call last):
    ...
    TypeError: expected an image: an H x W x 3 uint8 RGB array, a file path, ... or a PIL image; got int
    """
    from .imageio import decode_image_bytes, is_url, pil_image_to_rgb, read_image

    if isinstance(image, np.ndarray):
        check_image(image)
        return image
    if isinstance(image, str | os.PathLike):
        text = os.fspath(image)
        if isinstance(text, str) and is_url(text):
            raise ValueError(f"{text!r} is a URL; facealign reads local files only: download it first")
        return read_image(text)
    if isinstance(image, bytes | bytearray | memoryview):
        return decode_image_bytes(image)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        Image = None  # type: ignore[assignment]  # noqa: N806
    if Image is not None and isinstance(image, Image.Image):
        return pil_image_to_rgb(image)
    raise TypeError(
        "expected an image: an H x W x 3 uint8 RGB array, a file path, the bytes of an image file "
        f"or a PIL image; got {type(image).__name__}"
    )


def _detector(
    spec: str | Detector | None,
    min_face: float | None,
    det_threshold: float | None,
    providers: str | Sequence[str] | None,
) -> Detector:
    """The detector of ``spec``. One given by name gets ``det_threshold`` as its threshold (and no
    rescue of the best face below it) and ``providers`` when it takes them (the onnxruntime
    detectors); the threshold is applied by :meth:`FaceAligner.detect` in any case."""
    if det_threshold is not None and not math.isfinite(det_threshold):
        raise ValueError(f"det_threshold must be a number, got {det_threshold}")
    if spec is not None and not isinstance(spec, str):
        return get_detector(spec)
    name = spec or DEFAULT_DETECTOR
    # Each group of options goes to the factory whole, or not at all when it does not take it.
    groups: list[dict[str, Any]] = []
    if det_threshold is not None:
        groups.append({"threshold": det_threshold, "rescue_threshold": None})
    if providers is not None:
        groups.append({"providers": providers})
    options = {k: v for group in groups if not options_not_taken(name, group) for k, v in group.items()}
    return get_detector(name, min_face=min_face, **options)


class FaceAligner(Pipeline):
    """Face detection, five-point landmarks and similarity alignment.

    A :class:`facealign.pipeline.Pipeline` built from names: ``detect``,
    ``engine_boxes``, ``process`` and ``align`` are its steps, the ones the crop
    job and ``facealign landmarks`` run. Every method that takes an image takes
    any :data:`ImageInput` (array, path, bytes or Pillow image).

    Parameters
    ----------
    detector : str or Detector
        ``"retinaface"`` (default), another name of
        :data:`facealign.constants.BUILTIN_DETECTORS`, a plug-in name, or any
        object with ``detect(image) -> Detections``.
    engine : {"tcnn", "vanilla"} or LandmarkEngine
        Landmark engine; TCNN by default.
    template : str, path, Template or (5, 2) array
        Alignment target: ``"arcface"`` (default), ``"loose"``, a JSON file, or points.
    size : int or (width, height), optional
        Output crop size; the template is rescaled to it. Defaults to the
        template's own size (112 for ``arcface``).
    min_face : float, optional
        Smallest face the detector looks for, in pixels (a detector given by
        name only; default: the detector's own; for the CNN detectors a 32nd
        of the photo's longer side, 20 to 80 px).
    providers : str or sequence of str, optional
        onnxruntime execution providers, most preferred first, for the networks
        onnxruntime runs (the landmark engine given by name, RetinaFace): short
        names ``cuda``, ``tensorrt``, ``coreml``, ``openvino``, ``directml``,
        ``rocm`` or onnxruntime's (``CUDAExecutionProvider``); the CPU is always
        the fallback. Default: ``FACEALIGN_PROVIDERS`` (comma-separated), else
        the CPU. A provider the installed onnxruntime lacks is skipped with a
        warning (for CUDA: ``pip install onnxruntime-gpu`` in place of
        ``onnxruntime``). See :mod:`facealign.inference`.
    det_threshold : float, optional
        Detector score a face needs, on the detector's own scale (retinaface:
        0 to 1, default 0.9; libfacedetection: 0 to 100, default 70). Faces
        scoring less are dropped, with any detector; a detector given by name
        also looks for faces down to it (lower finds more). By default the
        detector's own rule: its threshold, and when no face reaches it, the
        best face above a lower one (0.5 for retinaface).

    Examples
    --------
    >>> aligner = FaceAligner(template="loose", size=160)
    >>> [aligned] = aligner.crop_faces(photo)
    >>> aligned.crop.shape
    (160, 160, 3)
    """

    engine: LandmarkEngine

    def __init__(
        self,
        detector: str | Detector | None = None,
        engine: str | LandmarkEngine = DEFAULT_ENGINE,
        template: str | Path | Template | np.ndarray = "arcface",
        size: int | tuple[int, int] | None = None,
        min_face: float | None = None,
        det_threshold: float | None = None,
        providers: str | Sequence[str] | None = None,
    ) -> None:
        if providers is not None:
            resolve_providers(providers)  # unknown names fail now
        super().__init__(
            _detector(detector, min_face, det_threshold, providers),
            engine if isinstance(engine, LandmarkEngine) else LandmarkEngine(engine, providers=providers),
            get_template(template, size),
            det_threshold,
        )

    def detect(self, image: ImageInput) -> Detections:
        """Face boxes and scores, largest first (see :meth:`Pipeline.detect`), of any :data:`ImageInput`.

        Examples
        --------
        >>> detections = FaceAligner().detect(photo)
        >>> len(detections), detections.boxes.shape
        (1, (1, 4))
        """
        return super().detect(to_rgb(image))

    def process(self, image: ImageInput, largest_only: bool = False) -> list[Face]:
        """Every face of an image with five landmarks and quality figures, largest first.

        Parameters
        ----------
        image : ImageInput
            Array, path, bytes or Pillow image.
        largest_only : bool
            Only the largest face.

        Returns
        -------
        list of Face
            Boxes, scores, landmarks (MTFL order: image-left eye first) in pixels
            of the image, ``expected_error`` and ``p_fail``.

        Examples
        --------
        >>> [face] = FaceAligner().process(photo)
        >>> face.landmarks.shape, 0.0 <= face.p_fail <= 1.0
        ((5, 2), True)
        """
        return super().process(to_rgb(image), largest_only)

    def align(
        self, image: ImageInput, landmarks: np.ndarray, border_mode: int = cv2.BORDER_CONSTANT
    ) -> tuple[np.ndarray, np.ndarray]:
        """Warp the face with these five points onto the template.

        Returns the crop (``H x W x 3`` uint8 RGB) and the 2 x 3 image-to-crop matrix.
        """
        return super().align(to_rgb(image), landmarks, border_mode)

    def landmarks(self, image: ImageInput, boxes: np.ndarray) -> np.ndarray:
        """Five points (``N x 5 x 2``, pixels) for caller-supplied ``N x 4`` boxes, in one batch."""
        return self.engine.predict(to_rgb(image), boxes)

    def crop_faces(self, image: ImageInput, largest_only: bool = False) -> list[AlignedFace]:
        """Every face of an image, aligned: detection, landmarks and the warp in one call.

        Parameters
        ----------
        image : ImageInput
            Array, path, bytes or Pillow image.
        largest_only : bool
            Only the largest face.

        Returns
        -------
        list of AlignedFace
            Largest face first; each with its ``face`` (box, score, landmarks,
            quality), ``crop`` and ``transform`` (image pixels to crop pixels).
            Empty when no face is found.

        Examples
        --------
        >>> aligner = FaceAligner()
        >>> [aligned] = aligner.crop_faces(photo)
        >>> aligned.crop.shape, aligned.transform.shape
        ((112, 112, 3), (2, 3))
        >>> round(aligned.face.score, 1)
        1.0
        """
        item = self.detect_image(to_rgb(image), largest_only=largest_only)
        self.add_landmarks([item])
        return list(self.align_faces(item))

    def crop_many(
        self, images: Iterable[ImageInput], batch_size: int = CROP_MANY_BATCH, largest_only: bool = False
    ) -> Iterator[list[AlignedFace]]:
        """:meth:`crop_faces` over many images, the landmark network batched across them.

        Images are taken ``batch_size`` at a time: each is decoded and its faces
        detected, then the landmark network runs once on every face of the
        batch, and the batch's crops are made. Yields one list per image, in
        the order of ``images``; the crops are those :meth:`crop_faces` gives.

        Parameters
        ----------
        images : iterable of ImageInput
            Arrays, paths, bytes or Pillow images (a generator is read lazily).
        batch_size : int
            Images per landmark-network pass (default 32).
        largest_only : bool
            Only the largest face of each image.

        Yields
        ------
        list of AlignedFace
            The faces of one image, largest first (see :meth:`crop_faces`).

        Raises
        ------
        ValueError, TypeError, facealign.ImageReadError
            As :func:`to_rgb`, for the first image that is not one; the lists of
            the batches before it have been yielded.

        Examples
        --------
        >>> aligner = FaceAligner()
        >>> for faces in aligner.crop_many([photo, photo], batch_size=2):
        ...     print(len(faces), faces[0].crop.shape)
        1 (112, 112, 3)
        1 (112, 112, 3)
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        batch: list[ImageFaces] = []
        for image in images:
            batch.append(self.detect_image(to_rgb(image), largest_only=largest_only))
            if len(batch) == batch_size:
                yield from self._crop_batch(batch)
                batch = []
        if batch:
            yield from self._crop_batch(batch)

    def _crop_batch(self, batch: list[ImageFaces]) -> Iterator[list[AlignedFace]]:
        self.add_landmarks(batch)
        for item in batch:
            yield list(self.align_faces(item))
