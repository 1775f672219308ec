"""Tests of recognition.matching against direct numpy loops."""

from __future__ import annotations

import numpy as np
import pytest

from recognition.matching import (
    PCAProjector,
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
            np.mean([direct_softmax([direct_pearson(u, v) for u in features[a] for v in features[b]], beta)
                     for beta in betas])
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


def test_pca_is_fitted_on_training_data_only() -> None:
    rng = np.random.default_rng(1)
    train = rng.normal(size=(40, 12)) @ rng.normal(size=(12, 12)) + 3.0
    test = rng.normal(size=(15, 12)) * 10.0 - 7.0
    pca = PCAProjector(n_components=5).fit(train)
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


def test_pca_caps_components_and_checks_input() -> None:
    rng = np.random.default_rng(2)
    train = rng.normal(size=(6, 20))
    pca = PCAProjector(n_components=4000).fit(train)
    assert pca.n_components_ == 6 and pca.components_.shape == (6, 20)
    # Full-rank projection keeps all pairwise distances of the training data.
    z = pca.transform(train)
    np.testing.assert_allclose(np.linalg.norm(z[0] - z[1]), np.linalg.norm(train[0] - train[1]), rtol=1e-10)
    assert PCAProjector(3).fit(train.astype(np.float32)).transform(train.astype(np.float32)).dtype == np.float32
    white = PCAProjector(3, whiten=True).fit(train)
    np.testing.assert_allclose(white.transform(train).var(axis=0, ddof=1), 1.0, rtol=1e-8)
    with pytest.raises(RuntimeError):
        PCAProjector(3).transform(train)
    with pytest.raises(ValueError, match="expected 20 features"):
        pca.transform(train[:, :5])
