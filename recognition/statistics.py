"""Paired statistics for telling aligners apart on the same protocol.

Every aligner is scored on the same splits, templates and comparisons, so
aligners are compared *paired*:

* :func:`sign_flip_test` -- two-sided sign-flip (paired permutation) test of
  the mean per-split TAR difference: under the null hypothesis that two
  aligners are exchangeable, each split's difference is as likely to have
  either sign. Exact (all ``2^n`` sign patterns) for up to
  :data:`EXACT_SIGN_FLIP_MAX` splits, Monte Carlo beyond.
* :func:`wilcoxon_p` -- the Wilcoxon signed-rank test of the same
  differences (scipy), as a second opinion.
* :func:`subject_bootstrap` -- a bootstrap over the *test subjects* of each
  split: subjects are drawn with replacement and every comparison is weighted
  by how often its subjects were drawn (a genuine comparison of a subject drawn
  ``k`` times counts ``k`` times, an impostor comparison of subjects drawn ``k``
  and ``l`` times ``k * l`` times); TAR at FAR is then the weighted ROC's
  (:func:`recognition.metrics.tar_at_far`). The same resample is applied to all
  aligners, so differences are paired; their percentile interval is the
  confidence interval.
* :func:`compare_pairs` -- all of it for every pair of aligners.

Caveat: splits of a ``make-protocol`` protocol are drawn from the same
subjects, so they are not independent samples; the sign-flip p-value treats
them as exchangeable units, and the subject bootstrap speaks for the
variation due to which people were tested.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .metrics import tar_at_far

__all__ = [
    "EXACT_SIGN_FLIP_MAX",
    "SIGNIFICANCE_LEVEL",
    "sign_flip_test",
    "wilcoxon_p",
    "bootstrap_weights",
    "SplitComparisons",
    "subject_bootstrap",
    "PairComparison",
    "compare_pairs",
]

#: Largest number of paired values for which :func:`sign_flip_test` enumerates
#: every sign pattern (2^16 = 65,536).
EXACT_SIGN_FLIP_MAX = 16

#: Level at which tables mark a difference as significant (two-sided, uncorrected).
SIGNIFICANCE_LEVEL = 0.05


def _differences(values: Sequence[float] | np.ndarray) -> np.ndarray:
    d = np.asarray(values, dtype=np.float64).ravel()
    if d.size == 0 or not np.all(np.isfinite(d)):
        raise ValueError(f"need at least one finite paired difference, got {values!r}")
    return d


def sign_flip_test(differences: Sequence[float] | np.ndarray, n_permutations: int = 100_000, seed: int = 0) -> float:
    """Two-sided sign-flip permutation p-value of ``mean(differences) == 0``.

    Parameters
    ----------
    differences : sequence of float
        Paired differences (e.g. TAR of aligner A minus TAR of aligner B, per split).
    n_permutations : int
        Random sign patterns when there are more than :data:`EXACT_SIGN_FLIP_MAX`
        differences (the observed pattern is counted as one of them).
    seed : int
        Seed of the random patterns.

    Returns
    -------
    float
        Fraction of sign patterns whose ``|mean|`` is at least the observed one
        (1.0 when every difference is zero). With ``n`` exact differences the
        smallest possible value is ``2 / 2**n``.
    """
    d = _differences(differences)
    observed = abs(d.mean())
    tolerance = 1e-12 * max(1.0, float(np.abs(d).max()))
    if d.size <= EXACT_SIGN_FLIP_MAX:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        return float(np.mean(np.abs(signs @ d) / d.size >= observed - tolerance))
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(n_permutations, d.size))
    extreme = int(np.sum(np.abs(signs @ d) / d.size >= observed - tolerance))
    return (extreme + 1) / (n_permutations + 1)


def wilcoxon_p(differences: Sequence[float] | np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (scipy; 1.0 if all are zero)."""
    from scipy.stats import wilcoxon

    d = _differences(differences)
    if not np.any(d != 0):
        return 1.0
    return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def bootstrap_weights(subjects: np.ndarray, genuine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Comparison weights of one resample of the subjects (see the module notes).

    Parameters
    ----------
    subjects : numpy.ndarray
        ``(M, 2)`` subject labels of the two sides of every comparison.
    genuine : numpy.ndarray
        ``(M,)`` booleans (both sides of a genuine comparison have the same subject).
    rng : numpy.random.Generator
        Random source.

    Returns
    -------
    numpy.ndarray
        ``(M,)`` float64 multiplicities.
    """
    index, n_subjects = _subject_index(subjects)
    return _resample_weights(index, n_subjects, np.asarray(genuine, bool), rng)


def _subject_index(subjects: np.ndarray) -> tuple[np.ndarray, int]:
    """``(M, 2)`` subject labels as integer indices, and the number of subjects."""
    subjects = np.asarray(subjects)
    labels, index = np.unique(subjects, return_inverse=True)
    return index.reshape(subjects.shape), len(labels)


def _resample_weights(index: np.ndarray, n_subjects: int, genuine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    counts = np.bincount(rng.integers(0, n_subjects, n_subjects), minlength=n_subjects).astype(np.float64)
    return np.where(genuine, counts[index[:, 0]], counts[index[:, 0]] * counts[index[:, 1]])


@dataclass(frozen=True)
class SplitComparisons:
    """The comparisons of one split, shared by all aligners.

    Attributes
    ----------
    subjects : numpy.ndarray
        ``(M, 2)`` subject of each side of every comparison.
    genuine : numpy.ndarray
        ``(M,)`` booleans.
    """

    subjects: np.ndarray
    genuine: np.ndarray


def subject_bootstrap(
    splits: Sequence[SplitComparisons],
    scores: Mapping[str, Sequence[np.ndarray]],
    fars: Sequence[float],
    n_resamples: int = 1000,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Mean-over-splits TAR at FAR of every aligner, for every subject resample.

    Each resample draws the test subjects of every split with replacement
    (:func:`bootstrap_weights`; a draw that leaves no genuine or no impostor
    comparison is drawn again); all aligners get the same draws.

    Parameters
    ----------
    splits : sequence of SplitComparisons
        Comparisons of each split.
    scores : mapping
        ``aligner -> [(M_s,) scores of split s, ...]`` in the order of ``splits``.
    fars : sequence of float
        Target FARs.
    n_resamples : int
        Bootstrap resamples.
    seed : int
        Seed.
    progress : callable, optional
        ``progress(done, total)`` over the resamples.

    Returns
    -------
    dict
        ``aligner -> (n_resamples, len(fars))`` array.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    for name, per_split in scores.items():
        if len(per_split) != len(splits):
            raise ValueError(f"{name}: {len(per_split)} score arrays for {len(splits)} splits")
    rng = np.random.default_rng(seed)
    indexed = [(*_subject_index(split.subjects), np.asarray(split.genuine, bool)) for split in splits]
    out = {name: np.zeros((n_resamples, len(fars))) for name in scores}
    for r in range(n_resamples):
        for s, (index, n_subjects, genuine) in enumerate(indexed):
            weights = _resample_weights(index, n_subjects, genuine, rng)
            while not (weights[genuine].sum() > 0 and weights[~genuine].sum() > 0):
                weights = _resample_weights(index, n_subjects, genuine, rng)  # a draw without a class: redraw
            for name, per_split in scores.items():
                out[name][r] += tar_at_far(per_split[s], genuine, list(fars), weights)
        if progress is not None:
            progress(r + 1, n_resamples)
    return {name: values / len(splits) for name, values in out.items()}


@dataclass(frozen=True)
class PairComparison:
    """Aligner ``a`` against aligner ``b`` at one FAR (differences are ``a - b``).

    Attributes
    ----------
    a, b : str
        Aligner names.
    far : float
        Target FAR.
    mean, std : float
        Mean and (population) std of the per-split TAR differences.
    p_sign_flip, p_wilcoxon : float
        Two-sided p-values (:func:`sign_flip_test`, :func:`wilcoxon_p`).
    ci_low, ci_high : float
        95% percentile interval of the mean difference over subject resamples
        (NaN when no bootstrap was run).
    """

    a: str
    b: str
    far: float
    mean: float
    std: float
    p_sign_flip: float
    p_wilcoxon: float
    ci_low: float
    ci_high: float

    @property
    def significant(self) -> bool:
        """Sign-flip p-value below :data:`SIGNIFICANCE_LEVEL`."""
        return self.p_sign_flip < SIGNIFICANCE_LEVEL

    def to_json(self) -> dict[str, float | str | bool | list[float]]:
        return {
            "a": self.a,
            "b": self.b,
            "far": self.far,
            "mean": self.mean,
            "std": self.std,
            "p_sign_flip": self.p_sign_flip,
            "p_wilcoxon": self.p_wilcoxon,
            "ci95": [self.ci_low, self.ci_high],
            "significant": self.significant,
        }


def compare_pairs(
    tars: Mapping[str, Mapping[float, Sequence[float]]],
    bootstrap: Mapping[str, np.ndarray] | None = None,
    fars: Sequence[float] | None = None,
) -> list[PairComparison]:
    """Paired comparison of every pair of aligners at every FAR.

    Parameters
    ----------
    tars : mapping
        ``aligner -> {far: [TAR of split 1, ...]}``, splits in the same order for all.
    bootstrap : mapping, optional
        :func:`subject_bootstrap` output (columns in the order of ``fars``).
    fars : sequence of float, optional
        FARs to compare (default: those of the first aligner, sorted).

    Returns
    -------
    list of PairComparison
        Pairs in the order of ``tars`` (``a`` before ``b``), FARs inner.
    """
    names = list(tars)
    if fars is None:
        fars = sorted(tars[names[0]]) if names else []
    out = []
    for a, b in itertools.combinations(names, 2):
        for column, far in enumerate(fars):
            d = np.asarray(tars[a][far], np.float64) - np.asarray(tars[b][far], np.float64)
            if bootstrap is not None:
                low, high = np.percentile(bootstrap[a][:, column] - bootstrap[b][:, column], [2.5, 97.5])
            else:
                low = high = float("nan")
            out.append(
                PairComparison(
                    a,
                    b,
                    float(far),
                    float(d.mean()),
                    float(d.std()),
                    sign_flip_test(d),
                    wilcoxon_p(d),
                    float(low),
                    float(high),
                )
            )
    return out
