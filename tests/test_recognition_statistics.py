"""Tests of recognition.statistics and the weighted ROC of recognition.metrics, on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from recognition.metrics import roc_curve, tar_at_far
from recognition.statistics import (
    SplitComparisons,
    bootstrap_weights,
    compare_pairs,
    sign_flip_test,
    subject_bootstrap,
    wilcoxon_p,
)


def test_sign_flip_exact_known_answers() -> None:
    # Identical aligners: every difference is zero, nothing is more extreme than nothing.
    assert sign_flip_test(np.zeros(10)) == 1.0
    # Ten splits all in favour of one aligner: only the all-plus and all-minus patterns are as extreme.
    assert sign_flip_test(np.full(10, 0.01)) == pytest.approx(2 / 2**10)
    assert sign_flip_test(np.linspace(0.01, 0.02, 10)) == pytest.approx(2 / 2**10)
    # Symmetric differences: the observed mean is zero, p = 1.
    assert sign_flip_test([0.03, -0.03, 0.01, -0.01]) == 1.0
    # By hand: d = (3, 1, -1); |sum| of the 8 patterns is 5, 3, 1, 3, 3, 1, 3, 5 -> |sum| >= 3 in 6 of 8.
    assert sign_flip_test([3.0, 1.0, -1.0]) == pytest.approx(6 / 8)


def test_sign_flip_monte_carlo_beyond_exact_limit() -> None:
    assert sign_flip_test(np.full(30, 0.01), n_permutations=2000) == pytest.approx(1 / 2001)
    noise = np.random.default_rng(0).normal(0.0, 1.0, 30)
    assert sign_flip_test(noise - noise.mean(), n_permutations=2000) == 1.0
    with pytest.raises(ValueError):
        sign_flip_test([])


def test_wilcoxon_known_answers() -> None:
    assert wilcoxon_p(np.zeros(10)) == 1.0
    assert wilcoxon_p(np.linspace(0.01, 0.02, 10)) == pytest.approx(2 / 2**10)  # exact, all ranks positive
    assert wilcoxon_p([0.03, -0.03, 0.01, -0.01, 0.02, -0.02]) > 0.9


def test_weighted_tar_equals_repeated_comparisons() -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(size=300)
    genuine = rng.random(300) < 0.2
    scores[genuine] += 1.5
    weights = rng.integers(0, 4, 300).astype(float)
    repeated = np.repeat(np.arange(300), weights.astype(int))
    fars = [1e-2, 0.05, 0.1, 0.5, 1.0]
    np.testing.assert_allclose(
        tar_at_far(scores, genuine, fars, weights), tar_at_far(scores[repeated], genuine[repeated], fars), atol=1e-12
    )
    roc = roc_curve(scores, genuine, np.ones(300))
    plain = roc_curve(scores, genuine)
    np.testing.assert_array_equal(roc.tar, plain.tar)
    with pytest.raises(ValueError, match="weights"):
        tar_at_far(scores, genuine, 0.1, np.where(genuine, 0.0, 1.0))  # no genuine weight left


def test_bootstrap_weights_are_subject_multiplicities() -> None:
    subjects = np.array([["a", "a"], ["b", "b"], ["c", "c"], ["a", "b"], ["a", "c"], ["b", "c"]])
    genuine = subjects[:, 0] == subjects[:, 1]
    rng = np.random.default_rng(3)
    for _ in range(20):
        w = bootstrap_weights(subjects, genuine, rng)
        count = dict(zip("abc", w[:3]))  # a genuine comparison counts as often as its subject was drawn
        assert sum(count.values()) == 3  # three subjects drawn with replacement
        assert w[3] == count["a"] * count["b"] and w[4] == count["a"] * count["c"] and w[5] == count["b"] * count["c"]


def _synthetic_split(rng: np.random.Generator, n_subjects: int = 40) -> tuple[SplitComparisons, np.ndarray]:
    """Two comparisons per subject pair side: genuine within subjects, impostors across; base scores."""
    pairs = [(i, i) for i in range(n_subjects) for _ in range(3)]
    pairs += [(i, j) for i in range(n_subjects) for j in range(i + 1, n_subjects)]
    subjects = np.array(pairs)
    genuine = subjects[:, 0] == subjects[:, 1]
    return SplitComparisons(subjects, genuine), rng.normal(size=len(pairs))


def test_subject_bootstrap_and_compare_pairs_known_answers() -> None:
    rng = np.random.default_rng(0)
    # Six splits: the smallest exact sign-flip p-value, 2 / 2**6, is below 5% (with five it is not).
    splits, noise = zip(*(_synthetic_split(rng) for _ in range(6)))
    strong = [n + 3.0 * s.genuine for s, n in zip(splits, noise)]  # well separated
    weak = [n + 0.5 * s.genuine for s, n in zip(splits, noise)]  # barely separated
    scores = {"strong": strong, "copy": [x.copy() for x in strong], "weak": weak}
    fars = (1e-2, 1e-1)
    boot = subject_bootstrap(list(splits), scores, fars, n_resamples=60, seed=0)
    assert boot["strong"].shape == (60, 2)
    np.testing.assert_array_equal(boot["strong"], boot["copy"])  # same resamples for every aligner
    tars = {
        name: {far: [tar_at_far(x, s.genuine, far) for x, s in zip(per, splits)] for far in fars}
        for name, per in scores.items()
    }
    pairs = {(p.a, p.b, p.far): p for p in compare_pairs(tars, boot, fars)}
    assert len(pairs) == 3 * 2
    same = pairs[("strong", "copy", 1e-1)]
    assert same.mean == 0.0 and same.p_sign_flip == 1.0 and same.ci_low == same.ci_high == 0.0
    assert not same.significant
    better = pairs[("strong", "weak", 1e-1)]
    assert better.mean > 0.3 and better.p_sign_flip == pytest.approx(2 / 2**6) and better.significant
    assert 0 < better.ci_low <= better.mean <= better.ci_high
    worse = pairs[("copy", "weak", 1e-2)]
    assert worse.mean > 0 and worse.ci_low > 0  # the interval excludes no difference
    with pytest.raises(ValueError, match="splits"):
        subject_bootstrap(list(splits), {"x": strong[:2]}, fars)
