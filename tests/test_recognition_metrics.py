"""Tests of recognition.metrics on hand-computed examples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recognition.metrics import lfw_image_path, read_lfw_pairs, roc_curve, tar_at_far, verification_accuracy_10fold

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def scores_and_labels(genuine: list[float], impostor: list[float]) -> tuple[np.ndarray, np.ndarray]:
    return np.array(genuine + impostor), np.array([True] * len(genuine) + [False] * len(impostor))


def test_roc_and_tar_without_ties() -> None:
    # Sorted: .9G .85I .8G .7I .6G .5I .4I .3G .2I  (4 genuine, 5 impostor)
    s, g = scores_and_labels([0.9, 0.8, 0.6, 0.3], [0.85, 0.7, 0.5, 0.4, 0.2])
    roc = roc_curve(s, g)
    np.testing.assert_allclose(roc.far, [0, 0, 0.2, 0.2, 0.4, 0.4, 0.6, 0.8, 0.8, 1])
    np.testing.assert_allclose(roc.tar, [0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 0.75, 1, 1])
    assert roc.thresholds[0] == np.inf
    np.testing.assert_allclose(roc.thresholds[1:], [0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    assert tar_at_far(s, g, 0.0) == pytest.approx(0.25)  # threshold .9
    assert tar_at_far(s, g, 0.2) == pytest.approx(0.5)  # largest point with FAR .2: threshold .8
    assert tar_at_far(s, g, 0.1) == pytest.approx(0.25)  # between (0, .25) and (.2, .25)
    assert tar_at_far(s, g, 0.8) == pytest.approx(1.0)
    assert tar_at_far(s, g, 0.7) == pytest.approx(0.75)  # flat segment (.6, .75)-(.8, .75)
    np.testing.assert_allclose(tar_at_far(s, g, [0.0, 0.2, 1.0]), [0.25, 0.5, 1.0])


def test_tar_at_far_interpolates_across_tied_scores() -> None:
    # Ties at .7 between two genuine and two impostor scores make a sloped ROC segment:
    # points (0,0) (0,.25)@.9 (.25,.25)@.8 (.75,.75)@.7 (.75,1)@.2 (1,1)@.1
    s, g = scores_and_labels([0.9, 0.7, 0.7, 0.2], [0.8, 0.7, 0.7, 0.1])
    roc = roc_curve(s, g)
    np.testing.assert_allclose(roc.far, [0, 0, 0.25, 0.75, 0.75, 1])
    np.testing.assert_allclose(roc.tar, [0, 0.25, 0.25, 0.75, 1, 1])
    assert tar_at_far(s, g, 0.25) == pytest.approx(0.25)
    assert tar_at_far(s, g, 0.5) == pytest.approx(0.5)  # .25 + (.75-.25) * (.5-.25)/(.75-.25)
    assert tar_at_far(s, g, 0.3) == pytest.approx(0.3)  # .25 + .5 * .05/.5
    assert tar_at_far(s, g, 0.75) == pytest.approx(1.0)
    assert tar_at_far(s, g, 0.9) == pytest.approx(1.0)


def test_tar_at_far_small_target_and_validation() -> None:
    # 10 impostors: FAR 1e-2 lies between (0, TAR_0) and (0.1, TAR_1).
    s, g = scores_and_labels([0.95, 0.5], [0.9] + [0.1] * 9)
    # points: (0,.5)@.95 (.1,.5)@.9 (.1,1)@.5 (1,1)@.1
    assert tar_at_far(s, g, 0.01) == pytest.approx(0.5)
    s, g = scores_and_labels([0.95, 0.9], [0.9] + [0.1] * 9)
    # points: (0,.5)@.95 (.1,1)@.9 (1,1)@.1 -> 0.5 + 0.5 * 0.01/0.1
    assert tar_at_far(s, g, 0.01) == pytest.approx(0.55)
    with pytest.raises(ValueError, match="far must be"):
        tar_at_far(s, g, 1.5)
    with pytest.raises(ValueError, match="both genuine and impostor"):
        tar_at_far(s, np.ones_like(g), 0.1)


def test_roc_matches_sklearn_on_random_scores() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    g = rng.random(500) < 0.2
    s = np.round(rng.normal(size=500) + g, 2)  # rounding creates ties
    roc = roc_curve(s, g)
    far, tar, _ = metrics.roc_curve(g, s, drop_intermediate=False)
    np.testing.assert_allclose(roc.far, far)
    np.testing.assert_allclose(roc.tar, tar)


def test_ten_fold_accuracy() -> None:
    rng = np.random.default_rng(0)
    same = np.tile(np.r_[np.ones(30, bool), np.zeros(30, bool)], 10)
    scores = np.where(same, rng.uniform(0.6, 1.0, same.size), rng.uniform(-1.0, 0.4, same.size))
    result = verification_accuracy_10fold(scores, same)
    assert result.mean == 1.0 and result.std == 0.0 and len(result.accuracies) == 10
    assert np.all((result.thresholds > 0.4) & (result.thresholds < 0.6))
    # One mislabelled-looking pair per fold: exactly 1/60 error in every fold.
    noisy = scores.copy()
    noisy[np.arange(10) * 60] = -0.9  # a matched pair with a very low score
    result = verification_accuracy_10fold(noisy, same, folds=np.repeat(np.arange(10), 60))
    np.testing.assert_allclose(result.accuracies, 59 / 60)
    with pytest.raises(ValueError):
        verification_accuracy_10fold(scores[:5], same[:5])


def test_read_lfw_pairs_synthetic(tmp_path: Path) -> None:
    path = tmp_path / "pairs.txt"
    path.write_text("2\t1\nAnn\t1\t2\nBob\t1\tCid\t3\nDee\t4\t12\nEve\t2\tFay\t1\n")
    pairs = read_lfw_pairs(path)
    assert [(p.path1, p.path2, p.same, p.fold) for p in pairs] == [
        ("lfw-deepfunneled/Ann/Ann_0001.jpg", "lfw-deepfunneled/Ann/Ann_0002.jpg", True, 0),
        ("lfw-deepfunneled/Bob/Bob_0001.jpg", "lfw-deepfunneled/Cid/Cid_0003.jpg", False, 0),
        ("lfw-deepfunneled/Dee/Dee_0004.jpg", "lfw-deepfunneled/Dee/Dee_0012.jpg", True, 1),
        ("lfw-deepfunneled/Eve/Eve_0002.jpg", "lfw-deepfunneled/Fay/Fay_0001.jpg", False, 1),
    ]
    assert lfw_image_path("A_B", 7, "x") == "x/A_B/A_B_0007.jpg"
    path.write_text("2\t1\nAnn\t1\t2\nBob\t1\tCid\t3\nDee\t4\t12\nEve\t2\t1\n")
    with pytest.raises(ValueError, match="mismatched"):
        read_lfw_pairs(path)
    path.write_text("2\t1\nAnn\t1\t2\n")
    with pytest.raises(ValueError, match="expected 4 pair lines"):
        read_lfw_pairs(path)


@pytest.mark.skipif(not (DATASETS / "lfw" / "pairs.txt").is_file(), reason="LFW not present")
def test_read_lfw_pairs_real() -> None:
    pairs = read_lfw_pairs(DATASETS / "lfw" / "pairs.txt")
    assert len(pairs) == 6000
    assert sum(p.same for p in pairs) == 3000
    assert [p.fold for p in pairs[::600]] == list(range(10))
    assert all(p.same for p in pairs[:300]) and not any(p.same for p in pairs[300:600])
    for p in pairs[::300]:
        assert (DATASETS / "lfw" / p.path1).is_file() and (DATASETS / "lfw" / p.path2).is_file()


def previous_roc(s: np.ndarray, g: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The hand-written ROC that scikit-learn's ``roc_curve`` replaced (recognition 0.1.0)."""
    order = np.argsort(-s, kind="stable")
    s_sorted, g_sorted, w_sorted = s[order], g[order], w[order]
    true_accepts = np.cumsum(w_sorted * g_sorted)
    false_accepts = np.cumsum(w_sorted * ~g_sorted)
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s_sorted) - 1]
    tar = np.r_[0.0, np.minimum(true_accepts[last] / true_accepts[-1], 1.0)]
    far = np.r_[0.0, np.minimum(false_accepts[last] / false_accepts[-1], 1.0)]
    return far, tar


def previous_tar_at_far(s: np.ndarray, g: np.ndarray, targets: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The previous TAR@FAR: the documented interpolation, one target at a time."""
    far, tar = previous_roc(s, g, w)
    out = []
    for target in targets:
        i = int(np.searchsorted(far, target, side="right")) - 1
        if far[i] == target or i + 1 == len(far):
            out.append(tar[i])
        else:
            out.append(tar[i] + (tar[i + 1] - tar[i]) * (target - far[i]) / (far[i + 1] - far[i]))
    return np.asarray(out)


@pytest.mark.parametrize("weighted", [False, True])
def test_roc_and_tar_match_the_previous_implementation(weighted: bool) -> None:
    """scikit-learn's ``roc_curve`` under ``tar_at_far`` against the hand-written code it replaced.

    Synthetic verification scores (10,000 impostors, 1,000 genuine, rounded so that
    ties occur; bootstrap-like integer weights with zeros). Tolerance: 1e-12
    absolute on the ROC points and on TAR at 49 FARs (1e-5 to 1, the report's
    grid and targets included).
    """
    rng = np.random.default_rng(7)
    g = np.r_[np.ones(1000, bool), np.zeros(10000, bool)]
    s = np.round(np.where(g, rng.normal(0.6, 0.2, g.size), rng.normal(0.0, 0.2, g.size)), 3)
    w = rng.poisson(1.0, g.size).astype(np.float64) if weighted else np.ones(g.size)
    fars = np.r_[np.logspace(-5, 0, 41), [1e-3, 1e-2, 1e-1], 0.0, 0.5, 2e-4, 3e-3, 0.25]
    new = tar_at_far(s, g, fars, w if weighted else None)
    np.testing.assert_allclose(new, previous_tar_at_far(s, g, fars, w), rtol=0, atol=1e-12)
    far, tar = previous_roc(s, g, w)
    roc = roc_curve(s, g, w if weighted else None)
    if not weighted:  # with zero weights the previous ROC repeated points that scikit-learn leaves out
        np.testing.assert_allclose(roc.far, far, rtol=0, atol=1e-12)
        np.testing.assert_allclose(roc.tar, tar, rtol=0, atol=1e-12)
    assert roc.thresholds[0] == np.inf and np.all(np.diff(roc.thresholds) < 0)
