"""The image pipeline: decode -> detect -> engine boxes -> landmarks -> align.

Every path from photos to landmarks and crops runs these steps, and only these:
the crop job (:mod:`facealign.batch`, also on a cluster), ``facealign landmarks``,
:class:`facealign.FaceAligner` (a :class:`Pipeline` built from names) and the
speed benches (``bench/common.py``, through the timing hook).

1. **decode** (:meth:`Pipeline.load_and_detect`): each file is decoded once, at
   the working resolution its detector needs
   (:func:`facealign.detection.working_side`) and its crops need
   (:meth:`Pipeline.crop_side`, pyramid detectors: a JPEG at the smallest DCT
   scale that keeps the smallest face looked for as wide as a face on the
   template), at most ``max_side`` pixels when given
   (:func:`facealign.imageio.read_image_reduced`); the working image is
   ``scale`` times the original (pixel-centre rule, :mod:`facealign.geometry`).
2. **detect**: the detector's boxes and scores, largest first; a pyramid
   detector is told ``scale`` and resizes the working image for itself.
3. **engine boxes** (:meth:`Pipeline.engine_boxes`): the boxes mapped to the
   training detector's convention, which is what the landmark engine expects
   (:func:`facealign.reboxing.training_boxes`).
4. **landmarks** (:meth:`Pipeline.add_landmarks`): one batched network pass for
   every face of a batch of images (:meth:`LandmarkEngine.landmarks`), with
   the per-face quality figures; :func:`iter_image_faces` batches images until
   :data:`BATCH_PIXELS` decoded pixels are held.
5. **warp** (:meth:`Pipeline.align_faces`): every face onto the template with
   the one anti-aliased warp (:func:`facealign.alignment.warp_face`), its
   transform mapped to original-image pixels.

Stages are timed through an optional hook ``timer(stage, seconds)`` (stage
names :data:`STAGES`); without one nothing is timed.
"""

from __future__ import annotations

import collections
import functools
import math
import os
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import cv2
import numpy as np

from .alignment import Template, warp_face
from .detection import Detections, Detector, PyramidDetector, check_image, working_side
from .failures import FailureKind
from .geometry import from_resized, to_resized_matrix
from .imageio import ImageReadError, read_image_reduced
from .landmarks import LandmarkPredictor
from .quality import quality_json
from .reboxing import training_boxes

__all__ = [
    "BATCH_PIXELS",
    "FACE_WIDTH_PER_EYE_DISTANCE",
    "LOOKAHEAD_IMAGES",
    "LOOKAHEAD_PIXELS",
    "STAGES",
    "AlignedFace",
    "Face",
    "ImageFaces",
    "Pipeline",
    "StageTimer",
    "iter_image_faces",
]

#: Decoded pixels held at most before the landmark network runs on their faces (about 36 MB
#: of RGB: one 12 MP photo; a single larger image is processed on its own). The crop job and
#: ``landmarks`` batch per chunk too (``batch_images``), so this binds on large photos only,
#: where the landmark step is a small part of an image's time: at 50 M pixels, ``crop --jobs 1``
#: on 14 camera-size (4,032 px) photos peaked at 594 MB, at 12 M at 474 MB (4% faster).
BATCH_PIXELS: int = 12_000_000

#: Decoded pixels that the detection threads of :func:`iter_image_faces` may hold ahead of the
#: images being landmarked and cropped (about 75 MB of RGB): a thread starts on the next photo
#: only below it, so the threads go on while a batch of faces is landmarked and cropped
#: (``crop --jobs 1`` on 1,000 web photos took 12% longer with two images per thread ahead).
LOOKAHEAD_PIXELS: int = 25_000_000

#: Images at most that :func:`iter_image_faces` reads ahead of the one it yields (with threads):
#: how far ahead of the cropping the caller's paths, a walk of the input folder, are taken.
LOOKAHEAD_IMAGES: int = 128

#: Width of a detector's face box over the face's eye distance (median 2.24 on the
#: RetinaFace boxes of 400 celeba_wild photos): with a template's eye distance,
#: how wide a face is on the crop (80 px on the 112 px ArcFace crop).
FACE_WIDTH_PER_EYE_DISTANCE: float = 2.25

#: Stage names given to a timing hook, in pipeline order.
STAGES: tuple[str, ...] = ("decode", "detect", "landmarks", "warp")

#: A timing hook: called with a stage name of :data:`STAGES` and the seconds it took.
StageTimer = Callable[[str, float], None]


def _lap(timer: StageTimer | None, stage: str, start: float) -> float:
    """Report ``stage`` as ended now (when timed); the current clock."""
    now = time.perf_counter()
    if timer is not None:
        timer(stage, now - start)
    return now


@dataclass(frozen=True)
class Face:
    """One detected face.

    Attributes
    ----------
    box : ndarray (4,) -- ``x1, y1, x2, y2`` in pixels of the source image.
    score : float -- detector confidence.
    landmarks : ndarray (5, 2) -- MTFL-order points, pixels of the source image.
    expected_error : float -- expected landmark error, % of the inter-ocular
        distance (:mod:`facealign.quality`); NaN when unknown.
    p_fail : float -- probability that the error exceeds 10%; NaN when unknown.
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray
    expected_error: float = float("nan")
    p_fail: float = float("nan")

    def to_json(self) -> dict:
        return {
            "box": [round(float(v), 2) for v in self.box],
            "score": round(float(self.score), 4),
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
            **quality_json(self.expected_error, self.p_fail),
        }


@dataclass
class ImageFaces:
    """Faces of one image at its working resolution (see :func:`iter_image_faces`).

    ``boxes`` (N x 4), ``scores`` (N,) and ``landmarks`` (N x 5 x 2) are in pixels
    of ``image``, the working image, which is ``scale`` times the original
    (pixel-centre rule). ``error`` is set, and ``image`` is None, when the image
    could not be read or analysed, with ``kind``, the :class:`~facealign.failures.FailureKind`
    of the message; ``errno`` is then the operating-system error
    number when the *file* could not be read (see :class:`ImageReadError`).
    ``warnings`` lists the decoder's warnings on an image that still decoded.
    """

    path: Path
    image: np.ndarray | None = None
    scale: float = 1.0
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,)))
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((0, 5, 2)))
    error: str | None = None
    #: The boxes the landmark engine is given (:meth:`Pipeline.engine_boxes`).
    engine_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    errno: int | None = None
    warnings: list[str] = field(default_factory=list)
    #: Per-face quality arrays (:meth:`LandmarkEngine.predict_faces`); empty before landmarking.
    quality: dict[str, np.ndarray] = field(default_factory=dict)
    #: The kind of ``error`` (None when there is none).
    kind: FailureKind | None = None

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """Map ``(..., 2)`` working-image points (or box corners) to original pixels.

        An image decoded at full size (``scale`` 1) keeps its points exactly.
        """
        if self.scale == 1.0:
            return np.array(points, np.float64)
        return from_resized(points, self.scale)

    def faces(self) -> list[Face]:
        """The faces with boxes and landmarks in original-image pixels."""
        boxes = self.to_original(self.boxes.reshape(-1, 2, 2)).reshape(-1, 4)
        points = self.to_original(self.landmarks)
        unknown = np.full(len(boxes), np.nan)
        errors, p_fail = self.quality.get("expected_error", unknown), self.quality.get("p_fail", unknown)
        return [
            Face(b, float(s), p, float(e), float(f))
            for b, s, p, e, f in zip(boxes, self.scores, points, errors, p_fail)
        ]

    def drop_faces(self, drop: np.ndarray) -> None:
        """Remove the faces where the boolean mask ``drop`` is True."""
        keep = ~np.asarray(drop, bool)
        self.boxes, self.scores, self.landmarks = self.boxes[keep], self.scores[keep], self.landmarks[keep]
        self.engine_boxes = self.engine_boxes[keep]
        self.quality = {name: values[keep] for name, values in self.quality.items()}


#: The ``path`` of an :class:`ImageFaces` made from an image in memory (:meth:`Pipeline.process`).
_IN_MEMORY = Path("<image>")


@dataclass(frozen=True)
class AlignedFace:
    """A face and its aligned crop (:meth:`Pipeline.align_faces`,
    :meth:`facealign.FaceAligner.crop_faces`).

    Attributes
    ----------
    face : Face
        Box, score, five landmarks and quality figures, in original-image pixels.
    crop : ndarray (H, W, 3) uint8
        The face warped onto the template (RGB).
    transform : ndarray (2, 3)
        The similarity transform from original-image pixels to crop pixels.
    matrix : ndarray (2, 3)
        The same map from working-image pixels (equal to ``transform`` for an
        image decoded at full size).
    """

    face: Face
    crop: np.ndarray
    transform: np.ndarray
    matrix: np.ndarray


def _failed(path: Path, kind: FailureKind, detail: str, errno: int | None = None) -> ImageFaces:
    """The :class:`ImageFaces` of an image that failed: its message and kind."""
    return ImageFaces(path, error=kind.reason(detail), kind=kind, errno=errno)


class Pipeline:
    """A detector, a landmark engine and a template, and the steps that use them.

    Parameters
    ----------
    detector : Detector
        Any object with ``detect(image) -> Detections`` (and optionally
        ``name``, ``work_scale``).
    engine : LandmarkPredictor
        Anything with ``landmarks(images, boxes) -> list[Landmarks]``
        (:class:`facealign.landmarks.LandmarkPredictor`; e.g.
        :class:`facealign.engine.LandmarkEngine`).
    template : Template
        Where the five points go in an aligned crop.
    """

    engine: LandmarkPredictor

    def __init__(
        self, detector: Detector, engine: LandmarkPredictor, template: Template, det_threshold: float | None = None
    ) -> None:
        self.detector = detector
        self.engine = engine
        self.template = template
        #: Faces the detector scores below this are dropped, whatever the detector (None: keep all).
        self.det_threshold = det_threshold

    # -- detect ------------------------------------------------------------- #

    def detect(self, image: np.ndarray) -> Detections:
        """Face boxes and scores in an RGB image, largest first.

        Raises ``ValueError`` for anything but a non-empty ``H x W x 3`` uint8 array.
        """
        check_image(image)
        return self._thresholded(self.detector.detect(image))

    def _thresholded(self, detections: Detections) -> Detections:
        """``detections`` without the faces scoring below :attr:`det_threshold`."""
        if self.det_threshold is None:
            return detections
        return detections.take(detections.scores >= np.float32(self.det_threshold))

    def _detect_decoded(self, image: np.ndarray, scale: float) -> Detections:
        """:meth:`detect` on a photo decoded at ``scale``, which a
        :class:`~facealign.detection.PyramidDetector` is told (its ``min_face`` is
        in pixels of the photo)."""
        if scale != 1.0 and isinstance(self.detector, PyramidDetector):
            check_image(image)
            return self._thresholded(self.detector.detect(image, scale))
        return self.detect(image)

    def crop_side(self, width: int, height: int) -> int:
        """Longer side, in pixels, to decode a ``width x height`` photo at so that its
        crops are cut from enough resolution.

        The smallest face a pyramid detector looks for in it
        (:meth:`~facealign.detection.PyramidDetector.min_face_for`) must be at
        least as wide as a face on the template (:data:`FACE_WIDTH_PER_EYE_DISTANCE`
        times the template's eye distance): no face is then enlarged by the warp
        from a reduced image when the photo had the pixels. Full size for other
        detectors.
        """
        side = max(width, height)
        min_face_for = getattr(self.detector, "min_face_for", None)
        if min_face_for is None:
            return side
        points = self.template.points
        face = FACE_WIDTH_PER_EYE_DISTANCE * float(np.hypot(*(points[1] - points[0])))
        return max(1, min(side, math.ceil(side * face / float(min_face_for(height, width)))))

    def engine_boxes(self, detections: Detections) -> np.ndarray:
        """The boxes the landmark engine is given for these detections (``N x 4``).

        The detector's boxes mapped to the training detector's convention, with
        its own five points where it gives them
        (:func:`facealign.reboxing.training_boxes`); unchanged for the training
        detector (dlib) and for plug-ins, which re-boxing absorbs.
        """
        return training_boxes(getattr(self.detector, "name", ""), detections.boxes, detections.landmarks)

    def detect_image(
        self,
        image: np.ndarray,
        *,
        path: Path = _IN_MEMORY,
        scale: float = 1.0,
        largest_only: bool = False,
        warnings: Sequence[str] = (),
    ) -> ImageFaces:
        """Detect the faces of a decoded image (no landmarks yet); raises what the detector raises."""
        return self._image_faces(path, image, scale, self.detect(image), largest_only, warnings)

    def _image_faces(
        self,
        path: Path,
        image: np.ndarray,
        scale: float,
        det: Detections,
        largest_only: bool,
        warnings: Sequence[str],
    ) -> ImageFaces:
        det = det.take(slice(0, 1 if largest_only else len(det)))
        return ImageFaces(
            path,
            image,
            scale,
            det.boxes.astype(np.float64),
            det.scores.astype(np.float64),
            engine_boxes=self.engine_boxes(det),
            warnings=list(dict.fromkeys(warnings)),
        )

    def load_and_detect(
        self,
        path: str | os.PathLike[str],
        *,
        largest_only: bool = False,
        max_side: int | None = None,
        timer: StageTimer | None = None,
    ) -> ImageFaces:
        """Decode one file at its working resolution and detect its faces.

        Unreadable files and images, and detector errors, are reported in
        ``error`` (see :class:`ImageFaces`), never raised.
        """
        path = Path(path)
        pyramid = isinstance(self.detector, PyramidDetector)

        def side_for(width: int, height: int) -> int:
            side = working_side(self.detector, width, height)
            if pyramid:
                side = max(side, self.crop_side(width, height))
            return side if max_side is None else min(side, max_side)

        decoder_warnings: list[str] = []
        start = time.perf_counter()
        try:
            # A pyramid detector resizes for itself (told the decoded scale); the
            # decoder only has to keep the resolution the crops need.
            exact = not pyramid or max_side is not None
            image, scale = read_image_reduced(path, side_for, decoder_warnings=decoder_warnings, exact=exact)
        except ImageReadError as exc:
            if exc.errno is not None:  # the file system, not the contents (see batch.RETRIED_REASONS)
                return _failed(path, FailureKind.UNREADABLE_FILE, exc.reason, errno=exc.errno)
            return _failed(path, FailureKind.UNREADABLE_IMAGE, exc.reason)
        except MemoryError:
            return _failed(path, FailureKind.OUT_OF_MEMORY, "while decoding")
        finally:
            start = _lap(timer, "decode", start)
        try:
            det = self._detect_decoded(image, scale)
        except Exception as exc:  # a detector failing on one odd image must not stop a batch
            return _failed(path, FailureKind.FAILED, f"detection raised {type(exc).__name__}: {exc}")
        finally:
            _lap(timer, "detect", start)
        return self._image_faces(path, image, scale, det, largest_only, decoder_warnings)

    # -- landmarks ------------------------------------------------------------ #

    def add_landmarks(self, items: Sequence[ImageFaces], timer: StageTimer | None = None) -> None:
        """Landmarks and quality figures of every face of ``items``, in one network pass."""
        ok = [item for item in items if item.error is None and len(item.boxes)]
        if not ok:
            return
        start = time.perf_counter()
        images = cast("list[np.ndarray]", [item.image for item in ok])  # decoded: no error
        results = self.engine.landmarks(images, [item.engine_boxes for item in ok])
        for item, result in zip(ok, results):
            item.landmarks = np.asarray(result.points, np.float64)
            item.quality = result.quality
        _lap(timer, "landmarks", start)

    def iter_image_faces(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        largest_only: bool = False,
        max_side: int | None = None,
        batch_pixels: int = BATCH_PIXELS,
        timer: StageTimer | None = None,
        threads: int = 1,
        batch_images: int | None = None,
    ) -> Generator[ImageFaces, None, None]:
        """:func:`iter_image_faces` with this pipeline."""
        load = functools.partial(self.load_and_detect, largest_only=largest_only, max_side=max_side, timer=timer)
        if not getattr(self.detector, "thread_safe", False):
            threads = 1
        pending: list[ImageFaces] = []
        held = 0
        for seen, item in enumerate(_in_order(load, paths, threads), 1):
            pending.append(item)
            held += _pixels(item)
            if held >= batch_pixels or (batch_images is not None and seen % batch_images == 0):
                self.add_landmarks(pending, timer)
                yield from pending
                pending.clear()
                held = 0
        self.add_landmarks(pending, timer)
        yield from pending

    def process(self, image: np.ndarray, largest_only: bool = False) -> list[Face]:
        """Detect every face of a decoded image and put five landmarks on each, with their quality figures."""
        item = self.detect_image(image, largest_only=largest_only)
        self.add_landmarks([item])
        return item.faces()

    # -- align ---------------------------------------------------------------- #

    def align(
        self, image: np.ndarray, landmarks: np.ndarray, border_mode: int = cv2.BORDER_CONSTANT
    ) -> tuple[np.ndarray, np.ndarray]:
        """Warp the face with these five points onto the template.

        Returns the crop (``H x W x 3`` uint8 RGB) and the 2 x 3 image-to-crop matrix.
        """
        check_image(image)
        return warp_face(image, landmarks, self.template, border_mode)

    def align_faces(self, item: ImageFaces, timer: StageTimer | None = None) -> Iterator[AlignedFace]:
        """Every face of a landmarked image warped onto the template, in face order.

        A generator: each crop is made when it is asked for (and timed as ``warp``).
        """
        if item.image is None:
            return
        to_work = to_resized_matrix(item.scale)
        for face, points in zip(item.faces(), item.landmarks):
            start = time.perf_counter()
            crop, matrix = warp_face(item.image, points, self.template)
            _lap(timer, "warp", start)
            yield AlignedFace(face, crop, matrix @ to_work, matrix)


def _pixels(item: ImageFaces) -> int:
    """Decoded pixels ``item`` holds."""
    return 0 if item.image is None else int(item.image.shape[0] * item.image.shape[1])


def _in_order(
    load: Callable[[str | os.PathLike[str]], ImageFaces],
    paths: Iterable[str | os.PathLike[str]],
    threads: int,
) -> Iterator[ImageFaces]:
    """``load`` of each path, in order.

    With ``threads`` > 1, that many paths load at a time in threads, up to
    :data:`LOOKAHEAD_IMAGES` paths past the one yielded (``paths`` is read no
    further ahead). A thread starts on a path only while the results loaded and
    not yet yielded hold fewer than :data:`LOOKAHEAD_PIXELS` decoded pixels, or
    when its path is the next to be yielded: they hold at most that many pixels
    plus ``threads`` images, whatever the sizes that come.
    """
    if threads <= 1:
        yield from map(load, paths)
        return
    import threading
    from concurrent.futures import Future, ThreadPoolExecutor

    budget, ahead = LOOKAHEAD_PIXELS, max(2 * threads, LOOKAHEAD_IMAGES)
    ready = threading.Condition()
    held = 0  # pixels of the results loaded and not yet yielded
    head = 0  # index of the next path to yield
    closed = False

    def gated(index: int, path: str | os.PathLike[str]) -> ImageFaces | None:
        nonlocal held
        with ready:
            ready.wait_for(lambda: closed or held < budget or index == head)
            if closed:
                return None
        item = load(path)
        with ready:
            held += _pixels(item)
        return item

    with ThreadPoolExecutor(threads, thread_name_prefix="facealign-detect") as pool:
        window: collections.deque[Future[ImageFaces | None]] = collections.deque()

        def next_item() -> ImageFaces:
            nonlocal held, head
            item = cast("ImageFaces", window.popleft().result())  # None only once closed
            with ready:
                held -= _pixels(item)
                head += 1
                ready.notify_all()
            return item

        try:
            for index, path in enumerate(paths):
                window.append(pool.submit(gated, index, path))
                if len(window) > ahead:
                    yield next_item()
            while window:
                yield next_item()
        finally:  # stopped early: what has not started never will, what waits gives up
            with ready:
                closed = True
                ready.notify_all()
            for future in window:
                future.cancel()


def iter_image_faces(
    pipeline: Pipeline,
    paths: Iterable[str | os.PathLike[str]],
    *,
    largest_only: bool = False,
    max_side: int | None = None,
    batch_pixels: int = BATCH_PIXELS,
    timer: StageTimer | None = None,
    threads: int = 1,
    batch_images: int | None = None,
) -> Generator[ImageFaces, None, None]:
    """Decode, detect and landmark images, yielding one :class:`ImageFaces` each, in order.

    Each image is decoded once, at the working resolution its detector and its
    crops need (see the module docstring: a 12 MP JPEG at full resolution for
    the CNN detectors at the default ``min_face``, at 1/2 or less when
    ``min_face`` is twice a face on the template or more; at most 4,096 pixels
    for dlib and Haar), and at most ``max_side`` pixels (longer side) when given. Images
    are detected one by one and accumulated until ``batch_pixels`` decoded
    pixels are held, and after every ``batch_images`` images when given (counted
    from the first); then the landmark network runs once on every face of the
    batch (:meth:`Pipeline.add_landmarks`);
    ``paths`` may be any iterable, read as the images are reached. Unreadable
    images and detector errors are reported in ``error``, never raised. ``timer`` receives the
    seconds of each stage (:data:`STAGES`; summed over threads).

    With ``threads`` > 1 and a detector that may run from several threads at
    once (its ``thread_safe`` attribute is true, as RetinaFace's), that many
    images are decoded and detected at a time, in threads, while the caller
    works on the ones yielded, up to :data:`LOOKAHEAD_IMAGES` images and
    :data:`LOOKAHEAD_PIXELS` decoded pixels ahead of them; the results are the
    same, in the same order.
    """
    return pipeline.iter_image_faces(
        paths,
        largest_only=largest_only,
        max_side=max_side,
        batch_pixels=batch_pixels,
        timer=timer,
        threads=threads,
        batch_images=batch_images,
    )
