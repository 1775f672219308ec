"""Fit and evaluate the per-face quality model (:mod:`facealign.quality`) on MTFL.

* :func:`collect_quality` runs an engine on the detected faces of the MTFL
  validation split or of the AFLW test set and returns each face's quality
  signals, detector score and true error.
* :func:`fit_engine_quality` (``facealign fit-quality``) fits the model on the
  validation split only and stores it in a weights file under ``"quality"``;
  the other keys are kept as they are.
* :func:`quality_report` and :func:`plot_quality_report` (``facealign
  evaluate-quality``) measure it: ROC AUC of ``p_fail`` for failures, Spearman
  correlation of ``expected_error`` with the true error, calibration tables
  and the error-reject curve.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..constants import TRAINING_DETECTOR
from ..quality import QualityModel, transform_signals
from .evaluation import FAILURE_THRESHOLD, evaluate_engines

#: Signals of the shipped models, per engine: intrinsic to the landmark engine and
#: not tied to the detector's box convention (no detector score, box size or
#: re-boxing shift; see README, "Per-face quality"). The vanilla engine runs
#: without mirroring and has no mixture by default.
DEFAULT_SIGNALS: dict[str, tuple[str, ...]] = {
    "tcnn": ("mirror_disagreement", "pass_disagreement", "gmm_log_likelihood", "gmm_posterior", "nose_offset"),
    "vanilla": ("pass_disagreement", "nose_offset"),
    "compact": ("mirror_disagreement", "pass_disagreement", "nose_offset"),
}
#: Share of faces rejected at each point of the error-reject curve.
REJECT_FRACTIONS: tuple[float, ...] = tuple(np.round(np.arange(0, 0.51, 0.05), 2))
#: Edges of the ``p_fail`` calibration bins.
P_FAIL_BINS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
#: Number of equal-count bins of the ``expected_error`` calibration table.
ERROR_BINS = 10
#: The split names :func:`collect_quality` knows.
SPLITS = ("validation", "test")


@dataclass
class QualitySample:
    """Faces of one MTFL split with their quality figures and true errors.

    ``quality`` maps each key of :data:`facealign.quality.QUALITY_KEYS`, and
    ``detector_score``, to an ``N`` array; ``errors`` are NMEs as fractions;
    ``misses`` counts the faces the detector did not find (not in the arrays).
    """

    split: str
    quality: dict[str, np.ndarray]
    errors: np.ndarray
    misses: int


def collect_quality(
    engine,
    mtfl_root: str | Path,
    split: str,
    cache_dir: str | Path,
    detector: str = TRAINING_DETECTOR,
) -> QualitySample:
    """Run ``engine`` on the detected faces of ``split`` (``"validation"`` or ``"test"``, AFLW).

    The faces and boxes are those of :func:`facealign.research.evaluation.evaluate_engines`.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    result = evaluate_engines({"engine": engine}, mtfl_root, cache_dir, detector, split, with_quality=True)
    res = result["engine"]
    return QualitySample(split, res["quality"], np.asarray(res["errors"]), res["misses"])


def fit_quality_model(
    signals: dict[str, np.ndarray], errors: np.ndarray, names: tuple[str, ...], fail_threshold: float | None = None
) -> QualityModel:
    """Fit a :class:`QualityModel` on faces with known ``errors`` (NME as fractions).

    ``log(100 * error)`` is regressed on the standardised features by least
    squares; failures (``error > fail_threshold``, default
    :data:`facealign.constants.FAILURE_THRESHOLD`) by L2-regularised logistic
    regression (scikit-learn, ``C = 1``; needed for fitting only).
    """
    from sklearn.linear_model import LogisticRegression

    threshold = FAILURE_THRESHOLD if fail_threshold is None else fail_threshold
    errors = np.asarray(errors, np.float64).reshape(-1)
    raw = transform_signals(signals, tuple(names))
    if len(raw) != len(errors):
        raise ValueError(f"{len(raw)} faces of signals but {len(errors)} errors")
    if not np.all(np.isfinite(raw)):
        raise ValueError("signals must be finite to fit (is mirroring or re-boxing off?)")
    if np.any(errors <= 0):
        raise ValueError("errors must be positive")
    failed = errors > threshold
    if failed.all() or not failed.any():
        raise ValueError("need both failures and successes to fit p_fail")
    center, scale = raw.mean(0), raw.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    z = (raw - center) / scale
    design = np.concatenate([np.ones((len(z), 1)), z], 1)
    target = np.log(100 * errors)
    error_coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    smearing = float(np.mean(np.exp(target - design @ error_coef)))
    logistic = LogisticRegression(C=1.0, max_iter=1000).fit(z, failed)
    fail_coef = np.concatenate([logistic.intercept_, logistic.coef_[0]])
    return QualityModel(tuple(names), center, scale, z.min(0), z.max(0), error_coef, smearing, fail_coef)


def quality_state(model: QualityModel) -> dict:
    """A dict of tensors, strings and numbers for a training weights file (``weights_only`` loadable);
    :meth:`facealign.quality.QualityModel.from_state` reads it back."""
    import torch

    state: dict = {"signals": list(model.signals), "error_smearing": model.error_smearing}
    for attr in ("center", "scale", "low", "high", "error_coef", "fail_coef"):
        state[attr] = torch.from_numpy(getattr(model, attr).copy())
    return state


def fit_engine_quality(
    weights: str | Path, out: str | Path, engine_name: str, sample: QualitySample, signals: tuple[str, ...]
) -> QualityModel:
    """Fit the quality model on ``sample`` (the validation split) and write ``weights`` + model to ``out``."""
    from .training_weights import load_weights, save_weights

    if sample.split != "validation":
        raise ValueError("the quality model is fitted on the validation split only")
    model = fit_quality_model(sample.quality, sample.errors, signals)
    state = load_weights(weights)
    state["quality"] = quality_state(model)
    state.setdefault("meta", {})["quality"] = f"fitted on {len(sample.errors)} validation faces ({engine_name})"
    save_weights(state, out)
    return model


def error_reject_curve(expected_error: np.ndarray, errors: np.ndarray, fractions=REJECT_FRACTIONS) -> list[dict]:
    """Mean NME (%) of the faces kept when the share ``fraction`` with the highest ``expected_error`` is rejected."""
    order = np.argsort(-np.asarray(expected_error), kind="stable")
    rows = []
    for fraction in fractions:
        kept = order[int(round(fraction * len(order))) :]
        rows.append({"rejected": float(fraction), "kept": int(len(kept)), "nme": float(100 * errors[kept].mean())})
    return rows


def _binned(predicted: np.ndarray, observed: np.ndarray, edges: np.ndarray) -> list[dict]:
    """Mean predicted and mean observed value per bin ``[edges[i], edges[i+1])`` (last bin closed)."""
    which = np.clip(np.searchsorted(edges, predicted, side="right") - 1, 0, len(edges) - 2)
    rows = []
    for b in range(len(edges) - 1):
        inside = which == b
        if inside.any():
            rows.append(
                {
                    "low": float(edges[b]),
                    "high": float(edges[b + 1]),
                    "n": int(inside.sum()),
                    "predicted": float(predicted[inside].mean()),
                    "observed": float(observed[inside].mean()),
                }
            )
    return rows


def quality_report(sample: QualitySample) -> dict:
    """AUC, Spearman, calibration and error-reject figures of a sample's quality predictions."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    expected, p_fail = sample.quality["expected_error"], sample.quality["p_fail"]
    if not (np.all(np.isfinite(expected)) and np.all(np.isfinite(p_fail))):
        raise ValueError("the engine gave no quality predictions (no quality model, or mirroring/re-boxing off)")
    errors = sample.errors
    failed = errors > FAILURE_THRESHOLD
    curve = error_reject_curve(expected, errors)
    at10 = next(r for r in curve if r["rejected"] == 0.1)
    error_edges = np.quantile(expected, np.linspace(0, 1, ERROR_BINS + 1))
    return {
        "split": sample.split,
        "faces": int(len(errors)),
        "detector_misses": int(sample.misses),
        "failure_rate": float(failed.mean()),
        "nme": float(100 * errors.mean()),
        "auc_p_fail": float(roc_auc_score(failed, p_fail)) if 0 < failed.sum() < len(failed) else float("nan"),
        "spearman_expected_error": float(spearmanr(expected, errors).statistic),
        "nme_reduction_rejecting_10pct": float(1 - at10["nme"] / curve[0]["nme"]),
        "calibration_p_fail": _binned(p_fail, failed.astype(float), np.asarray(P_FAIL_BINS)),
        "calibration_expected_error": _binned(expected, 100 * errors, error_edges),
        "error_reject": curve,
        "oracle_reject": error_reject_curve(errors, errors),
    }


def plot_quality_report(reports: dict[str, dict], path: str | Path) -> None:
    """One PNG: ``p_fail`` calibration, ``expected_error`` calibration and error-reject curves per report."""
    from .figures import subplots

    fig, (cal, exp, rej) = subplots(1, 3, figsize=(13, 4.2), dpi=110)
    for label, rep in reports.items():
        rows = rep["calibration_p_fail"]
        cal.plot(
            [r["predicted"] for r in rows],
            [r["observed"] for r in rows],
            "o-",
            label=f"{label} (AUC {rep['auc_p_fail']:.3f})",
        )
        rows = rep["calibration_expected_error"]
        exp.plot(
            [r["predicted"] for r in rows],
            [r["observed"] for r in rows],
            "o-",
            label=f"{label} (Spearman {rep['spearman_expected_error']:.3f})",
        )
        line = rej.plot(
            [100 * r["rejected"] for r in rep["error_reject"]],
            [r["nme"] for r in rep["error_reject"]],
            "o-",
            label=f"{label}, by expected_error",
        )[0]
        rej.plot(
            [100 * r["rejected"] for r in rep["oracle_reject"]],
            [r["nme"] for r in rep["oracle_reject"]],
            ":",
            color=line.get_color(),
            label=f"{label}, oracle (true error)",
        )
    cal.plot([0, 1], [0, 1], color="grey", lw=0.8)
    cal.set(
        xlabel="predicted p_fail (bin mean)",
        ylabel="observed failure rate (NME > 10%)",
        title="p_fail calibration",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    top = max(max(r["observed"] for r in rep["calibration_expected_error"]) for rep in reports.values())
    exp.plot([0, top], [0, top], color="grey", lw=0.8)
    exp.set(
        xlabel="expected_error, % IOD (decile mean)", ylabel="observed NME, % IOD", title="expected_error calibration"
    )
    rej.set(
        xlabel="faces rejected, highest expected_error first (%)",
        ylabel="mean NME of kept faces (% IOD)",
        title="Error-reject curve",
    )
    for ax in (cal, exp, rej):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
