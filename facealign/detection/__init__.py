"""Face detectors behind one interface: image in, boxes, scores (and maybe five points) out.

Every back-end works offline from a pip-installed package that ships its
weights; one module each:

* ``retinaface`` (default) -- RetinaFace-MobileNet-0.25 with five points, run by
  ``onnxruntime`` (:mod:`.retinaface`);
* ``libfacedetection`` -- libfacedetection's CNN, boxes only (:mod:`.libfacedetection`);
* ``dlib``, ``dlib-fast`` -- dlib's HOG frontal detector; ``haar`` -- OpenCV's
  cascade (:mod:`.scaled`).

The CNN back-ends search a scale pyramid of tiles (:class:`PyramidDetector`), so
they find faces down to ``min_face`` pixels in photos of any size.

Plug-ins: any object with a ``name`` and a ``detect(image) -> Detections``
method can be passed wherever a detector is expected. A factory becomes
selectable by name (``--detector NAME``, in worker processes too) when it is
registered with :func:`register_detector` in the running process, or declared
by an installed package in the entry-point group ``facealign.detectors``::

    [options.entry_points]
    facealign.detectors =
        mine = my_package.detect:MyDetector
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable

from ..constants import BUILTIN_DETECTORS, DEFAULT_DETECTOR
from .base import (
    DEFAULT_MIN_FACE,
    DEFAULT_MIN_FACE_FRACTION,
    DEFAULT_MIN_FACE_LIMIT,
    Detections,
    Detector,
    PyramidDetector,
    box_iou,
    check_image,
    confident_or_best,
    nms,
)
from .libfacedetection import LibFaceDetectionDetector
from .retinaface import RetinaFaceDetector
from .scaled import DlibHogDetector, FastDlibHogDetector, HaarDetector, ScaledDetector

__all__ = [
    "DEFAULT_DETECTOR",
    "DEFAULT_MIN_FACE",
    "DEFAULT_MIN_FACE_FRACTION",
    "DEFAULT_MIN_FACE_LIMIT",
    "DETECTORS",
    "ENTRY_POINT_GROUP",
    "Detections",
    "Detector",
    "DlibHogDetector",
    "FastDlibHogDetector",
    "HaarDetector",
    "LibFaceDetectionDetector",
    "PyramidDetector",
    "RetinaFaceDetector",
    "ScaledDetector",
    "available_detectors",
    "box_iou",
    "check_image",
    "confident_or_best",
    "get_detector",
    "nms",
    "options_not_taken",
    "register_detector",
    "working_side",
]

#: Entry-point group through which installed packages offer detectors.
ENTRY_POINT_GROUP = "facealign.detectors"

#: Detector factories by name; see :func:`register_detector`.
DETECTORS: dict[str, Callable[..., Detector]] = {
    "retinaface": RetinaFaceDetector,
    "libfacedetection": LibFaceDetectionDetector,
    "dlib": DlibHogDetector,
    "dlib-fast": FastDlibHogDetector,
    "haar": HaarDetector,
}
assert tuple(DETECTORS) == BUILTIN_DETECTORS and DEFAULT_DETECTOR == BUILTIN_DETECTORS[0]


def register_detector(name: str, factory: Callable[..., Detector]) -> None:
    """Make a detector plug-in selectable by ``name`` in this process.

    Worker processes of the crop job import the registering module only if it
    is imported by the code they run; to make a plug-in available everywhere
    (the CLI, ``--jobs N``), declare it in the ``facealign.detectors``
    entry-point group of its package instead.
    """
    DETECTORS[name] = factory


def _entry_points() -> dict:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_detectors() -> list[str]:
    """Names ``--detector`` accepts: built-ins, registered plug-ins and entry points."""
    names = list(DETECTORS)
    names += [n for n in sorted(_entry_points()) if n not in DETECTORS]
    return names


def _factory(name: str) -> Callable[..., Detector]:
    factory = DETECTORS.get(name)
    if factory is not None:
        return factory
    entry = _entry_points().get(name)
    if entry is None:
        raise ValueError(f"unknown detector {name!r}; choose one of {available_detectors()}")
    try:
        factory = entry.load()
    except Exception as exc:
        raise ValueError(f"detector plug-in {name!r} ({entry.value}) failed to load: {exc}") from exc
    DETECTORS[name] = factory
    return factory


def options_not_taken(name: str, options: Iterable[str]) -> list[str]:
    """The keywords of ``options`` that the factory of detector ``name`` does not take, read
    off its signature (sorted; none for a factory with ``**kwargs`` or without a signature)."""
    try:
        parameters = inspect.signature(_factory(name)).parameters.values()
    except (TypeError, ValueError):  # no signature to read: let the call decide
        return []
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return []
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return sorted(set(options) - names)


def get_detector(spec: str | Detector | None = None, **kwargs) -> Detector:
    """A detector from a name (built-in, registered or entry point), or ``spec`` itself.

    Keyword arguments go to the factory; ``min_face=None`` is dropped so that
    each back-end keeps its own default. A keyword the factory does not take is
    a ``ValueError`` (:func:`options_not_taken`); an error raised inside the
    factory is its own.
    """
    if spec is None:
        spec = DEFAULT_DETECTOR
    kwargs = {k: v for k, v in kwargs.items() if not (k == "min_face" and v is None)}
    if isinstance(spec, str):
        factory = _factory(spec)
        refused = options_not_taken(spec, kwargs)
        if refused:
            raise ValueError(f"detector {spec!r} does not take {', '.join(refused)}")
        return factory(**kwargs)
    if not isinstance(spec, Detector):
        raise TypeError(f"a detector needs a name and a detect(image) method, got {type(spec).__name__}")
    return spec


def working_side(detector: Detector, width: int, height: int) -> int:
    """Longer side, in pixels, to decode a ``width x height`` photo at for ``detector``.

    A back-end with ``work_scale(height, width)`` (all built-ins) gets the
    resolution it can use, never more than the photo's own; any other detector
    gets the full resolution.
    """
    side = max(width, height)
    work_scale = getattr(detector, "work_scale", None)
    if work_scale is None:
        return side
    return max(1, min(side, int(round(side * float(work_scale(height, width))))))
