"""Similarity alignment of faces to 5-point templates.

Conventions (as in :mod:`facealign.constants`)
----------------------------------------------
* Points are ``(N, 2)`` arrays of ``(x, y)``, x before y, in pixels, with
  pixel centres at integer coordinates (OpenCV ``warpAffine`` convention).
* A transform is a ``(2, 3)`` ``float64`` matrix ``M = [A | t]`` acting on
  column vectors: ``p' = A @ p + t``. This is the *forward* map from source
  (image) coordinates to destination (crop) coordinates, the matrix that
  :func:`cv2.warpAffine` expects without ``WARP_INVERSE_MAP``.
* A similarity is ``A = s * R`` with scale ``s > 0`` and a rotation ``R``
  (``det R = +1``): reflections are never produced, so a face is never
  mirrored by alignment.
* A template's ``size`` is ``(width, height)``, width first, like the points.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, cast

import cv2
import numpy as np

from facealign.constants import ARCFACE_TEMPLATE_112, ARCFACE_TEMPLATE_SIZE, NUM_POINTS
from facealign.geometry import from_resized_matrix, to_resized

__all__ = [
    "ANTIALIAS_BELOW",
    "WARP_VERSION",
    "LOOSE_SHRINK",
    "LOOSE_SIZE",
    "TEMPLATES",
    "Template",
    "estimate_similarity",
    "get_template",
    "invert_affine",
    "transform_points",
    "warp_affine",
    "warp_affines",
    "warp_face",
]


def _as_points(points: Any, name: str, min_points: int = 1) -> np.ndarray:
    """Validate an ``(N, 2)`` array of finite points and return it as ``float64``."""
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2), got {array.shape}")
    if array.shape[0] < min_points:
        raise ValueError(f"{name} needs at least {min_points} points, got {array.shape[0]}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains non-finite values")
    return array


def _as_affine(matrix: Any, stacked: bool = False) -> np.ndarray:
    """Validate a ``(2, 3)`` or ``(3, 3)`` affine matrix, or with ``stacked`` an ``(N, 2, 3)`` or
    ``(N, 3, 3)`` stack of them; return the ``(2, 3)`` part (``(N, 2, 3)``)."""
    array = np.asarray(matrix, dtype=np.float64)
    if array.ndim != (3 if stacked else 2):
        shapes = "(N, 2, 3) or (N, 3, 3)" if stacked else "(2, 3) or (3, 3)"
        raise ValueError(f"matrix must have shape {shapes}, got {array.shape}")
    if array.shape[-2:] == (3, 3):
        if not np.allclose(array[..., 2, :], (0.0, 0.0, 1.0)):
            raise ValueError(f"a (3, 3) matrix must be affine (last row 0 0 1), got {array[..., 2, :]}")
        array = array[..., :2, :]
    if array.shape[-2:] != (2, 3):
        raise ValueError(f"matrix must have shape (2, 3) or (3, 3), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("matrix contains non-finite values")
    return array


def estimate_similarity(src: Any, dst: Any) -> np.ndarray:
    """Least-squares non-reflective similarity mapping ``src`` onto ``dst``.

    Minimises ``sum_i || s R src_i + t - dst_i ||^2`` over the scale ``s > 0``,
    the rotation ``R`` (``det R = +1``) and the translation ``t``, in closed
    form (Umeyama 1991, "Least-squares estimation of transformation parameters
    between two point patterns", with the reflection case excluded: the sign
    correction ``D = diag(1, sign(det(U V^T)))`` is always applied).

    Parameters
    ----------
    src : array_like, shape (N, 2)
        Source points ``(x, y)``, ``N >= 2``.
    dst : array_like, shape (N, 2)
        Corresponding destination points.

    Returns
    -------
    numpy.ndarray, shape (2, 3), float64
        ``M = [s R | t]`` with ``dst_i ~= M @ [x_i, y_i, 1]``.

    Raises
    ------
    ValueError
        If the shapes differ or are not ``(N, 2)`` with ``N >= 2``, a value is
        not finite, or either point set is degenerate (all points identical).
    """
    src = _as_points(src, "src", min_points=2)
    dst = _as_points(dst, "dst", min_points=2)
    if src.shape != dst.shape:
        raise ValueError(f"src and dst must have the same shape, got {src.shape} and {dst.shape}")
    src_mean = src.mean(axis=0)
    dst_mean = dst.mean(axis=0)
    src_c = src - src_mean
    dst_c = dst - dst_mean
    src_var = float(np.mean(np.sum(src_c**2, axis=1)))
    dst_var = float(np.mean(np.sum(dst_c**2, axis=1)))
    for label, var, mean in (("src", src_var, src_mean), ("dst", dst_var, dst_mean)):
        if var <= 1e-20 * max(1.0, float(mean @ mean)):
            raise ValueError(f"degenerate {label}: all points are identical")
    covariance = dst_c.T @ src_c / src.shape[0]
    u, singular, vt = np.linalg.svd(covariance)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rotation = u @ np.diag(d) @ vt
    scale = float(singular @ d) / src_var
    if scale <= 0.0:
        raise ValueError("degenerate correspondence: no similarity with positive scale fits")
    matrix = np.empty((2, 3), dtype=np.float64)
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix


def transform_points(matrix: Any, points: Any) -> np.ndarray:
    """Apply an affine transform to points.

    Parameters
    ----------
    matrix : array_like, shape (2, 3) or (3, 3)
        Affine matrix ``[A | t]`` (a ``(3, 3)`` matrix must have last row ``0 0 1``).
    points : array_like, shape (..., 2)
        Points ``(x, y)``; any leading shape.

    Returns
    -------
    numpy.ndarray, shape (..., 2), float64
        ``A @ p + t`` for every point.
    """
    affine = _as_affine(matrix)
    array = np.asarray(points, dtype=np.float64)
    if array.ndim < 1 or array.shape[-1] != 2:
        raise ValueError(f"points must have shape (..., 2), got {array.shape}")
    return array @ affine[:, :2].T + affine[:, 2]


def invert_affine(matrix: Any) -> np.ndarray:
    """Invert an affine transform.

    Parameters
    ----------
    matrix : array_like, shape (2, 3) or (3, 3)
        Affine matrix ``[A | t]``.

    Returns
    -------
    numpy.ndarray, shape (2, 3), float64
        ``[A^-1 | -A^-1 t]``, so that ``transform_points(invert_affine(M),
        transform_points(M, p)) == p``.

    Raises
    ------
    ValueError
        If the linear part is singular.
    """
    affine = _as_affine(matrix)
    linear = affine[:, :2]
    det = float(np.linalg.det(linear))
    if abs(det) <= 1e-12 * max(1.0, float(np.abs(linear).max()) ** 2):
        raise ValueError(f"matrix is not invertible (det of linear part = {det:g})")
    inverse_linear = np.linalg.inv(linear)
    inverse = np.empty((2, 3), dtype=np.float64)
    inverse[:, :2] = inverse_linear
    inverse[:, 2] = -inverse_linear @ affine[:, 2]
    return inverse


def _as_size(size: Any) -> tuple[int, int]:
    """Normalise an ``int`` (square) or ``(width, height)`` output size."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        pair = (int(size), int(size))
    else:
        try:
            values = tuple(size)
        except TypeError:
            raise ValueError(f"size must be an int or (width, height), got {size!r}") from None
        if len(values) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            raise ValueError(f"size must be an int or (width, height) of ints, got {size!r}")
        pair = (int(values[0]), int(values[1]))
    if pair[0] <= 0 or pair[1] <= 0:
        raise ValueError(f"size must be positive, got {pair}")
    return pair


@dataclass(frozen=True, eq=False)
class Template:
    """Destination landmark positions of an aligned crop.

    Parameters
    ----------
    name : str
        Label (built-in name, JSON file stem, or ``"custom"``).
    points : numpy.ndarray, shape (5, 2), float64
        Where the five MTFL-order landmarks go, in pixel-centre coordinates of
        the crop. Stored as a read-only copy.
    size : tuple of int
        Crop ``(width, height)`` in pixels.

    Notes
    -----
    Equality compares name, size and points exactly; instances are hashable.
    """

    name: str
    points: np.ndarray
    size: tuple[int, int]

    def __post_init__(self) -> None:
        points = _as_points(self.points, f"template {self.name!r} points").copy()
        if points.shape != (NUM_POINTS, 2):
            raise ValueError(f"template {self.name!r} needs {NUM_POINTS} points, got {points.shape[0]}")
        points.flags.writeable = False
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "size", _as_size(self.size))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Template):
            return NotImplemented
        return self.name == other.name and self.size == other.size and bool(np.array_equal(self.points, other.points))

    def __hash__(self) -> int:
        return hash((self.name, self.size, self.points.tobytes()))

    @property
    def width(self) -> int:
        """Crop width in pixels."""
        return self.size[0]

    @property
    def height(self) -> int:
        """Crop height in pixels."""
        return self.size[1]

    def scaled(self, size: int | tuple[int, int]) -> Template:
        """The same template for another output size.

        Points are scaled about the image frame, not the pixel centres: with
        ``s = new / old`` per axis, ``p' = (p + 0.5) * s - 0.5``, so every
        landmark keeps its position relative to the crop's extent
        ``[-0.5, W - 0.5]``.

        Parameters
        ----------
        size : int or tuple of int
            New ``(width, height)``; an int means a square crop.

        Returns
        -------
        Template
            Same name, rescaled points, new size.
        """
        new_size = _as_size(size)
        factor = np.array(new_size, dtype=np.float64) / np.array(self.size, dtype=np.float64)
        return Template(self.name, to_resized(self.points, factor), new_size)


#: Side of the built-in ``loose`` template.
LOOSE_SIZE: int = 224

#: Factor by which the ``loose`` template shrinks the ArcFace layout about the
#: crop centre. ArcFace places the eye centres 35.2 px apart in 112 px, i.e.
#: 0.315 of the crop width. An adult face (bizygomatic width about 140 mm) is
#: about 2.2 times the inter-pupillary distance (about 63 mm), so with
#: ``0.8 * 0.315 = 0.252`` of the width between the eyes the face spans about
#: ``2.2 * 0.252 = 0.55`` of the crop width, leaving hair, ears and chin in the
#: crop (AlexNet-style context).
LOOSE_SHRINK: float = 0.8


def _loose_points() -> np.ndarray:
    arcface = Template("arcface", ARCFACE_TEMPLATE_112, (ARCFACE_TEMPLATE_SIZE,) * 2)
    relative = (arcface.points + 0.5) / ARCFACE_TEMPLATE_SIZE  # in [0, 1] of the crop
    shrunk = 0.5 + LOOSE_SHRINK * (relative - 0.5)
    return shrunk * LOOSE_SIZE - 0.5


#: Built-in templates by name.
TEMPLATES: Mapping[str, Template] = {
    "arcface": Template("arcface", ARCFACE_TEMPLATE_112, (ARCFACE_TEMPLATE_SIZE,) * 2),
    "loose": Template("loose", _loose_points(), (LOOSE_SIZE, LOOSE_SIZE)),
}

TemplateSpec = Union[Template, str, "os.PathLike[str]", np.ndarray, list, tuple]


def _load_template_json(path: Path) -> Template:
    names = ", ".join(sorted(TEMPLATES))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        # RecursionError: JSON nested deeper than the interpreter's stack (a hostile file)
        raise ValueError(
            f"cannot read template file {str(path)!r}: {exc} "
            f'(expected JSON {{"size": [w, h], "points": [[x, y] x 5]}}; '
            f"built-in templates: {names})"
        ) from exc
    if not isinstance(data, dict) or "size" not in data or "points" not in data:
        raise ValueError(f'template file {str(path)!r} must hold a JSON object with keys "size" and "points"')
    try:
        return Template(path.stem, np.asarray(data["points"], dtype=np.float64), data["size"])
    except (ValueError, TypeError) as exc:
        raise ValueError(f"invalid template file {str(path)!r}: {exc}") from exc


def get_template(spec: TemplateSpec, size: int | tuple[int, int] | None = None) -> Template:
    """Resolve a template specification.

    Parameters
    ----------
    spec : Template, str, os.PathLike or array_like
        A :class:`Template`; a built-in name (see :data:`TEMPLATES`); a path to
        a JSON file ``{"size": [w, h], "points": [[x, y], ... 5 rows]}``; or a
        ``(5, 2)`` array of points, which requires ``size`` (its own size).
    size : int or tuple of int, optional
        Output ``(width, height)`` (int: square). For named, file and
        :class:`Template` specs, the template is rescaled to it with
        :meth:`Template.scaled`; for an array it is the size the points are
        given in.

    Returns
    -------
    Template

    Raises
    ------
    ValueError
        For an unknown name or missing file (the message lists the built-in
        names), a malformed file or array, or an array without ``size``.
    """
    if isinstance(spec, Template):
        template = spec
    elif isinstance(spec, (str, os.PathLike)):
        key = os.fspath(spec)
        if isinstance(spec, str) and key in TEMPLATES:
            template = TEMPLATES[key]
        elif Path(key).is_file():
            template = _load_template_json(Path(key))
        else:
            raise ValueError(
                f"unknown template {key!r}: not a built-in name "
                f"({', '.join(sorted(TEMPLATES))}) nor an existing JSON file"
            )
    else:
        if size is None:
            raise ValueError("a template given as a point array needs size=(width, height)")
        try:
            # Template normalises an int size (square) to (width, height).
            return Template("custom", np.asarray(spec, dtype=np.float64), cast(tuple[int, int], size))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid template points: {exc}") from exc
    if size is not None and _as_size(size) != template.size:
        template = template.scaled(size)
    return template


#: The warp reduces the source by area averaging first when its map shrinks the
#: image by more than this factor (see :func:`warp_affine`).
ANTIALIAS_BELOW: float = 0.5

#: Names the warp's resampling in the keys of caches that hold crops or what is
#: computed from them (``recognition``'s feature caches): changed with the warp.
WARP_VERSION: str = "aa2"


def warp_affine(
    image: np.ndarray,
    matrix: Any,
    size: int | tuple[int, int],
    border_mode: int = cv2.BORDER_CONSTANT,
) -> np.ndarray:
    """Warp ``image`` by the forward 2 x 3 ``matrix`` into a crop of ``size``, anti-aliased.

    The one warp of facealign: the landmark network's 40 x 40 input crops
    (:func:`facealign.cropping.crop_faces`) and the aligned output crops
    (:func:`warp_face`) both go through it (:func:`warp_affines` is the same
    warp for many crops at once). Bilinear sampling reads only the
    four source pixels around each crop pixel, so a map that shrinks the image
    by more than 2x (scale below :data:`ANTIALIAS_BELOW`) would skip source
    pixels and alias; then the source region the crop reads (plus a small
    margin) is first reduced with area averaging (``cv2.INTER_AREA``) to about
    twice the crop's resolution, and the map is composed with that reduction
    (pixel-centre rule, :mod:`facealign.geometry`).

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` ``uint8`` image.
    matrix : array_like, shape (2, 3) or (3, 3)
        Forward affine map from ``image`` pixels to crop pixels.
    size : int or (width, height)
        Crop size.
    border_mode : int, optional
        OpenCV border mode for crop pixels outside ``image`` (default black
        ``BORDER_CONSTANT``; the network crops use ``BORDER_REPLICATE``).

    Returns
    -------
    numpy.ndarray
        ``(height, width[, C])`` ``uint8`` crop.
    """
    return warp_affines([image], _as_affine(matrix)[None], size, border_mode=border_mode)[0]


def warp_affines(
    images: Any,
    matrices: np.ndarray,
    size: int | tuple[int, int],
    owner: np.ndarray | None = None,
    border_mode: int = cv2.BORDER_CONSTANT,
) -> np.ndarray:
    """:func:`warp_affine` of ``images[owner[i]]`` by ``matrices[i]`` (``N x 2 x 3``), every crop at once.

    The geometry of all crops (which need the area reduction, the region each
    reads and the composed maps) is computed in a few array operations; each
    crop then costs one OpenCV resize (when reduced) and one warp. A crop is
    the same, bit for bit, whatever else is warped with it.

    Parameters
    ----------
    images : sequence of numpy.ndarray
        Images of one type (``uint8`` for the pipeline), all ``(H, W)`` or all
        ``(H, W, C)`` with the same ``C``.
    matrices : numpy.ndarray, shape (N, 2, 3) or (N, 3, 3)
        Forward affine maps from image pixels to crop pixels (finite).
    size : int or (width, height)
        Crop size.
    owner : numpy.ndarray, shape (N,), optional
        The image of each crop; defaults to ``0..N-1`` (one matrix per image).
    border_mode : int, optional
        As :func:`warp_affine`.

    Returns
    -------
    numpy.ndarray
        ``(N, height, width[, C])`` crops of the images' type (no ``C`` for a
        one-channel image, as :func:`warp_affine`).
    """
    width, height = _as_size(size)
    m = np.ascontiguousarray(_as_affine(matrices, stacked=True))
    n = len(m)
    owner = np.arange(n) if owner is None else np.asarray(owner, np.intp).reshape(-1)
    if len(owner) != n:
        raise ValueError(f"{len(owner)} owners for {n} matrices")
    if n == 0:
        first = np.asarray(images[0]) if len(images) else np.zeros((1, 1, 3), np.uint8)
        channels = first.shape[2:] if first.ndim == 3 and first.shape[2] > 1 else ()
        return np.zeros((0, height, width, *channels), first.dtype)
    out: np.ndarray | None = None
    det = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]
    scale = np.sqrt(np.abs(det))
    reduced = scale < ANTIALIAS_BELOW
    maps = m.copy()
    if reduced.any():
        # The inverse map (as cv2.invertAffineTransform) takes the crop's corners to the
        # source region it reads, plus a margin, clipped to the image.
        r = np.flatnonzero(reduced)
        (a, b, tx), (c, d, ty), det = m[r, 0].T, m[r, 1].T, det[r]
        inv_det = np.where(det != 0, 1.0 / np.where(det != 0, det, 1.0), 0.0)
        i00, i01, i10, i11 = d * inv_det, -b * inv_det, -c * inv_det, a * inv_det
        i02, i12 = -i00 * tx - i01 * ty, -i10 * tx - i11 * ty
        cx = np.array([-0.5, width - 0.5, -0.5, width - 0.5])
        cy = np.array([-0.5, -0.5, height - 0.5, height - 0.5])
        src_x = i00[:, None] * cx + i01[:, None] * cy + i02[:, None]
        src_y = i10[:, None] * cx + i11[:, None] * cy + i12[:, None]
        shapes = np.array([np.shape(images[int(k)])[:2] for k in owner[r]]).reshape(-1, 2)
        h, w = shapes[:, 0], shapes[:, 1]
        x0 = np.clip(np.floor(src_x.min(1)) - 1, 0, w - 1).astype(np.int64)
        y0 = np.clip(np.floor(src_y.min(1)) - 1, 0, h - 1).astype(np.int64)
        x1 = np.clip(np.ceil(src_x.max(1)) + 2, x0 + 1, w).astype(np.int64)
        y1 = np.clip(np.ceil(src_y.max(1)) + 2, y0 + 1, h).astype(np.int64)
        f = 0.5 / scale[r]
        rw = np.maximum(1, np.round((x1 - x0) / f)).astype(np.int64)
        rh = np.maximum(1, np.round((y1 - y0) / f)).astype(np.int64)
        # reduced pixel (u, v) <- region pixel ((u + .5) / sx - .5, ...) <- image pixel (+x0, +y0)
        to_image = from_resized_matrix(np.stack([rw / (x1 - x0), rh / (y1 - y0)], 1))
        to_image[:, 0, 2] += x0
        to_image[:, 1, 2] += y0
        maps[r] = m[r] @ to_image
        windows = dict(zip(r.tolist(), np.stack([x0, y0, x1, y1, rw, rh], 1).tolist()))
    else:
        windows = {}
    for i in range(n):
        image = images[int(owner[i])]
        window = windows.get(i)
        if window is not None:
            x0_, y0_, x1_, y1_, rw_, rh_ = window
            image = cv2.resize(image[y0_:y1_, x0_:x1_], (rw_, rh_), interpolation=cv2.INTER_AREA)
        crop = cv2.warpAffine(
            image, maps[i], (width, height), flags=cv2.INTER_LINEAR, borderMode=border_mode, borderValue=0
        )
        if out is None:  # OpenCV's shape and type: (h, w) for a one-channel image, its dtype
            out = np.empty((n, *crop.shape), crop.dtype)
        out[i] = crop
    return cast(np.ndarray, out)


def warp_face(
    image: np.ndarray,
    landmarks: Any,
    template: TemplateSpec,
    border_mode: int = cv2.BORDER_CONSTANT,
) -> tuple[np.ndarray, np.ndarray]:
    """Warp a face so that its landmarks land on a template.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, 3)`` (or ``(H, W)``) ``uint8`` image.
    landmarks : array_like, shape (5, 2)
        The face's five points in ``image``, MTFL order, ``(x, y)``.
    template : Template or str or os.PathLike
        Destination template (anything :func:`get_template` accepts without
        a size).
    border_mode : int, optional
        OpenCV border mode for pixels outside ``image`` (default: black
        ``BORDER_CONSTANT``; ``cv2.BORDER_REPLICATE`` or ``BORDER_REFLECT``
        avoid black corners).

    Returns
    -------
    crop : numpy.ndarray
        ``(template.height, template.width, 3)`` ``uint8`` crop (bilinear,
        anti-aliased when the face is shrunk more than 2x: :func:`warp_affine`).
    matrix : numpy.ndarray, shape (2, 3)
        Forward similarity from ``image`` to ``crop`` coordinates; map crop
        points back with ``transform_points(invert_affine(matrix), q)``.

    Raises
    ------
    ValueError
        For a malformed image, landmarks or template, or degenerate landmarks.
    """
    resolved = get_template(template)
    array = np.asarray(image)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {array.shape}")
    if array.size == 0:
        raise ValueError("image is empty")
    points = _as_points(landmarks, "landmarks")
    if points.shape != resolved.points.shape:
        raise ValueError(f"landmarks must have shape {resolved.points.shape}, got {points.shape}")
    matrix = estimate_similarity(points, resolved.points)
    return warp_affine(array, matrix, resolved.size, border_mode), matrix
