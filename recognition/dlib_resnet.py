"""dlib's ResNet face descriptor as a :class:`~recognition.backbone.Backbone`, fed by our alignment.

dlib's ``dlib_face_recognition_resnet_model_v1.dat`` (shipped by the
``face-recognition-models`` package, run with ``dlib.face_recognition_model_v1``)
embeds 150 x 150 RGB chips cut the way ``dlib.get_face_chip(size=150,
padding=0.25)`` cuts them from dlib's 5-point landmarks. To feed it crops made
by *any* 5-point aligner, this module holds that chip layout as a facealign
:class:`~facealign.alignment.Template` (:func:`dlib_chip_template`), measured
rather than guessed:

1. :func:`face_chip_matrix` measures the image-to-chip map of one face from
   ``dlib.get_face_chip`` itself: the chip is cut from two float images whose
   pixel values are their own x and y coordinates, so the chip's pixels hold
   the image coordinates they were sampled at; a least-squares affine fit of
   those gives the map (our warp with it gives dlib's chip to 0.5 grey levels
   on average, the 8-bit rounding).
2. :func:`fit_chip_template` maps, face by face, where the five MTFL points
   (ground truth) and dlib's own five points land in the chip, and takes the
   least-squares fixed layout: the mean position of every point.

:data:`DLIB_CHIP_POINTS` (MTFL points) and :data:`DLIB_CHIP_DLIB5_POINTS`
(dlib's points) hold the result of ``python bench/dlib_chip_template.py``
(see that script for the data and the residuals). The dlib-5pt aligner maps
dlib's points onto any template through :func:`dlib5_template`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facealign.alignment import Template, estimate_similarity, get_template, transform_points
from facealign.research.peers import box_to_dlib_rect, dlib_model_path

__all__ = [
    "DLIB_CHIP_SIZE",
    "DLIB_CHIP_PADDING",
    "DLIB_CHIP_POINTS",
    "DLIB_CHIP_DLIB5_POINTS",
    "RECOGNITION_INSTALL_HINT",
    "dlib_chip_template",
    "dlib5_template",
    "DETECTOR_CHIP_POINTS",
    "detector_template",
    "dlib_resnet_model_path",
    "face_chip_matrix",
    "ChipTemplateFit",
    "fit_chip_template",
    "mean_chip_points",
    "DlibFivePointPredictor",
    "DlibResNetBackbone",
]

#: Side of the chips the descriptor was trained on.
DLIB_CHIP_SIZE = 150
#: ``padding`` of ``dlib.get_face_chip`` for the descriptor (its default).
DLIB_CHIP_PADDING = 0.25

#: Where the five MTFL-order points (image-left eye, image-right eye, nose tip,
#: image-left and image-right mouth corners) land in a 150 x 150 dlib chip, in
#: pixel-centre coordinates: mean over the MTFL training faces found by the dlib
#: detector, ground-truth points mapped by the chip transform that
#: ``dlib.get_face_chip(size=150, padding=0.25)`` applies for dlib's 5-point
#: landmarks of the same face. 9,946 faces; rms spread about the mean 4.0, 4.1,
#: 9.6, 8.8 and 8.9 chip pixels (eyes, nose, mouth corners: faces differ in shape
#: and expression, the template is their least-squares layout). Reproduce with
#: ``python bench/dlib_chip_template.py`` (docs/recognition/dlib_chip_template.json).
DLIB_CHIP_POINTS: np.ndarray = np.array(
    [[47.4853, 45.0574], [101.8321, 44.9192], [74.1239, 78.1724], [51.0847, 104.1963], [98.2358, 104.2200]]
)
DLIB_CHIP_POINTS.flags.writeable = False

#: Where dlib's own five points (``shape_predictor_5_face_landmarks.dat`` order:
#: two corners of one eye, two of the other, bottom of the nose) land in the same
#: chips (mean; rms spread 3.3, 2.1, 3.4, 2.1 and 5.4 px: what dlib's own
#: similarity fit of these points to its chip leaves, face by face).
DLIB_CHIP_DLIB5_POINTS: np.ndarray = np.array(
    [[110.9136, 45.6071], [89.6475, 46.5145], [36.0981, 45.7250], [57.4088, 46.5795], [73.3861, 87.6676]]
)
DLIB_CHIP_DLIB5_POINTS.flags.writeable = False

#: Where a detector's own five points (MTFL order) lie in the same 150 px dlib
#: chips, by detector: the least-squares layout (mean position) over the MTFL
#: training faces that the dlib detector and that detector both find, measured
#: in the chips of :data:`DLIB_CHIP_POINTS` (``python bench/detector_chip_template.py``,
#: docs/recognition/retinaface_chip_template.json). RetinaFace: the first 3,000
#: MTFL training faces, 2,984 found by both; rms spread about the mean 4.7, 4.8,
#: 7.4, 6.9 and 6.9 chip pixels; its eye points lie 1.5 to 3 px inside and above
#: the ground-truth eye centres.
DETECTOR_CHIP_POINTS: dict[str, np.ndarray] = {
    "retinaface": np.array(
        [[44.2613, 44.1154], [101.3276, 43.8307], [72.2521, 74.7298], [49.5827, 102.4108], [96.4728, 102.1624]]
    ),
}
for _layout in DETECTOR_CHIP_POINTS.values():
    _layout.flags.writeable = False

#: How to install what the dlib backbone needs (dlib itself is a dependency).
RECOGNITION_INSTALL_HINT = "pip install -e '.[recognition]'"


def dlib_chip_template(size: int | None = None) -> Template:
    """dlib's chip layout for the five MTFL points, as a template (``dlib-chip``, 150 px by default)."""
    template = Template("dlib-chip", DLIB_CHIP_POINTS, (DLIB_CHIP_SIZE, DLIB_CHIP_SIZE))
    return get_template(template, size)


def dlib5_template(template: Template) -> Template:
    """Where dlib's own five points go in ``template``.

    The chip's dlib-point layout (:data:`DLIB_CHIP_DLIB5_POINTS`) is carried
    into ``template`` by the similarity that maps the chip's MTFL layout
    (:data:`DLIB_CHIP_POINTS`) onto ``template.points``; for
    :func:`dlib_chip_template` itself this is the identity. Aligning dlib's
    points onto the result puts the face where aligning MTFL points onto
    ``template`` would.
    """
    return _carry_chip_points(DLIB_CHIP_DLIB5_POINTS, template, "dlib5")


def detector_template(chip_points: np.ndarray, template: Template, detector: str) -> Template:
    """Where a detector's own five points go in ``template``, from their layout in dlib's chip.

    As :func:`dlib5_template`: ``chip_points``
    (:data:`DETECTOR_CHIP_POINTS`) are carried into ``template`` by the
    similarity that maps :data:`DLIB_CHIP_POINTS` onto ``template.points``.
    """
    return _carry_chip_points(np.asarray(chip_points, np.float64), template, detector)


def _carry_chip_points(chip_points: np.ndarray, template: Template, suffix: str) -> Template:
    matrix = estimate_similarity(DLIB_CHIP_POINTS, template.points)
    return Template(f"{template.name}-{suffix}", transform_points(matrix, chip_points), template.size)


def _import_dlib():
    try:
        import dlib
    except ImportError as exc:  # pragma: no cover - dlib-bin is a dependency
        raise ImportError(f"the dlib backbone needs dlib (dlib-bin); install with {RECOGNITION_INSTALL_HINT}") from exc
    return dlib


def dlib_resnet_model_path() -> Path:
    """``dlib_face_recognition_resnet_model_v1.dat`` of the ``face-recognition-models`` package.

    Raises
    ------
    ImportError
        If the package is not installed, with the install command.
    """
    shape5 = dlib_model_path(5)  # same folder; raises ImportError with a hint when absent
    path = shape5.parent / "dlib_face_recognition_resnet_model_v1.dat"
    if not path.is_file():
        raise ImportError(f"no dlib face descriptor model at {path}; install with {RECOGNITION_INSTALL_HINT}")
    return path


# --------------------------------------------------------------------------- chip geometry


def face_chip_matrix(
    image_shape: Sequence[int], detection, size: int = DLIB_CHIP_SIZE, padding: float = DLIB_CHIP_PADDING
) -> np.ndarray:
    """The 2 x 3 image-to-chip map that ``dlib.get_face_chip`` applies to one face, measured.

    ``get_face_chip`` is run on two float64 images, as large as the image plus
    a margin of its larger side on every side, whose pixels hold their own x
    (resp. y) coordinate in the original image frame; the chip then holds, at
    every pixel, the image coordinates it was sampled from (interpolation is
    exact on a linear ramp away from the border). The affine least-squares fit
    of chip pixel -> image point, inverted, is the map.

    Parameters
    ----------
    image_shape : sequence of int
        ``(height, width, ...)`` of the image the detection refers to.
    detection : dlib.full_object_detection
        dlib's landmarks of the face (any part count ``get_face_chip`` accepts).
    size, padding : int, float
        ``get_face_chip`` arguments.

    Returns
    -------
    numpy.ndarray
        ``(2, 3)`` float64 matrix, image pixels (centre convention) to chip pixels.

    Raises
    ------
    ValueError
        If too few chip pixels fall inside the coordinate images to fit the map.
    """
    dlib = _import_dlib()
    height, width = int(image_shape[0]), int(image_shape[1])
    margin = max(height, width)
    rect = detection.rect
    shifted = dlib.full_object_detection(
        dlib.rectangle(rect.left() + margin, rect.top() + margin, rect.right() + margin, rect.bottom() + margin),
        [dlib.point(p.x + margin, p.y + margin) for p in detection.parts()],
    )
    rows, cols = height + 2 * margin, width + 2 * margin
    xs = np.broadcast_to(np.arange(cols, dtype=np.float64) - margin, (rows, cols)).copy()
    ys = np.broadcast_to(np.arange(rows, dtype=np.float64)[:, None] - margin, (rows, cols)).copy()
    chip_x = np.asarray(dlib.get_face_chip(xs, shifted, size, padding))
    chip_y = np.asarray(dlib.get_face_chip(ys, shifted, size, padding))
    v, u = np.mgrid[0:size, 0:size]
    inside = (
        (chip_x > -margin + 2) & (chip_x < width + margin - 3) & (chip_y > -margin + 2) & (chip_y < height + margin - 3)
    )
    if inside.sum() < 3 * size:
        raise ValueError("the chip lies outside the coordinate images; cannot measure its map")
    design = np.stack([u[inside], v[inside], np.ones(int(inside.sum()))], 1).astype(np.float64)
    targets = np.stack([chip_x[inside], chip_y[inside]], 1)
    chip_to_image, *_ = np.linalg.lstsq(design, targets, rcond=None)
    forward = np.vstack([chip_to_image.T, [0.0, 0.0, 1.0]])
    return np.linalg.inv(forward)[:2]


def mean_chip_points(matrices: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares fixed layout of points mapped into chips: their mean, and the rms spread.

    Parameters
    ----------
    matrices : numpy.ndarray
        ``(N, 2, 3)`` image-to-chip maps, one per face.
    points : numpy.ndarray
        ``(N, K, 2)`` points of every face in its image.

    Returns
    -------
    layout : numpy.ndarray
        ``(K, 2)`` mean position in the chip: the layout minimising the summed
        squared distance to where the points land.
    rms : numpy.ndarray
        ``(K,)`` root-mean-square distance of every point to its mean position, chip pixels.
    """
    matrices = np.asarray(matrices, np.float64)
    points = np.asarray(points, np.float64)
    if matrices.ndim != 3 or matrices.shape[1:] != (2, 3) or points.ndim != 3 or len(points) != len(matrices):
        raise ValueError(f"need (N, 2, 3) matrices and (N, K, 2) points, got {matrices.shape} and {points.shape}")
    if len(points) == 0:
        raise ValueError("need at least one face")
    in_chip = np.einsum("nij,nkj->nki", matrices[:, :, :2], points) + matrices[:, None, :, 2]
    layout = in_chip.mean(0)
    rms = np.sqrt(((in_chip - layout) ** 2).sum(-1).mean(0))
    return layout, rms


@dataclass(frozen=True)
class ChipTemplateFit:
    """Result of :func:`fit_chip_template`.

    Attributes
    ----------
    points : numpy.ndarray
        ``(5, 2)`` MTFL points in the chip (the template).
    dlib5_points : numpy.ndarray
        ``(5, 2)`` dlib's five points in the chip.
    rms, dlib5_rms : numpy.ndarray
        ``(5,)`` rms spread of each point about its mean, chip pixels.
    faces : int
        Faces the fit used.
    other_points, other_rms : numpy.ndarray or None
        Layout and rms spread of the ``other_points`` given to
        :func:`fit_chip_template` (another landmark source, e.g. a detector's
        own five points), in the same chips; ``None`` when none were given.
    """

    points: np.ndarray
    dlib5_points: np.ndarray
    rms: np.ndarray
    dlib5_rms: np.ndarray
    faces: int
    other_points: np.ndarray | None = None
    other_rms: np.ndarray | None = None


def fit_chip_template(
    images: Sequence[np.ndarray],
    boxes: np.ndarray,
    points: np.ndarray,
    size: int = DLIB_CHIP_SIZE,
    padding: float = DLIB_CHIP_PADDING,
    progress: Callable[[int, int], None] | None = None,
    other_points: np.ndarray | None = None,
) -> ChipTemplateFit:
    """Measure where five MTFL points land in dlib's face chips.

    For every face, dlib's 5-point predictor runs on the face box, the chip
    map is measured with :func:`face_chip_matrix`, and the face's MTFL points
    and dlib's points (and ``other_points``, when given) are mapped into the
    chip; :func:`mean_chip_points` gives the layouts.

    Parameters
    ----------
    images : sequence of numpy.ndarray
        ``H x W x 3`` uint8 RGB images.
    boxes : numpy.ndarray
        ``(N, 4)`` face boxes (facealign convention, e.g. dlib detections).
    points : numpy.ndarray
        ``(N, 5, 2)`` MTFL-order points of the same faces (ground truth).
    size, padding : int, float
        ``get_face_chip`` arguments.
    progress : callable, optional
        ``progress(done, total)``.
    other_points : numpy.ndarray, optional
        ``(N, K, 2)`` points of another landmark source on the same faces
        (e.g. RetinaFace's own five points; ``bench/detector_chip_template.py``).
    """
    predictor = DlibFivePointPredictor()
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    points = np.asarray(points, np.float64)
    if not (len(images) == len(boxes) == len(points)):
        raise ValueError("need one box and one point set per image")
    matrices, dlib_points = [], []
    for n, (image, box) in enumerate(zip(images, boxes)):
        detection = predictor.detection(image, box)
        matrices.append(face_chip_matrix(image.shape, detection, size, padding))
        dlib_points.append([(p.x, p.y) for p in detection.parts()])
        if progress is not None:
            progress(n + 1, len(boxes))
    matrices_array = np.stack(matrices)
    layout, rms = mean_chip_points(matrices_array, points)
    dlib_layout, dlib_rms = mean_chip_points(matrices_array, np.asarray(dlib_points, np.float64))
    other_layout = other_rms = None
    if other_points is not None:
        other_layout, other_rms = mean_chip_points(matrices_array, np.asarray(other_points, np.float64))
    return ChipTemplateFit(layout, dlib_layout, rms, dlib_rms, len(boxes), other_layout, other_rms)


# --------------------------------------------------------------------------- landmarks and backbone


class DlibFivePointPredictor:
    """dlib's 5-point shape predictor (``shape_predictor_5_face_landmarks.dat``) on face boxes.

    Points come in dlib's order (not MTFL's): align them with
    :func:`dlib5_template`. Boxes and points follow facealign's conventions
    (see :class:`facealign.research.peers.DlibShapePredictor`).
    """

    name = "dlib-5pt"

    def __init__(self, model_path: str | Path | None = None) -> None:
        dlib = _import_dlib()
        self.model_path = Path(model_path) if model_path is not None else dlib_model_path(5)
        self._dlib = dlib
        self._predictor = dlib.shape_predictor(str(self.model_path))

    def detection(self, image: np.ndarray, box: Sequence[float] | np.ndarray):
        """dlib's ``full_object_detection`` for one face box of an ``H x W x 3`` uint8 RGB image."""
        return self._predictor(np.ascontiguousarray(image), self._dlib.rectangle(*box_to_dlib_rect(box)))

    def predict(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """``N x 5 x 2`` float64 points (dlib order) for ``N x 4`` boxes."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        return np.array([[(p.x, p.y) for p in self.detection(image, b).parts()] for b in boxes], np.float64).reshape(
            -1, 5, 2
        )

    def predict_many(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        """:meth:`predict` per image."""
        if len(images) != len(boxes):
            raise ValueError("need one box array per image")
        return [self.predict(im, b) for im, b in zip(images, boxes)]


class DlibResNetBackbone:
    """:class:`~recognition.backbone.Backbone` around dlib's ResNet face descriptor (128-D).

    Crops must be 150 x 150 RGB chips aligned onto :func:`dlib_chip_template`
    (the layout the network was trained on). No jittering.

    Parameters
    ----------
    model_path : path, optional
        The ``.dat`` model; that of ``face-recognition-models`` by default.
    batch_size : int
        Crops per call into dlib.

    Raises
    ------
    ImportError
        If ``face-recognition-models`` is not installed (install hint in the message).
    """

    name = "dlib-resnet"
    input_size: int = DLIB_CHIP_SIZE
    feature_dim = 128

    def __init__(self, model_path: str | Path | None = None, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        dlib = _import_dlib()
        self.model_path = Path(model_path) if model_path is not None else dlib_resnet_model_path()
        if not self.model_path.is_file():
            raise FileNotFoundError(f"no dlib face descriptor model at {self.model_path}")
        self._model = dlib.face_recognition_model_v1(str(self.model_path))
        self.batch_size = batch_size
        self.template = dlib_chip_template()

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """Embed ``N x 150 x 150 x 3`` uint8 RGB chips into ``N x 128`` float32 descriptors."""
        array = np.asarray(crops)
        expected = (self.input_size, self.input_size, 3)
        if array.ndim != 4 or array.shape[1:] != expected or array.dtype != np.uint8:
            raise ValueError(
                f"crops must be an N x {self.input_size} x {self.input_size} x 3 uint8 RGB array, "
                f"got {array.dtype} {array.shape}"
            )
        out = np.zeros((len(array), self.feature_dim), np.float32)
        for start in range(0, len(array), self.batch_size):
            batch = [np.ascontiguousarray(c) for c in array[start : start + self.batch_size]]
            out[start : start + len(batch)] = np.asarray(self._model.compute_face_descriptor(batch), np.float32)
        return out
