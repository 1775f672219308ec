"""Landmark engines: the vanilla CNN and the Tweaked CNN, batched, without torch at run time.

An engine turns face boxes into five points. It crops every box to the
``40 x 40`` network input (:mod:`facealign.cropping`) and runs the network on the
whole batch at once.

* ``vanilla``: the paper's CNN (section 2.1).
* ``tcnn``: the vanilla convolutional layers, then a Gaussian-mixture router on
  the FC5 input picks one of K tweaked FC5+FC6 heads per face (section 3.1). By
  default the prediction is averaged with the one on the mirrored crop.

Given face boxes (:meth:`LandmarkEngine.predict`, :meth:`~LandmarkEngine.predict_many`),
an engine whose weights carry a box model re-boxes by default
(:mod:`facealign.reboxing`): a quick first pass (vanilla head, no mirror)
predicts the points, the box those points imply is cropped, and the engine's
full pass runs on that crop.

An engine reads the **run-time weights** ``<engine>.npz``
(:mod:`facealign.runtime_weights`, the format's owner): the normalisation and
the convolutional layers CL1-CL4 as an ONNX graph (uint8 crops in, FC5 inputs
out) run by ``onnxruntime``, and the fully connected heads, the mixture and the
box and quality models as numpy arrays. They are compiled from the torch
**training weights** ``<engine>.pt`` (:mod:`facealign.research.training_weights`)
by :mod:`facealign.research.export` (``facealign export-engine``). The run time
(this module) needs neither torch nor pickle; once :mod:`facealign.research` is
imported, a ``.pt`` given as ``weights`` is compiled in memory (which needs torch).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .constants import (
    DEFAULT_ENGINE,
    ENGINE_KINDS,
    ENGINES,
    INPUT_SIZE,
    MIRROR_PERMUTATION,
    NUM_POINTS,
    shipped_runtime_weights,
    shipped_weights,
)
from .cropping import crop_faces, from_box_coordinates
from .inference import onnx_session
from .landmarks import Landmarks
from .quality import QualityModel, empty_signals, face_signals, split_quality
from .reboxing import BoxFromLandmarks
from .runtime_weights import TRUNK_INPUT, TRUNK_OUTPUT, load_runtime_weights

__all__ = [
    "GaussianRouter",
    "LandmarkEngine",
    "Landmarks",
    "load_runtime_weights",
    "mirror_coordinates",
    "row_products",
    "shipped_runtime_weights",
    "shipped_weights",
]


class GaussianRouter:
    """Most probable component of a diagonal-covariance Gaussian mixture (Eq. 2).

    The log posterior, up to a per-face constant, is
    ``log w_k - sum_d log sigma_kd - 0.5 * sum_d (f_d - mu_kd)^2 / sigma_kd^2``;
    expanding the square gives two matrix products for a whole batch. Computed
    in float32, as the network.
    """

    def __init__(self, weights: np.ndarray, means: np.ndarray, variances: np.ndarray) -> None:
        weights, means, variances = (np.asarray(a, np.float32) for a in (weights, means, variances))
        prec = 1.0 / variances
        # log w_k + D/2 log(2 pi): what separates the log posterior above from the
        # component's log density (see routed_fit).
        self.density_offset = (np.log(weights) + np.float32(0.5 * means.shape[1] * math.log(2 * math.pi))).astype(
            np.float32
        )
        self.prec_t = np.ascontiguousarray(prec.T)  # D x K
        self.mean_prec_t = np.ascontiguousarray((means * prec).T)  # D x K
        self.const = (np.log(weights) - 0.5 * np.log(variances).sum(1) - 0.5 * (means**2 * prec).sum(1)).astype(
            np.float32
        )

    @property
    def num_components(self) -> int:
        return len(self.const)

    def log_posterior(self, f: np.ndarray) -> np.ndarray:
        """Unnormalised log posteriors, ``N x K``, of features ``f`` (``N x D``).

        Each row depends on that face's features alone, bit for bit
        (:func:`row_products`).
        """
        f = np.ascontiguousarray(f, np.float32)
        return row_products(f, self.mean_prec_t) - np.float32(0.5) * row_products(f * f, self.prec_t) + self.const

    def __call__(self, f: np.ndarray) -> np.ndarray:
        """The routed component of each face, ``N`` integers."""
        return self.log_posterior(f).argmax(1)

    def routed_fit(self, log_posterior: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Routed component, its log density and its posterior, from :meth:`log_posterior`.

        Returns ``cluster`` (``N``, the argmax, as calling the router),
        ``log N(f | mu_k, Sigma_k)`` of that component (nats, normalised density)
        and its posterior probability ``p(k | f)``, each ``N``.
        """
        cluster = log_posterior.argmax(1)
        best = np.take_along_axis(log_posterior, cluster[:, None], 1)[:, 0]
        log_density = best - self.density_offset[cluster]
        posterior = 1.0 / np.exp(log_posterior - best[:, None]).sum(1)
        return cluster, log_density, posterior


def mirror_coordinates(coords: np.ndarray) -> np.ndarray:
    """Map box-normalised points predicted on a mirrored crop back to the original.

    ``coords`` is ``N x 5 x 2``; x becomes ``1 - x`` and left/right points swap.
    """
    out = np.array(np.asarray(coords)[:, list(MIRROR_PERMUTATION)])
    out[..., 0] = 1.0 - out[..., 0]
    return out


#: Rows of every matrix product of the heads and the router (:func:`row_products`).
PRODUCT_ROWS = 8


def row_products(x: np.ndarray, w: np.ndarray, rows: int = PRODUCT_ROWS) -> np.ndarray:
    """``x @ w`` in float32 (``N x D`` by ``D x M``), each row of the result a function of
    that row of ``x`` and of ``w`` alone, bit for bit.

    A BLAS product is not: BLAS picks its kernel, blocking and threads by the
    shape of the product and the thread count, and they sum in different
    orders, so a face's FC5 output computed alone (a matrix-vector product) and
    inside 37 others differ in the last bits, and so would its crop. Here every
    product is NumPy's own single-threaded ``einsum`` loop (never BLAS) on
    blocks of exactly ``rows`` rows, the last one padded with zeros: one code
    path on one shape, summing over ``D`` in one order. It is also faster than
    threaded BLAS on these small products when other processes share the
    cores (``tests/test_engine.py`` checks the invariance).
    """
    x = np.ascontiguousarray(x, np.float32)
    w = np.ascontiguousarray(w, np.float32)
    n = len(x)
    out = np.empty((n, w.shape[1]), np.float32)
    whole = n - n % rows
    for start in range(0, whole, rows):
        np.einsum("nd,dm->nm", x[start : start + rows], w, out=out[start : start + rows])
    if whole < n:
        padded = np.zeros((rows, x.shape[1]), np.float32)
        padded[: n - whole] = x[whole:]
        out[whole:] = np.einsum("nd,dm->nm", padded, w)[: n - whole]
    return out


def _dense_head(f: np.ndarray, w5: np.ndarray, b5: np.ndarray, w6: np.ndarray, b6: np.ndarray) -> np.ndarray:
    """FC5 (``abs(tanh)``) then FC6 on FC5 inputs ``f``, float32, row by row independent
    (:func:`row_products`); weights laid out input x output."""
    hidden = np.abs(np.tanh(row_products(f, w5) + b5))
    return row_products(hidden, w6) + b6


def _routed_heads(f: np.ndarray, cluster: np.ndarray, heads: tuple[np.ndarray, ...]) -> np.ndarray:
    """The head of each face's cluster on its FC5 input: faces gathered by cluster,
    then one blocked product per cluster present (:func:`_dense_head`)."""
    w5, b5, w6, b6 = heads
    order = np.argsort(cluster, kind="stable")
    counts = np.bincount(cluster, minlength=len(w5))
    gathered = f[order]
    out = np.empty((len(f), w6.shape[2]), np.float32)
    routed = np.empty_like(out)
    start = 0
    for k in np.flatnonzero(counts):
        stop = start + int(counts[k])
        routed[start:stop] = _dense_head(gathered[start:stop], w5[k], b5[k], w6[k], b6[k])
        start = stop
    out[order] = routed
    return out


class LandmarkEngine:
    """Five-point landmarks for face boxes.

    Parameters
    ----------
    engine : {"tcnn", "vanilla"}
        Which network to run.
    weights : path, optional
        A weights file: run-time ``.npz``, or training ``.pt`` once
        :mod:`facealign.research` is imported (compiled in memory, needs
        torch); defaults to the shipped run-time weights of ``engine``.
    mirror : bool, optional
        Average with the prediction on the mirrored crop. Defaults to True for
        ``tcnn`` (the paper's test-time procedure) and False for ``vanilla``.
    batch_size : int
        Crops per pass through the convolutional layers (every pass has exactly
        this many, padded: see :meth:`features`). 8, the default, runs the
        convolutions about 8% faster per crop than 16 on one thread (the crop job's
        worker processes) and pads a lone face with 7 black crops instead of 15; on
        two threads 16 to 256 are 10 to 14% faster on large batches
        (``bench/speed.py``'s batch-size sweep, ``docs/bench/speed.md``).
    refine : bool, optional
        Re-box before the reported pass (see the module docstring). Defaults to
        True when the weights carry a box model (``box_model``); True for weights
        without one is an error.
    threads : int, optional
        Threads of the convolutional layers (onnxruntime's intra-op pool); by
        default one per CPU the process may run on (:func:`facealign.inference.available_cpus`).
        See :meth:`set_threads`.
    providers : str or sequence of str, optional
        onnxruntime execution providers of the convolutional layers
        (:func:`facealign.inference.resolve_providers`; default the CPU, or
        ``FACEALIGN_PROVIDERS``).
    """

    #: Faces routed and sent through the heads together (bounds memory).
    HEAD_CHUNK = 4096

    def __init__(
        self,
        engine: str = DEFAULT_ENGINE,
        weights: str | Path | None = None,
        mirror: bool | None = None,
        batch_size: int = 8,
        refine: bool | None = None,
        threads: int | None = None,
        providers: str | Sequence[str] | None = None,
    ) -> None:
        if engine not in ENGINE_KINDS:
            raise ValueError(f"unknown engine {engine!r}; choose one of {list(ENGINE_KINDS)}")
        if weights is None and engine not in ENGINES:
            raise ValueError(f"engine {engine!r} ships no weights: give weights= (facealign train-compact writes them)")
        self.engine = engine
        self.weights_path = Path(weights) if weights is not None else shipped_runtime_weights(engine)
        arrays = load_runtime_weights(self.weights_path)
        self.meta: dict[str, Any] = json.loads(str(arrays["meta"]))
        self._trunk_onnx = arrays["trunk_onnx"].tobytes()
        #: Side of the square network input (40, the paper's, unless the weights say otherwise).
        self.input_size = int(arrays["input_size"]) if "input_size" in arrays else INPUT_SIZE
        self._threads = threads
        self._providers = providers
        self._trunk: Any = None  # the onnxruntime session, opened on first use (see _session)
        self._vanilla_head = tuple(arrays[f"vanilla_{k}"] for k in ("w5", "b5", "w6", "b6"))
        self._heads: tuple[np.ndarray, ...] | None = None
        self.router: GaussianRouter | None = None
        if engine == "tcnn":
            if "heads_w5" not in arrays:
                raise ValueError(f"{self.weights_path} holds no TCNN heads; use engine='vanilla'")
            self._heads = tuple(arrays[f"heads_{k}"] for k in ("w5", "b5", "w6", "b6"))
            self.router = GaussianRouter(arrays["gmm_weights"], arrays["gmm_means"], arrays["gmm_variances"])
        self.mirror = (engine != "vanilla") if mirror is None else bool(mirror)
        #: x shift (box units) added to the un-mirrored prediction of the mirrored
        #: crop; see :func:`facealign.research.training_weights.estimate_mirror_shift`.
        self.mirror_shift = float(arrays["mirror_shift"])
        self.batch_size = int(batch_size)
        self.box_model: BoxFromLandmarks | None = (
            BoxFromLandmarks.from_tensor(arrays["box_model"]) if "box_model" in arrays else None
        )
        if refine and self.box_model is None:
            raise ValueError(f"{self.weights_path} holds no box model, so it cannot re-box; use refine=False")
        self.refine = (self.box_model is not None) if refine is None else bool(refine)
        #: Per-face quality model (:mod:`facealign.quality`), when the weights carry one.
        self.quality_model: QualityModel | None = None
        if "quality_signals" in arrays:
            state = {k[len("quality_") :]: v for k, v in arrays.items() if k.startswith("quality_")}
            state["signals"] = json.loads(str(state["signals"]))
            self.quality_model = QualityModel.from_state(state)

    def set_threads(self, threads: int | None) -> None:
        """Run the convolutional layers on ``threads`` threads (None: one per available CPU).

        The crop job gives each worker process one thread.
        """
        if threads != self._threads:
            self._threads = threads
            self._trunk = None

    def __getstate__(self) -> dict[str, Any]:
        # an onnxruntime session does not pickle; it is opened again from the bytes
        return {**self.__dict__, "_trunk": None}

    def _session(self) -> Any:
        """The onnxruntime session of CL1-CL4, opened on first use, so that a thread count
        set before (:meth:`set_threads`, as the crop job's workers do) opens it once."""
        if self._trunk is None:
            self._trunk = onnx_session(self._trunk_onnx, self._threads, self._providers)
        return self._trunk

    @property
    def num_clusters(self) -> int:
        return 1 if self.router is None else self.router.num_components

    def _check_crops(self, crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops)
        s = self.input_size
        if crops.ndim != 4 or crops.shape[1:] != (s, s, 3):
            raise ValueError(f"expected N x {s} x {s} x 3 crops, got {crops.shape}")
        return np.ascontiguousarray(crops, np.uint8)

    def features(self, crops: np.ndarray) -> np.ndarray:
        """FC5 inputs (``N x 256`` float32) of uint8 RGB crops ``N x 40 x 40 x 3``.

        The convolutions always see exactly ``batch_size`` crops, the last batch
        padded with black crops: one input shape, so that a face's features do
        not depend on how many faces share its batch (the same reason as in
        :func:`row_products`). The cost per crop hardly depends on the batch
        size (``bench/speed.py``), so a small batch wastes little on padding.
        """
        crops = self._check_crops(crops)
        session = self._session()
        n, size = len(crops), self.batch_size
        out = np.empty((n, self._vanilla_head[0].shape[0]), np.float32)
        for start in range(0, n, size):
            batch = crops[start : start + size]
            if len(batch) < size:
                batch = np.concatenate([batch, np.zeros((size - len(batch), *batch.shape[1:]), np.uint8)])
            out[start : start + size] = session.run([TRUNK_OUTPUT], {TRUNK_INPUT: batch})[0][: n - start]
        return out

    def _forward(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # The router and the heads once for the whole chunk (one matrix product per
        # cluster present). The third output is N x 2: the routed component's log
        # density and posterior (NaN without a router), for the quality signals.
        f = self.features(crops)
        if self._heads is None or self.router is None:
            return _dense_head(f, *self._vanilla_head), np.zeros(len(f), np.intp), np.full((len(f), 2), math.nan)
        cluster, log_density, posterior = self.router.routed_fit(self.router.log_posterior(f))
        return _routed_heads(f, cluster, self._heads), cluster, np.stack([log_density, posterior], 1)

    def predict_crops(self, crops: np.ndarray, return_signals: bool = False):
        """Box-normalised points ``N x 5 x 2`` (float64) for uint8 crops.

        With ``return_signals`` a dict of the network's quality signals comes
        second: ``mirror_gap`` (``N x 5 x 2``, the direct minus the shifted
        un-mirrored prediction, box units; NaN without mirroring),
        ``gmm_log_likelihood`` and ``gmm_posterior`` (``N``, of the direct crop's
        routed component; NaN without a router), all float64. Routing and the
        heads see up to :attr:`HEAD_CHUNK` faces at a time.
        """
        crops = self._check_crops(crops)
        outs, gaps, fits = [], [], []
        for s in range(0, len(crops), self.HEAD_CHUNK):
            chunk = crops[s : s + self.HEAD_CHUNK]
            n = len(chunk)
            if self.mirror:
                both, _, fit = self._forward(np.concatenate([chunk, chunk[:, :, ::-1]]))
                direct = both[:n].reshape(n, NUM_POINTS, 2)
                flipped = mirror_coordinates(both[n:].reshape(n, NUM_POINTS, 2))
                flipped[..., 0] += np.float32(self.mirror_shift)
                outs.append(0.5 * (direct + flipped))
                gaps.append(direct - flipped)
                fits.append(fit[:n])
            else:
                out, _, fit = self._forward(chunk)
                outs.append(out.reshape(n, NUM_POINTS, 2))
                gaps.append(np.full((n, NUM_POINTS, 2), math.nan))
                fits.append(fit)
        points = np.concatenate(outs).astype(np.float64) if outs else np.zeros((0, NUM_POINTS, 2))
        if not return_signals:
            return points
        fit = np.concatenate(fits).astype(np.float64) if fits else np.zeros((0, 2))
        signals = {
            "mirror_gap": np.concatenate(gaps).astype(np.float64) if gaps else np.zeros((0, NUM_POINTS, 2)),
            "gmm_log_likelihood": fit[:, 0],
            "gmm_posterior": fit[:, 1],
        }
        return points, signals

    def first_pass_crops(self, crops: np.ndarray) -> np.ndarray:
        """Box-normalised points from the vanilla head alone, no mirror (re-boxing's first pass)."""
        out = _dense_head(self.features(crops), *self._vanilla_head)
        return out.reshape(-1, NUM_POINTS, 2).astype(np.float64)

    def predict_faces(
        self,
        images: Sequence[np.ndarray] | np.ndarray,
        owner: np.ndarray,
        boxes: np.ndarray,
        return_quality: bool = False,
    ):
        """Points ``N x 5 x 2`` in image pixels for faces ``boxes[i]`` of ``images[owner[i]]``.

        All faces go through the network together; with :attr:`refine`, twice.
        With ``return_quality``, ``(points, quality)``: ``quality`` maps each
        name of :data:`facealign.quality.QUALITY_KEYS` to an ``N`` array (the
        signals, ``expected_error`` and ``p_fail``; see :meth:`assess`).
        """
        owner = np.asarray(owner, np.intp).reshape(-1)
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        if len(owner) != len(boxes):
            raise ValueError(f"{len(owner)} owners for {len(boxes)} boxes")
        if len(boxes) == 0:
            empty = np.zeros((0, NUM_POINTS, 2))
            return (empty, self.assess(empty_signals())) if return_quality else empty
        crops = crop_faces(images, boxes, owner, self.input_size)
        given, first = boxes, None
        if self.refine and self.box_model is not None:  # refine implies a box model (see __init__)
            first = from_box_coordinates(self.first_pass_crops(crops), boxes)
            boxes = self.box_model.rebox(first, boxes)
            crops = crop_faces(images, boxes, owner, self.input_size)
        if not return_quality:
            return from_box_coordinates(self.predict_crops(crops), boxes)
        coords, network = self.predict_crops(crops, return_signals=True)
        points = from_box_coordinates(coords, boxes)
        return points, self.assess(face_signals(points, given, boxes, first, network))

    def assess(self, signals: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``signals`` plus ``expected_error`` (% IOD) and ``p_fail`` from :attr:`quality_model`.

        Both are NaN where the weights carry no quality model or a signal the
        model needs is missing (e.g. mirroring or re-boxing turned off).
        """
        if self.quality_model is None:
            n = len(next(iter(signals.values())))
            return {**signals, "expected_error": np.full(n, np.nan), "p_fail": np.full(n, np.nan)}
        return {**signals, **self.quality_model.predict(signals)}

    def predict(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Points ``N x 5 x 2`` in pixels of ``image`` for the face ``boxes`` (``N x 4``)."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        return self.predict_faces([image], np.zeros(len(boxes), np.intp), boxes)

    def predict_many(self, images: list[np.ndarray], boxes: list[np.ndarray], return_quality: bool = False):
        """:meth:`predict` for many images with one batched network pass.

        With ``return_quality``, ``(points, qualities)``: one dict per image as
        :meth:`predict_faces` gives.
        """
        if len(images) != len(boxes):
            raise ValueError("need one box array per image")
        boxes = [np.asarray(b, np.float64).reshape(-1, 4) for b in boxes]
        counts = [len(b) for b in boxes]
        owner = np.repeat(np.arange(len(images)), counts)
        flat = np.concatenate(boxes) if boxes else np.zeros((0, 4))
        if return_quality:
            points, quality = self.predict_faces(images, owner, flat, return_quality=True)
            cuts = np.cumsum(counts)[:-1]
            return (np.split(points, cuts), split_quality(quality, cuts)) if boxes else ([], [])
        points = self.predict_faces(images, owner, flat)
        return np.split(points, np.cumsum(counts)[:-1]) if boxes else []

    def landmarks(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[Landmarks]:
        """One :class:`~facealign.landmarks.Landmarks` (points and quality figures) per image, for
        its face ``boxes`` (``N x 4`` each), all faces in one batched pass: the entry point of
        :class:`facealign.pipeline.Pipeline` (:class:`~facealign.landmarks.LandmarkPredictor`).

        The other ``predict*`` methods are its steps: :meth:`predict_faces` (faces
        of many images, flat), :meth:`predict_crops` (crops cut already).
        """
        points, quality = self.predict_many(list(images), list(boxes), return_quality=True)
        return [Landmarks(p, q) for p, q in zip(points, quality)]

    def __repr__(self) -> str:
        return (
            f"LandmarkEngine(engine={self.engine!r}, clusters={self.num_clusters}, "
            f"mirror={self.mirror}, refine={self.refine})"
        )
