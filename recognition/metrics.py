"""Verification metrics: ROC, TAR at FAR, LFW 10-fold accuracy, LFW pairs reader.

Convention: a comparison is *accepted* when its score is ``>=`` the threshold;
higher scores mean "more likely the same person". ``genuine`` flags mark
same-subject comparisons.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve as sklearn_roc_curve

__all__ = [
    "RocCurve",
    "roc_curve",
    "tar_at_far",
    "FoldAccuracy",
    "verification_accuracy_10fold",
    "LfwPair",
    "lfw_image_path",
    "read_lfw_pairs",
]


def _scores_labels(scores: np.ndarray, genuine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    g = np.asarray(genuine)
    if s.ndim != 1 or g.shape != s.shape:
        raise ValueError(f"scores and genuine must be 1-D of equal length, got {s.shape} and {g.shape}")
    if g.dtype != bool:
        if not np.all(np.isin(g, (0, 1))):
            raise ValueError("genuine must be boolean (or 0/1)")
        g = g.astype(bool)
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
    if not g.any() or g.all():
        raise ValueError(
            f"need both genuine and impostor comparisons, got {int(g.sum())} genuine and {int((~g).sum())} impostor"
        )
    return s, g


@dataclass(frozen=True)
class RocCurve:
    """Operating points of a verifier.

    Attributes
    ----------
    far : numpy.ndarray
        False accept rate at each threshold (non-decreasing, from 0 to 1).
    tar : numpy.ndarray
        True accept rate at each threshold (non-decreasing, from 0 to 1).
    thresholds : numpy.ndarray
        Decreasing thresholds; the first is ``+inf`` (accept nothing), then
        every distinct score (accept scores ``>=`` it).
    """

    far: np.ndarray
    tar: np.ndarray
    thresholds: np.ndarray


def _check_weights(weights: np.ndarray | None, g: np.ndarray) -> np.ndarray:
    if weights is None:
        return np.ones(g.shape, np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != g.shape or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"weights must be {g.shape} finite and >= 0, got shape {w.shape}")
    if not w[g].sum() > 0 or not w[~g].sum() > 0:
        raise ValueError("weights leave no genuine or no impostor comparison")
    return w


def roc_curve(scores: np.ndarray, genuine: np.ndarray, weights: np.ndarray | None = None) -> RocCurve:
    """ROC of a verifier that accepts comparisons with ``score >= threshold``.

    :func:`sklearn.metrics.roc_curve` with ``drop_intermediate=False``, after
    checking the inputs.

    Parameters
    ----------
    scores : numpy.ndarray
        ``(M,)`` similarity scores.
    genuine : numpy.ndarray
        ``(M,)`` booleans, true for same-subject comparisons. Both classes must
        be present.
    weights : numpy.ndarray, optional
        ``(M,)`` non-negative multiplicities of the comparisons (e.g. from a
        bootstrap resample); TAR and FAR are then weighted fractions. Default:
        every comparison counts once. Comparisons of weight zero are left out
        (they make no operating point of their own).

    Returns
    -------
    RocCurve
        One operating point per distinct score plus the ``(0, 0)`` point at
        threshold ``+inf``; tied scores form a single operating point.
    """
    s, g = _scores_labels(scores, genuine)
    w = None if weights is None else _check_weights(weights, g)
    far, tar, thresholds = sklearn_roc_curve(g, s, sample_weight=w, drop_intermediate=False)
    return RocCurve(far=np.minimum(far, 1.0), tar=np.minimum(tar, 1.0), thresholds=thresholds)


def tar_at_far(
    scores: np.ndarray,
    genuine: np.ndarray,
    far: float | Sequence[float] | np.ndarray,
    weights: np.ndarray | None = None,
) -> float | np.ndarray:
    """True accept rate at a target false accept rate.

    Definition: let ``(FAR_i, TAR_i)`` be the ROC points of :func:`roc_curve`
    (thresholds decreasing, ``i = 0`` is ``(0, 0)``). Let ``i*`` be the
    largest operating point (lowest threshold) with ``FAR_i <= far``.

    * If ``FAR_{i*} == far``, the result is ``TAR_{i*}`` (the best TAR among
      thresholds reaching exactly that FAR).
    * Otherwise the next point has ``FAR_{i*+1} > far`` and the result is the
      linear interpolation on the ROC between these neighbouring thresholds:
      ``TAR_{i*} + (TAR_{i*+1} - TAR_{i*}) * (far - FAR_{i*}) / (FAR_{i*+1} - FAR_{i*})``.
      This is the TAR achievable by randomly choosing between the two
      thresholds so that the expected FAR equals the target.

    With ``n`` impostor comparisons the ROC moves in FAR steps of at least
    ``1/n``, so a target below ``1/n`` is always interpolated from ``(0, TAR_0)``.

    Parameters
    ----------
    scores, genuine : numpy.ndarray
        As in :func:`roc_curve`.
    far : float or sequence of float
        Target FAR(s) in ``[0, 1]``.
    weights : numpy.ndarray, optional
        Comparison multiplicities, as in :func:`roc_curve`.

    Returns
    -------
    float or numpy.ndarray
        A float for a scalar ``far``, else an array of the same length.
    """
    targets = np.asarray(far, dtype=np.float64)
    if np.any(~np.isfinite(targets)) or np.any(targets < 0) or np.any(targets > 1):
        raise ValueError(f"far must be in [0, 1], got {far!r}")
    roc = roc_curve(scores, genuine, weights)
    flat = np.atleast_1d(targets).ravel()
    i = np.searchsorted(roc.far, flat, side="right") - 1  # last point with FAR <= target
    j = np.minimum(i + 1, len(roc.far) - 1)
    f0, f1, t0, t1 = roc.far[i], roc.far[j], roc.tar[i], roc.tar[j]
    exact = (f0 == flat) | (j == i)
    with np.errstate(divide="ignore", invalid="ignore"):
        result = np.where(exact, t0, t0 + (t1 - t0) * (flat - f0) / np.where(exact, 1.0, f1 - f0))
    if targets.ndim == 0:
        return float(result[0])
    return result.reshape(targets.shape)


@dataclass(frozen=True)
class FoldAccuracy:
    """Result of :func:`verification_accuracy_10fold`.

    Attributes
    ----------
    mean, std : float
        Mean and (population) standard deviation of the per-fold accuracies.
    accuracies : numpy.ndarray
        Accuracy on each held-out fold.
    thresholds : numpy.ndarray
        Threshold selected on the other folds for each held-out fold.
    """

    mean: float
    std: float
    accuracies: np.ndarray
    thresholds: np.ndarray


def _best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """Threshold maximising accuracy of ``score >= t`` on ``(scores, same)``.

    Candidates are ``-inf``, the midpoints between consecutive distinct scores
    and ``+inf``; ties are broken towards the lowest candidate.
    """
    distinct = np.unique(scores)
    candidates = np.r_[-np.inf, (distinct[:-1] + distinct[1:]) / 2.0, np.inf]
    positives = np.sort(scores[same])
    negatives = np.sort(scores[~same])
    true_accepts = len(positives) - np.searchsorted(positives, candidates, side="left")
    true_rejects = np.searchsorted(negatives, candidates, side="left")
    return float(candidates[int(np.argmax(true_accepts + true_rejects))])


def verification_accuracy_10fold(
    scores: np.ndarray,
    same: np.ndarray,
    folds: np.ndarray | None = None,
    n_folds: int = 10,
) -> FoldAccuracy:
    """LFW-style verification accuracy with thresholds chosen by cross-validation.

    For each fold ``k`` the threshold maximising accuracy on the other folds
    is applied to fold ``k`` (accept when ``score >= threshold``), giving
    that fold's accuracy.

    Parameters
    ----------
    scores : numpy.ndarray
        ``(M,)`` pair scores.
    same : numpy.ndarray
        ``(M,)`` booleans, true for matched pairs.
    folds : numpy.ndarray, optional
        ``(M,)`` fold index of each pair (e.g. :attr:`LfwPair.fold`). By
        default the pairs are cut, in order, into ``n_folds`` contiguous folds
        of near-equal size (the LFW ``pairs.txt`` order).
    n_folds : int
        Number of folds when ``folds`` is not given (>= 2).

    Returns
    -------
    FoldAccuracy
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same).astype(bool)
    if s.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"scores and same must be 1-D of equal length, got {s.shape} and {y.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
    if folds is None:
        if n_folds < 2 or len(s) < n_folds:
            raise ValueError(f"need n_folds >= 2 and at least n_folds pairs, got {n_folds} folds for {len(s)} pairs")
        fold_of = np.repeat(np.arange(n_folds), [len(chunk) for chunk in np.array_split(np.arange(len(s)), n_folds)])
    else:
        fold_of = np.asarray(folds)
        if fold_of.shape != s.shape:
            raise ValueError(f"folds must have shape {s.shape}, got {fold_of.shape}")
    fold_ids = np.unique(fold_of)
    if len(fold_ids) < 2:
        raise ValueError("need at least two folds")
    accuracies, thresholds = [], []
    for k in fold_ids:
        test = fold_of == k
        threshold = _best_threshold(s[~test], y[~test])
        accuracies.append(float(np.mean((s[test] >= threshold) == y[test])))
        thresholds.append(threshold)
    acc = np.asarray(accuracies)
    return FoldAccuracy(mean=float(acc.mean()), std=float(acc.std()), accuracies=acc, thresholds=np.asarray(thresholds))


@dataclass(frozen=True)
class LfwPair:
    """One LFW View 2 pair.

    Attributes
    ----------
    path1, path2 : str
        Image paths relative to the LFW folder
        (``lfw-deepfunneled/Name/Name_0001.jpg``).
    same : bool
        True for a matched pair.
    fold : int
        0-based fold index.
    """

    path1: str
    path2: str
    same: bool
    fold: int


def lfw_image_path(name: str, number: int, folder: str = "lfw-deepfunneled") -> str:
    """Relative path of LFW image ``number`` (1-based) of person ``name``."""
    return f"{folder}/{name}/{name}_{int(number):04d}.jpg"


def read_lfw_pairs(path: str | Path, folder: str = "lfw-deepfunneled") -> list[LfwPair]:
    """Read LFW ``pairs.txt`` (View 2).

    The first line is ``n_folds n_per_class`` (``10 300``); each fold is then
    ``n_per_class`` matched lines ``name n1 n2`` followed by ``n_per_class``
    mismatched lines ``name1 n1 name2 n2`` (fields separated by whitespace).

    Parameters
    ----------
    path : str or pathlib.Path
        The ``pairs.txt`` file.
    folder : str
        Image folder prefix of the returned paths.

    Returns
    -------
    list of LfwPair
        In file order (``n_folds * 2 * n_per_class`` pairs).

    Raises
    ------
    ValueError
        On a malformed header or line, or a wrong number of lines.
    """
    path = Path(path)
    lines = [line.split() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [fields for fields in lines if fields]
    if not lines or len(lines[0]) != 2 or not all(f.isdigit() for f in lines[0]):
        raise ValueError(f"{path}: first line must be 'n_folds n_per_class'")
    n_folds, per_class = (int(f) for f in lines[0])
    expected = n_folds * 2 * per_class
    if len(lines) - 1 != expected:
        raise ValueError(
            f"{path}: expected {expected} pair lines for {n_folds} folds of {per_class}, got {len(lines) - 1}"
        )
    pairs: list[LfwPair] = []
    for n, fields in enumerate(lines[1:]):
        fold, within = divmod(n, 2 * per_class)
        same = within < per_class
        try:
            if same and len(fields) == 3:
                pairs.append(
                    LfwPair(
                        lfw_image_path(fields[0], int(fields[1]), folder),
                        lfw_image_path(fields[0], int(fields[2]), folder),
                        True,
                        fold,
                    )
                )
                continue
            if not same and len(fields) == 4:
                pairs.append(
                    LfwPair(
                        lfw_image_path(fields[0], int(fields[1]), folder),
                        lfw_image_path(fields[2], int(fields[3]), folder),
                        False,
                        fold,
                    )
                )
                continue
        except ValueError:
            pass
        kind = "matched 'name n1 n2'" if same else "mismatched 'name1 n1 name2 n2'"
        raise ValueError(f"{path}: pair line {n + 2} should be {kind}, got {' '.join(fields)!r}")
    return pairs
