"""Landmark engines: the vanilla CNN and the Tweaked CNN, batched, with shipped weights.

An engine turns face boxes into five points. It crops every box to the
``40 x 40`` network input (:mod:`facealign.cropping`), normalises the crops by the
training mean and std images, and runs the network on the whole batch at once.

* ``vanilla``: the paper's CNN (section 2.1).
* ``tcnn``: the vanilla convolutional layers, then a Gaussian-mixture router on
  the FC5 input picks one of K tweaked FC5+FC6 heads per face (section 3.1). By
  default the prediction is averaged with the one on the mirrored crop.

Given face boxes (:meth:`LandmarkEngine.predict`, :meth:`~LandmarkEngine.predict_many`),
an engine whose weights carry a box model re-boxes by default
(:mod:`facealign.reboxing`): a quick first pass (vanilla head, no mirror)
predicts the points, the box those points imply is cropped, and the engine's
full pass runs on that crop.

Weights are plain ``torch.save`` dictionaries of tensors and numbers, loaded with
``weights_only=True``; the ones we trained ship in ``facealign/weights``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .constants import DEFAULT_ENGINE, ENGINES, INPUT_SIZE, MIRROR_PERMUTATION, NUM_POINTS, shipped_weights
from .cropping import crop_faces, from_box_coordinates
from .model import TweakedHeads, VanillaCNN
from .quality import QualityModel, empty_signals, face_signals, split_quality
from .reboxing import BoxFromLandmarks

WEIGHTS_FORMAT_VERSION = 1


def load_weights(path: "str | Path") -> dict[str, Any]:
    """Load a weights dictionary safely (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "vanilla" not in state or "mean" not in state:
        raise ValueError(f"{path} is not a facealign weights file")
    if state.get("format", 0) > WEIGHTS_FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer facealign (format {state['format']})")
    return state


class GaussianRouter(nn.Module):
    """Most probable component of a diagonal-covariance Gaussian mixture (Eq. 2).

    The log posterior, up to a per-face constant, is
    ``log w_k - sum_d log sigma_kd - 0.5 * sum_d (f_d - mu_kd)^2 / sigma_kd^2``;
    expanding the square gives two matrix products for a whole batch.
    """

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, variances: torch.Tensor) -> None:
        super().__init__()
        prec = 1.0 / variances
        # log w_k + D/2 log(2 pi): what separates the log posterior above from the
        # component's log density (see routed_fit).
        self.register_buffer("density_offset", torch.log(weights) + 0.5 * means.shape[1] * math.log(2 * math.pi))
        self.register_buffer("prec", prec)  # K x D
        self.register_buffer("mean_prec", means * prec)  # K x D
        const = torch.log(weights) - 0.5 * torch.log(variances).sum(1) - 0.5 * (means**2 * prec).sum(1)
        self.register_buffer("const", const)  # K

    def log_posterior(self, f: torch.Tensor) -> torch.Tensor:
        """Unnormalised log posteriors, ``N x K``."""
        return f @ self.mean_prec.t() - 0.5 * (f * f) @ self.prec.t() + self.const

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.log_posterior(f).argmax(1)

    def routed_fit(self, log_posterior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Routed component, its log density and its posterior, from :meth:`log_posterior`.

        Returns ``cluster`` (``N``, the argmax, as :meth:`forward`),
        ``log N(f | mu_k, Sigma_k)`` of that component (nats, normalised density)
        and its posterior probability ``p(k | f)``, each ``N``.
        """
        best, cluster = log_posterior.max(1)
        log_density = best - self.density_offset[cluster]
        posterior = torch.exp(best - torch.logsumexp(log_posterior, 1))
        return cluster, log_density, posterior


def mirror_coordinates(coords: torch.Tensor) -> torch.Tensor:
    """Map box-normalised points predicted on a mirrored crop back to the original.

    ``coords`` is ``N x 5 x 2``; x becomes ``1 - x`` and left/right points swap.
    """
    out = coords[:, list(MIRROR_PERMUTATION)].clone()
    out[..., 0] = 1.0 - out[..., 0]
    return out


def estimate_mirror_shift(direct: np.ndarray, flipped: np.ndarray) -> float:
    """Mean x difference (box units) between direct and un-mirrored predictions.

    A network trained on labels whose x convention is not exactly mirror
    symmetric (a fraction of a pixel suffices) predicts, on a mirrored crop, points
    that are offset after un-mirroring. Averaging the two then biases x by half
    that offset. The shift is measured on validation faces when the weights are
    made, stored in the weights, and added back before averaging. On the MTFL
    validation split it is about 0.015 box widths.
    """
    return float(np.mean(direct[..., 0] - flipped[..., 0]))


class LandmarkEngine:
    """Five-point landmarks for face boxes.

    Parameters
    ----------
    engine : {"tcnn", "vanilla"}
        Which network to run.
    weights : path, optional
        A weights file; defaults to the shipped one for ``engine``.
    mirror : bool, optional
        Average with the prediction on the mirrored crop. Defaults to True for
        ``tcnn`` (the paper's test-time procedure) and False for ``vanilla``.
    batch_size : int
        Faces per pass through the convolutional layers.
    refine : bool, optional
        Re-box before the reported pass (see the module docstring). Defaults to
        True when the weights carry a box model (``box_model``); True for weights
        without one is an error.
    """

    #: Faces routed and sent through the heads together (bounds memory).
    HEAD_CHUNK = 4096

    def __init__(
        self,
        engine: str = DEFAULT_ENGINE,
        weights: "str | Path | None" = None,
        mirror: bool | None = None,
        batch_size: int = 64,
        refine: bool | None = None,
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; choose one of {list(ENGINES)}")
        self.engine = engine
        self.weights_path = Path(weights) if weights is not None else shipped_weights(engine)
        state = load_weights(self.weights_path)
        self.meta: dict[str, Any] = dict(state.get("meta", {}))
        self.model = VanillaCNN(int(state.get("fc5_dim", 100)))
        self.model.load_state_dict(state["vanilla"])
        # Channels-last (NHWC) weights and inputs: about 2.3x faster convolutions
        # on our CPUs for these small layers; same values (README, Speed).
        self.model.eval().to(memory_format=torch.channels_last)
        self.mean = state["mean"].float()  # 3 x 40 x 40, RGB in [0, 255]
        self.std = state["std"].float()
        self.heads: TweakedHeads | None = None
        self.router: GaussianRouter | None = None
        if engine == "tcnn":
            if "heads" not in state:
                raise ValueError(f"{self.weights_path} holds no TCNN heads; use engine='vanilla'")
            gmm = state["gmm"]
            self.heads = TweakedHeads(gmm["means"].shape[0], int(state.get("fc5_dim", 100)))
            self.heads.load_state_dict(state["heads"])
            self.heads.eval()
            self.router = GaussianRouter(gmm["weights"], gmm["means"], gmm["variances"])
        self.mirror = (engine == "tcnn") if mirror is None else bool(mirror)
        #: x shift (box units) added to the un-mirrored prediction of the mirrored
        #: crop; see :func:`estimate_mirror_shift`.
        self.mirror_shift = float(state.get("mirror_shift", 0.0))
        self.batch_size = int(batch_size)
        self.box_model: BoxFromLandmarks | None = (
            BoxFromLandmarks.from_tensor(state["box_model"]) if "box_model" in state else None
        )
        if refine and self.box_model is None:
            raise ValueError(f"{self.weights_path} holds no box model, so it cannot re-box; use refine=False")
        self.refine = (self.box_model is not None) if refine is None else bool(refine)
        #: Per-face quality model (:mod:`facealign.quality`), when the weights carry one.
        self.quality_model: QualityModel | None = (
            QualityModel.from_state(state["quality"]) if "quality" in state else None
        )

    @property
    def num_clusters(self) -> int:
        return 1 if self.heads is None else self.heads.num_clusters

    def normalize(self, crops: np.ndarray) -> torch.Tensor:
        """uint8 ``N x 40 x 40 x 3`` RGB crops to normalised ``N x 3 x 40 x 40`` floats."""
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"expected N x {INPUT_SIZE} x {INPUT_SIZE} x 3 crops, got {crops.shape}")
        x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float()
        return x.sub_(self.mean).div_(self.std).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Convolutions in small chunks (they stay in cache), the router and the
        # heads once for the whole chunk (one matrix product per cluster present).
        # The third output is N x 2: the routed component's log density and
        # posterior (NaN without a router), for the quality signals.
        x = x.contiguous(memory_format=torch.channels_last)
        f = torch.cat([self.model.features(x[s : s + self.batch_size]) for s in range(0, len(x), self.batch_size)])
        if self.heads is None:
            return self.model.head(f), torch.zeros(len(f), dtype=torch.long), torch.full((len(f), 2), math.nan)
        cluster, log_density, posterior = self.router.routed_fit(self.router.log_posterior(f))
        return self.heads(f, cluster), cluster, torch.stack([log_density, posterior], 1)

    @torch.inference_mode()
    def predict_normalized(
        self,
        x: torch.Tensor,
        return_clusters: bool = False,
        mirrored: torch.Tensor | None = None,
        return_signals: bool = False,
    ):
        """Box-normalised points ``N x 5 x 2`` for normalised crops ``x``.

        ``mirrored``, optional, is the normalised mirror image of ``x`` (computed
        from ``x`` when needed and not given). The convolutions see ``batch_size``
        faces at a time (64 was the fastest on our 2-core machines: see
        ``bench/speed.py``); routing and the heads see up to :attr:`HEAD_CHUNK`
        faces at a time.

        With ``return_signals`` a dict of the network's quality signals comes
        last in the returned tuple: ``mirror_gap`` (``N x 5 x 2``, the direct
        minus the shifted un-mirrored prediction, box units; NaN without
        mirroring), ``gmm_log_likelihood`` and ``gmm_posterior`` (``N``, of the
        direct crop's routed component; NaN without a router), all float64 numpy.
        """
        if mirrored is not None and mirrored.shape != x.shape:
            raise ValueError(f"mirrored {tuple(mirrored.shape)} does not match x {tuple(x.shape)}")
        outs, clusters, gaps, fits = [], [], [], []
        for s in range(0, len(x), self.HEAD_CHUNK):
            xb = x[s : s + self.HEAD_CHUNK]
            if self.mirror:
                n = len(xb)
                xm = self._mirror_input(xb) if mirrored is None else mirrored[s : s + self.HEAD_CHUNK]
                both, cl, fit = self._forward(torch.cat([xb, xm]))
                direct = both[:n].view(n, NUM_POINTS, 2)
                flipped = mirror_coordinates(both[n:].view(n, NUM_POINTS, 2))
                flipped[..., 0] += self.mirror_shift
                outs.append(0.5 * (direct + flipped))
                clusters.append(cl[:n])
                gaps.append(direct - flipped)
                fits.append(fit[:n])
            else:
                out, cl, fit = self._forward(xb)
                outs.append(out.view(-1, NUM_POINTS, 2))
                clusters.append(cl)
                gaps.append(torch.full((len(xb), NUM_POINTS, 2), math.nan))
                fits.append(fit)
        pts = torch.cat(outs) if outs else torch.zeros(0, NUM_POINTS, 2)
        cl = torch.cat(clusters) if clusters else torch.zeros(0, dtype=torch.long)
        if not return_signals:
            return (pts, cl) if return_clusters else pts
        fit = torch.cat(fits).double().numpy() if fits else np.zeros((0, 2))
        signals = {
            "mirror_gap": torch.cat(gaps).double().numpy() if gaps else np.zeros((0, NUM_POINTS, 2)),
            "gmm_log_likelihood": fit[:, 0],
            "gmm_posterior": fit[:, 1],
        }
        return (pts, cl, signals) if return_clusters else (pts, signals)

    def _mirror_input(self, x: torch.Tensor) -> torch.Tensor:
        # The normalised mirror image: mirror the raw crop, then normalise (the
        # mean image is not symmetric): (flip(raw) - mean) / std, with
        # raw = x * std + mean.
        return (x * self.std + self.mean).flip(-1).sub_(self.mean).div_(self.std)

    def predict_pair(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Box-normalised points on the crops and, un-mirrored, on their mirror images.

        Neither is averaged nor shifted; used to calibrate :attr:`mirror_shift`.
        """
        x = self.normalize(crops)
        mirror, self.mirror = self.mirror, False
        try:
            direct = self.predict_normalized(x)
            flipped = mirror_coordinates(self.predict_normalized(self._mirror_input(x)))
        finally:
            self.mirror = mirror
        return direct.double().numpy(), flipped.double().numpy()

    def predict_crops(self, crops: np.ndarray, return_signals: bool = False):
        """Box-normalised points ``N x 5 x 2`` (float64) for uint8 crops.

        With ``return_signals``, ``(points, signals)``: see :meth:`predict_normalized`.
        """
        # Mirroring the uint8 crops before normalising is cheaper than un-normalising.
        mirrored = self.normalize(np.asarray(crops)[:, :, ::-1]) if self.mirror else None
        if return_signals:
            pts, signals = self.predict_normalized(self.normalize(crops), mirrored=mirrored, return_signals=True)
            return pts.double().numpy(), signals
        return self.predict_normalized(self.normalize(crops), mirrored=mirrored).double().numpy()

    @torch.inference_mode()
    def first_pass_crops(self, crops: np.ndarray) -> np.ndarray:
        """Box-normalised points from the vanilla head alone, no mirror (re-boxing's first pass)."""
        x = self.normalize(crops)
        out = [self.model(x[s : s + self.batch_size]) for s in range(0, len(x), self.batch_size)]
        return torch.cat(out).view(-1, NUM_POINTS, 2).double().numpy()

    def predict_faces(
        self, images: list[np.ndarray], owner: np.ndarray, boxes: np.ndarray, return_quality: bool = False
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
        crops = crop_faces(images, boxes, owner)
        given, first = boxes, None
        if self.refine:
            first = from_box_coordinates(self.first_pass_crops(crops), boxes)
            boxes = self.box_model.rebox(first, boxes)
            crops = crop_faces(images, boxes, owner)
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

    def __repr__(self) -> str:
        return (
            f"LandmarkEngine(engine={self.engine!r}, clusters={self.num_clusters}, "
            f"mirror={self.mirror}, refine={self.refine})"
        )
