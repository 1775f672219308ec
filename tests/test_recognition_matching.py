"""Tests of recognition.matching against direct numpy loops."""

from __future__ import annotations

import numpy as np
import pytest

from recognition.matching import (
    fit_pca,
    group_by_template,
    pearson_matrix,
    power_normalize,
    softmax_fusion,
    template_scores,
)


def direct_pearson(u: np.ndarray, v: np.ndarray) -> float:
    return float(np.corrcoef(u, v)[0, 1])


def direct_softmax(scores: list[float], beta: float) -> float:
    num = sum(s * np.exp(beta * s) for s in scores)
    den = sum(np.exp(beta * s) for s in scores)
    return float(num / den)


def test_power_normalize() -> None:
    x = np.array([[-4.0, 0.0, 9.0], [0.25, -0.01, 1.0]], dtype=np.float32)
    y = power_normalize(x)
    np.testing.assert_allclose(y, [[-2.0, 0.0, 3.0], [0.5, -0.1, 1.0]], rtol=1e-6)
    assert y.dtype == np.float32
    assert power_normalize(np.array([2, -8]), alpha=1.0).tolist() == [2.0, -8.0]
    with pytest.raises(ValueError):
        power_normalize(x, alpha=0.0)


def test_pearson_matrix_matches_corrcoef() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 17))
    b = rng.normal(size=(3, 17)) * 4.0 + 2.0
    b[1] = 3.0 * a[2] - 1.0  # perfectly correlated with a[2]
    r = pearson_matrix(a, b)
    assert r.shape == (5, 3)
    expected = np.array([[direct_pearson(a[i], b[j]) for j in range(3)] for i in range(5)])
    np.testing.assert_allclose(r, expected, atol=1e-12)
    assert r[2, 1] == pytest.approx(1.0, abs=1e-12)
    constant = np.vstack([np.full(17, 5.0), a[0]])
    np.testing.assert_allclose(pearson_matrix(constant, a)[0], 0.0)
    with pytest.raises(ValueError, match="dimensions differ"):
        pearson_matrix(a, b[:, :5])


def test_softmax_fusion_matches_formula() -> None:
    scores = np.array([[0.2, -0.4, 0.9], [0.5, 0.1, -0.8]])
    flat = scores.ravel().tolist()
    for beta in (0.0, 1.0, 10.0, -3.0):
        assert softmax_fusion(scores, beta) == pytest.approx(direct_softmax(flat, beta), rel=1e-12)
    assert softmax_fusion(scores, 0.0) == pytest.approx(np.mean(flat))
    assert softmax_fusion(scores, 1e4) == pytest.approx(0.9, abs=1e-9)  # no overflow, tends to max
    assert softmax_fusion(scores, -1e4) == pytest.approx(-0.8, abs=1e-9)
    betas = [0.0, 5.0, 20.0]
    assert softmax_fusion(scores, betas) == pytest.approx(np.mean([direct_softmax(flat, b) for b in betas]))
    with pytest.raises(ValueError):
        softmax_fusion(np.array([]), 1.0)


def test_template_scores_match_loops() -> None:
    rng = np.random.default_rng(3)
    sizes = {10: 1, 11: 3, 12: 2, 13: 5, 14: 1}
    features = {t: rng.normal(size=(n, 8)) for t, n in sizes.items()}
    comparisons = np.array([[10, 11], [12, 13], [10, 13], [14, 10], [11, 11], [13, 12], [10, 14], [12, 11]])
    for betas in ([10.0], [0.0, 2.0, 7.5]):
        got = template_scores(features, comparisons, betas)
        expected = [
            np.mean(
                [
                    direct_softmax([direct_pearson(u, v) for u in features[a] for v in features[b]], beta)
                    for beta in betas
                ]
            )
            for a, b in comparisons
        ]
        np.testing.assert_allclose(got, expected, atol=1e-12)
    assert template_scores(features, np.zeros((0, 2), dtype=int)).shape == (0,)
    with pytest.raises(ValueError, match="no features"):
        template_scores(features, np.array([[10, 99]]))


def test_group_by_template() -> None:
    feats = np.arange(12.0).reshape(6, 2)
    grouped = group_by_template(feats, [3, 1, 3, 1, 2, 3])
    assert sorted(grouped) == [1, 2, 3]
    np.testing.assert_array_equal(grouped[3], feats[[0, 2, 5]])
    with pytest.raises(ValueError):
        group_by_template(feats, [1, 2])


def previous_pca(train: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The hand-written PCA that ``fit_pca`` replaced (recognition 0.1.0): mean, axes, variances.

    Exact SVD of the centred data; the sign of every axis makes its largest-magnitude
    coordinate positive; variances with ``ddof=1``.
    """
    mean = train.mean(axis=0)
    _, singular, vt = np.linalg.svd(train - mean, full_matrices=False)
    signs = np.sign(vt[np.arange(vt.shape[0]), np.argmax(np.abs(vt), axis=1)])
    signs[signs == 0] = 1.0
    vt = vt * signs[:, None]
    k = min(k, *train.shape)
    return mean, vt[:k], (singular**2 / (len(train) - 1))[:k]


def test_pca_is_fitted_on_training_data_only() -> None:
    rng = np.random.default_rng(1)
    train = rng.normal(size=(40, 12)) @ rng.normal(size=(12, 12)) + 3.0
    test = rng.normal(size=(15, 12)) * 10.0 - 7.0
    pca = fit_pca(train, n_components=5)
    np.testing.assert_allclose(pca.mean_, train.mean(axis=0), atol=1e-12)
    mean, components = pca.mean_.copy(), pca.components_.copy()
    projected = pca.transform(test)
    np.testing.assert_array_equal(pca.mean_, mean)
    np.testing.assert_array_equal(pca.components_, components)
    assert projected.shape == (15, 5)
    np.testing.assert_allclose(projected, (test - train.mean(axis=0)) @ components.T, atol=1e-10)
    # Orthonormal axes of decreasing training variance, matching the covariance spectrum.
    np.testing.assert_allclose(components @ components.T, np.eye(5), atol=1e-10)
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(train, rowvar=False)))[::-1]
    np.testing.assert_allclose(pca.explained_variance_, eigenvalues[:5], rtol=1e-8)
    np.testing.assert_allclose(pca.transform(train).var(axis=0, ddof=1), eigenvalues[:5], rtol=1e-8)


@pytest.mark.parametrize("shape, k", [((40, 12), 5), ((30, 64), 4000), ((200, 16), 16)])
def test_pca_matches_the_previous_implementation(shape: tuple[int, int], k: int) -> None:
    """scikit-learn's PCA against the hand-written one it replaced, on synthetic features.

    The axes' signs matter: the Pearson correlation across projected dimensions
    changes when one axis flips. Both make the largest-magnitude coordinate of
    every axis positive (scikit-learn since 1.5). Tolerances, float64: mean
    1e-12; variances 1e-9 relative; axes and projections 1e-9 absolute; template
    scores (Pearson + SoftMax) 1e-12 absolute.
    """
    rng = np.random.default_rng(shape[0] + shape[1])
    train = np.abs(rng.normal(size=shape) @ rng.normal(size=(shape[1], shape[1])))
    test = np.abs(rng.normal(size=(25, shape[1]))) * 2.0
    train, test = power_normalize(train), power_normalize(test)
    mean, axes, variance = previous_pca(train, k)
    pca = fit_pca(train, k)
    # The last axis of a rank-deficient fit (n <= D: the centred data has rank n - 1) spans no
    # variance and is arbitrary: compare the others.
    m = len(axes) - 1 if shape[0] <= shape[1] else len(axes)
    assert pca.n_components_ == len(axes)
    np.testing.assert_allclose(pca.mean_, mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pca.explained_variance_[:m], variance[:m], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(pca.components_[:m], axes[:m], atol=1e-9)
    np.testing.assert_allclose(pca.transform(test)[:, :m], (test - mean) @ axes[:m].T, atol=1e-9)
    ids = np.repeat(np.arange(5), 5)
    pairs = np.array([[a, b] for a in range(5) for b in range(a + 1, 5)])
    new = template_scores(group_by_template(pca.transform(test)[:, :m], ids), pairs, (0.0, 10.0))
    old = template_scores(group_by_template((test - mean) @ axes[:m].T, ids), pairs, (0.0, 10.0))
    np.testing.assert_allclose(new, old, atol=1e-12)


def test_pca_caps_components_and_checks_input() -> None:
    rng = np.random.default_rng(2)
    train = rng.normal(size=(6, 20))
    pca = fit_pca(train, n_components=4000)
    assert pca.n_components_ == 6 and pca.components_.shape == (6, 20)
    # Full-rank projection keeps all pairwise distances of the training data.
    z = pca.transform(train)
    np.testing.assert_allclose(np.linalg.norm(z[0] - z[1]), np.linalg.norm(train[0] - train[1]), rtol=1e-10)
    assert fit_pca(train.astype(np.float32), 3).transform(train.astype(np.float32)).dtype == np.float32
    with pytest.raises(ValueError, match="at least 2"):
        fit_pca(train[:1], 3)
    with pytest.raises(ValueError, match="n_components"):
        fit_pca(train, 0)
    with pytest.raises(ValueError, match="NaN"):
        fit_pca(np.full((3, 4), np.nan), 3)
    with pytest.raises(ValueError):
        pca.transform(train[:, :5])
