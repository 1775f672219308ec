"""Per-face quality: how far off a face's five points probably are.

The engines compute, for every face and in the same batched pass that gives
its points, signals of how much to trust them (:func:`face_signals`):

* ``mirror_disagreement``: mean distance between the prediction on the crop
  and the un-mirrored prediction on its mirror image (after the calibrated
  mirror shift), over the predicted inter-ocular distance (IOD). NaN without
  mirroring.
* ``pass_disagreement``: mean distance between re-boxing's first-pass points
  and the reported points, over the predicted IOD. NaN without re-boxing.
* ``rebox_shift``: distance between the centres of the given box and of the
  re-boxed box, over the given box's size ``sqrt(w h)``; ``rebox_scale``:
  ``|log|`` of the ratio of their sizes. NaN without re-boxing.
* ``gmm_log_likelihood``: log density (nats) of the face's FC5 input under its
  routed Gaussian-mixture component; ``gmm_posterior``: that component's
  posterior probability. NaN for the vanilla engine (no mixture).
* ``nose_offset``: distance of the predicted nose tip from the eyes' midpoint
  along the eye axis, over the predicted IOD: about 0 for a frontal face,
  large for a turned head (profiles are where the landmarks fail most).
* ``box_size``: the given box's size ``sqrt(w h)`` in pixels.

A :class:`QualityModel`, fitted on the MTFL validation split
(:func:`facealign.research.quality_fit.fit_quality_model`) and shipped in the weights file under the key
``"quality"``, turns the signals it was fitted with into

* ``expected_error``: the expected NME of the face, % of the inter-ocular
  distance (a linear model of ``log NME`` with Duan's smearing correction);
* ``p_fail``: the probability that the NME exceeds
  :data:`facealign.constants.FAILURE_THRESHOLD` (logistic regression).

Each signal is transformed (:data:`SIGNAL_FLOORS`: ``log(floor + x)`` for the
distances and sizes, unchanged for the mixture's figures), standardised, and
clipped to the range seen when fitting, so that an extreme face gets the
prediction of the most extreme validation face rather than an extrapolation.
Run time needs numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .constants import LEFT_EYE, NOSE, RIGHT_EYE

#: Every per-face quality signal, in a fixed order (see the module docstring).
SIGNAL_NAMES: tuple[str, ...] = (
    "mirror_disagreement",
    "pass_disagreement",
    "rebox_shift",
    "rebox_scale",
    "gmm_log_likelihood",
    "gmm_posterior",
    "nose_offset",
    "box_size",
)
#: What the model predicts from the signals.
PREDICTION_NAMES: tuple[str, ...] = ("expected_error", "p_fail")
#: Keys of an engine's per-face quality dict (:meth:`LandmarkEngine.assess`).
QUALITY_KEYS: tuple[str, ...] = SIGNAL_NAMES + PREDICTION_NAMES
#: ``floor`` of the ``log(floor + x)`` transform per signal; None: used as is.
#: Floors are about the smallest value that matters: 1% IOD, 0.5% of a box,
#: one pixel.
SIGNAL_FLOORS: dict[str, float | None] = {
    "mirror_disagreement": 0.01,
    "pass_disagreement": 0.01,
    "rebox_shift": 0.005,
    "rebox_scale": 0.005,
    "gmm_log_likelihood": None,
    "gmm_posterior": None,
    "nose_offset": 0.01,
    "detector_score": None,
    "box_size": 1.0,
}


def _box_sizes(boxes: np.ndarray) -> np.ndarray:
    """``sqrt(w h)`` of ``N x 4`` boxes."""
    return np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))


def _box_centres(boxes: np.ndarray) -> np.ndarray:
    return 0.5 * (boxes[:, :2] + boxes[:, 2:])


def empty_signals() -> dict[str, np.ndarray]:
    """The signals of no face."""
    return {name: np.zeros(0) for name in SIGNAL_NAMES}


def face_signals(
    points: np.ndarray,
    given_boxes: np.ndarray,
    boxes: np.ndarray,
    first_points: np.ndarray | None,
    network: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """The quality signals of ``N`` faces (see the module docstring), each an ``N`` array.

    Parameters
    ----------
    points : ndarray (N, 5, 2)
        Reported points, pixels.
    given_boxes : ndarray (N, 4)
        The boxes the engine was given (detector boxes).
    boxes : ndarray (N, 4)
        The boxes of the reported pass (re-boxed, or ``given_boxes``).
    first_points : ndarray (N, 5, 2) or None
        Re-boxing's first-pass points, pixels; None without re-boxing.
    network : dict
        :meth:`LandmarkEngine.predict_crops`'s signals for the crops of ``boxes``.
    """
    points = np.asarray(points, np.float64)
    size = _box_sizes(given_boxes)
    # The predicted IOD, floored at 0.1% of the box so that a collapsed
    # prediction gives a large but finite ratio.
    eye_axis = points[:, RIGHT_EYE] - points[:, LEFT_EYE]
    iod = np.maximum(np.linalg.norm(eye_axis, axis=1), 1e-3 * size)
    eye_middle = 0.5 * (points[:, RIGHT_EYE] + points[:, LEFT_EYE])
    wh = (boxes[:, 2:] - boxes[:, :2])[:, None, :]
    signals = {
        "mirror_disagreement": np.linalg.norm(network["mirror_gap"] * wh, axis=2).mean(1) / iod,
        "gmm_log_likelihood": np.asarray(network["gmm_log_likelihood"], np.float64),
        "gmm_posterior": np.asarray(network["gmm_posterior"], np.float64),
        "nose_offset": np.abs(((points[:, NOSE] - eye_middle) * eye_axis).sum(1)) / iod**2,
        "box_size": size,
    }
    if first_points is None:
        nan = np.full(len(points), np.nan)
        signals.update(pass_disagreement=nan, rebox_shift=nan, rebox_scale=nan.copy())
    else:
        signals["pass_disagreement"] = np.linalg.norm(first_points - points, axis=2).mean(1) / iod
        signals["rebox_shift"] = np.linalg.norm(_box_centres(boxes) - _box_centres(given_boxes), axis=1) / size
        signals["rebox_scale"] = np.abs(np.log(_box_sizes(boxes) / size))
    return {name: signals[name] for name in SIGNAL_NAMES}


def split_quality(quality: dict[str, np.ndarray], cuts: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Split per-face quality arrays at ``cuts`` (as ``np.split``) into one dict per part."""
    parts = {name: np.split(values, cuts) for name, values in quality.items()}
    return [{name: parts[name][i] for name in quality} for i in range(len(cuts) + 1)]


def quality_json(expected_error: float, p_fail: float) -> dict:
    """``expected_error`` (% IOD, 2 decimals) and ``p_fail`` (4 decimals) for a JSON record; None when NaN."""
    return {
        "expected_error": round(float(expected_error), 2) if np.isfinite(expected_error) else None,
        "p_fail": round(float(p_fail), 4) if np.isfinite(p_fail) else None,
    }


def over_limits(
    expected_error: np.ndarray, p_fail: np.ndarray, max_expected_error: float | None, max_p_fail: float | None
) -> np.ndarray:
    """Boolean mask of the faces whose ``expected_error`` or ``p_fail`` is over its limit (None: no limit).

    A NaN figure (quality unknown) counts as over a limit that is set.
    """
    over = np.zeros(np.shape(expected_error), bool)
    for values, limit in ((expected_error, max_expected_error), (p_fail, max_p_fail)):
        if limit is not None:
            over |= ~(np.asarray(values, np.float64) <= limit)
    return over


def transform_signals(signals: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    """``N x F`` features: the signals ``names``, transformed by :data:`SIGNAL_FLOORS`."""
    missing = [n for n in names if n not in signals]
    if missing:
        raise KeyError(f"quality signals missing: {missing}")
    columns = []
    for name in names:
        values = np.asarray(signals[name], np.float64)
        floor = SIGNAL_FLOORS[name]
        columns.append(values if floor is None else np.log(floor + values))
    n = len(np.asarray(signals[names[0]])) if names else 0
    return np.stack(columns, 1) if columns else np.zeros((n, 0))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic


@dataclass(frozen=True)
class QualityModel:
    """Expected error and failure probability from quality signals (module docstring).

    Attributes
    ----------
    signals : tuple of str
        The signals used, in feature order (a subset of :data:`SIGNAL_FLOORS`).
    center, scale : ndarray (F,)
        Standardisation of the transformed signals.
    low, high : ndarray (F,)
        Range of the standardised features when fitting; features are clipped to it.
    error_coef : ndarray (F + 1,)
        Intercept, then slopes, of ``log(NME in %)``.
    error_smearing : float
        ``mean(exp(residual))`` of that fit: ``E[NME] = exp(prediction) * error_smearing``.
    fail_coef : ndarray (F + 1,)
        Intercept, then slopes, of the failure log-odds.
    """

    signals: tuple[str, ...]
    center: np.ndarray
    scale: np.ndarray
    low: np.ndarray
    high: np.ndarray
    error_coef: np.ndarray
    error_smearing: float
    fail_coef: np.ndarray

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.signals)
        unknown = [n for n in names if n not in SIGNAL_FLOORS]
        if unknown:
            raise ValueError(f"unknown quality signals {unknown}; known: {list(SIGNAL_FLOORS)}")
        object.__setattr__(self, "signals", names)
        f = len(names)
        for attr, size in (
            ("center", f),
            ("scale", f),
            ("low", f),
            ("high", f),
            ("error_coef", f + 1),
            ("fail_coef", f + 1),
        ):
            value = np.asarray(getattr(self, attr), np.float64).reshape(-1)
            if value.shape != (size,) or not np.all(np.isfinite(value)):
                raise ValueError(f"{attr} must be {size} finite numbers, got shape {value.shape}")
            object.__setattr__(self, attr, value)
        if np.any(self.scale <= 0):
            raise ValueError("scale must be positive")
        object.__setattr__(self, "error_smearing", float(self.error_smearing))

    def features(self, signals: dict[str, np.ndarray]) -> np.ndarray:
        """Standardised, clipped ``N x F`` features (NaN rows where a signal is NaN)."""
        z = (transform_signals(signals, self.signals) - self.center) / self.scale
        return np.clip(z, self.low, self.high)  # NaN stays NaN

    def predict(self, signals: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``{"expected_error": % IOD, "p_fail": probability}``, each an ``N`` array."""
        z = self.features(signals)
        design = np.concatenate([np.ones((len(z), 1)), z], 1)
        # row sums, not matrix-vector products: a face's figures do not depend on
        # the other faces of the batch (BLAS's kernel depends on the shape)
        return {
            "expected_error": np.exp((design * self.error_coef).sum(1)) * self.error_smearing,
            "p_fail": _sigmoid((design * self.fail_coef).sum(1)),
        }

    @classmethod
    def from_state(cls, state: dict) -> QualityModel:
        arrays = {
            attr: np.asarray(state[attr], np.float64)
            for attr in ("center", "scale", "low", "high", "error_coef", "fail_coef")
        }
        return cls(tuple(state["signals"]), error_smearing=float(state["error_smearing"]), **arrays)
