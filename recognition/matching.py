"""Feature post-processing and template matching (paper, section 5.2).

Pipeline
--------
1. Raw CNN features are power normalised (:func:`power_normalize`, signed
   square root).
2. A PCA (:func:`fit_pca`, scikit-learn's) is fitted on *training* images
   only and projects every feature (4,096 -> 4,000 D in the paper; the number
   of components is capped by the training data).
3. Every image pair ``(I, I')`` with ``I`` in template ``T`` and ``I'`` in
   ``T'`` is scored by the Pearson correlation of their projected features
   (:func:`pearson_matrix`).
4. The pair scores are fused into one template-to-template score by SoftMax
   (:func:`softmax_fusion`), possibly averaged over several ``beta`` values
   (:func:`template_scores`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.decomposition import PCA

__all__ = [
    "DEFAULT_BETA",
    "power_normalize",
    "fit_pca",
    "pearson_matrix",
    "softmax_fusion",
    "group_by_template",
    "template_scores",
]

#: Default SoftMax fusion temperature.
DEFAULT_BETA = 10.0


def _as_2d_float(x: Any, name: str) -> np.ndarray:
    array = np.asarray(x)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n_samples, n_features), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def power_normalize(x: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Signed power normalisation ``sign(x) * |x| ** alpha`` (Perronnin et al.).

    Parameters
    ----------
    x : numpy.ndarray
        Features of any shape.
    alpha : float
        Exponent in ``(0, 1]``; ``0.5`` (signed square root) as in the paper.

    Returns
    -------
    numpy.ndarray
        Same shape; floating dtype preserved (integers become float64).
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    array = np.asarray(x)
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
    return np.sign(array) * np.abs(array) ** array.dtype.type(alpha)


def fit_pca(x: np.ndarray, n_components: int = 4000) -> PCA:
    """PCA fitted on training features only: :class:`sklearn.decomposition.PCA`, exact SVD.

    Parameters
    ----------
    x : numpy.ndarray
        ``(n_samples, n_features)`` training features.
    n_components : int
        Requested number of components (4,000 in the paper). The fitted number
        ``n_components_`` is ``min(n_components, n_samples, n_features)``.

    Returns
    -------
    sklearn.decomposition.PCA
        Fitted (``svd_solver="full"``, no whitening): ``transform`` projects
        ``(x - mean_) @ components_.T`` and never changes the fitted state, so
        test features are projected without leaking into the model. The largest
        coordinate (in magnitude) of every axis is positive (scikit-learn >= 1.5):
        the Pearson correlation of projected features depends on the axes' signs.

    Raises
    ------
    ValueError
        For ``n_components < 1``, fewer than two training samples, or an input
        that is not a finite 2-D array.
    """
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    data = _as_2d_float(x, "x")
    n, d = data.shape
    if n < 2:
        raise ValueError(f"PCA needs at least 2 training samples, got {n}")
    return PCA(n_components=min(int(n_components), n, d), svd_solver="full").fit(data)


def _standardise_rows(x: np.ndarray) -> np.ndarray:
    """Centre each row and scale it to unit Euclidean norm (zero rows stay zero)."""
    centred = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(centred, axis=1, keepdims=True)
    return np.divide(centred, norm, out=np.zeros_like(centred), where=norm > 0)


def pearson_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation between every row of ``a`` and every row of ``b``.

    Parameters
    ----------
    a : numpy.ndarray
        ``(n, D)`` features.
    b : numpy.ndarray
        ``(m, D)`` features.

    Returns
    -------
    numpy.ndarray
        ``(n, m)`` matrix with ``r[i, j] = corr(a[i], b[j])`` in ``[-1, 1]``,
        computed across the ``D`` feature dimensions. A constant row has no
        defined correlation; it gets ``0`` against everything.
    """
    a = _as_2d_float(a, "a")
    b = _as_2d_float(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if a.shape[1] < 2:
        raise ValueError("Pearson correlation needs at least 2 feature dimensions")
    r = _standardise_rows(a) @ _standardise_rows(b).T
    return np.clip(r, -1.0, 1.0)


def _betas(beta: float | Sequence[float]) -> np.ndarray:
    values = np.atleast_1d(np.asarray(beta, dtype=np.float64))
    if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError(f"beta must be a finite number or a non-empty sequence of them, got {beta!r}")
    return values


def softmax_fusion(scores: np.ndarray, beta: float | Sequence[float] = DEFAULT_BETA) -> float:
    """Fuse image-pair scores into one template score by SoftMax weighting.

    .. math::

        s_\\beta = \\frac{\\sum_{p} s_p \\, e^{\\beta s_p}}{\\sum_{p} e^{\\beta s_p}}

    over all image pairs ``p = (I, I')``, ``I`` in ``T`` and ``I'`` in ``T'``.
    ``beta = 0`` gives the mean score, ``beta -> +inf`` the maximum and
    ``beta -> -inf`` the minimum. When ``beta`` is a sequence, the result is
    the mean of :math:`s_\\beta` over its values (as in the Janus CS2 systems
    that average SoftMax scores over several temperatures). The computation is
    shifted by the maximum of ``beta * s`` so it never overflows.

    Parameters
    ----------
    scores : numpy.ndarray
        Pair scores (any shape, at least one element, finite).
    beta : float or sequence of float
        Temperature(s).

    Returns
    -------
    float
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("softmax_fusion needs at least one score")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
    fused = []
    for b in _betas(beta):
        z = b * s
        w = np.exp(z - z.max())
        fused.append(float(np.dot(w, s) / w.sum()))
    return float(np.mean(fused))


def group_by_template(features: np.ndarray, template_ids: Sequence[int] | np.ndarray) -> dict[int, np.ndarray]:
    """Group per-image feature rows by template id.

    Parameters
    ----------
    features : numpy.ndarray
        ``(N, D)`` features.
    template_ids : sequence of int
        ``(N,)`` template id of every row (an image may appear in several
        templates by being listed in several rows).

    Returns
    -------
    dict
        ``template id -> (n_t, D)`` array, rows in input order.
    """
    features = np.asarray(features)
    ids = np.asarray(template_ids)
    if features.ndim != 2 or ids.shape != (features.shape[0],):
        raise ValueError(f"features (N, D) and template_ids (N,) disagree: {features.shape} vs {ids.shape}")
    return {int(t): features[ids == t] for t in np.unique(ids)}


def template_scores(
    features_by_template: Mapping[int, np.ndarray],
    comparisons: np.ndarray,
    betas: float | Sequence[float] = (DEFAULT_BETA,),
) -> np.ndarray:
    """Template-to-template similarity for every comparison.

    Each score is :func:`softmax_fusion` (averaged over ``betas``) of the
    Pearson correlations (:func:`pearson_matrix`) of all image pairs of the
    two templates. The computation is vectorised per left-hand template: its
    images are correlated with the images of all its partner templates in one
    matrix product, and the SoftMax sums are segment-reduced.

    Parameters
    ----------
    features_by_template : mapping
        ``template id -> (n_t, D)`` features (already normalised/projected),
        ``n_t >= 1``.
    comparisons : numpy.ndarray
        ``(M, 2)`` template-id pairs.
    betas : float or sequence of float
        SoftMax temperature(s); scores are averaged over them.

    Returns
    -------
    numpy.ndarray
        ``(M,)`` float64 scores in ``[-1, 1]``.

    Raises
    ------
    ValueError
        If a comparison names an unknown or empty template, or feature
        dimensions differ.
    """
    pairs = np.asarray(comparisons)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"comparisons must have shape (M, 2), got {pairs.shape}")
    beta_values = _betas(betas)
    if len(pairs) == 0:
        return np.zeros(0, dtype=np.float64)

    needed = np.unique(pairs)
    missing = [int(t) for t in needed if int(t) not in features_by_template]
    if missing:
        raise ValueError(f"{len(missing)} compared template(s) have no features, e.g. {missing[:5]}")
    blocks = [_as_2d_float(features_by_template[int(t)], f"features of template {int(t)}") for t in needed]
    dims = {block.shape[1] for block in blocks}
    if len(dims) != 1:
        raise ValueError(f"templates have different feature dimensions: {sorted(dims)}")
    empty = [int(t) for t, block in zip(needed, blocks) if block.shape[0] == 0]
    if empty:
        raise ValueError(f"template(s) without images: {empty[:5]}")
    if dims.pop() < 2:
        raise ValueError("Pearson correlation needs at least 2 feature dimensions")

    # Standardise once: Pearson correlation becomes a plain dot product.
    position = {int(t): n for n, t in enumerate(needed)}
    sizes = np.array([block.shape[0] for block in blocks])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    z = _standardise_rows(np.concatenate(blocks).astype(np.float64))

    left = np.array([position[int(t)] for t in pairs[:, 0]])
    right = np.array([position[int(t)] for t in pairs[:, 1]])
    out = np.empty(len(pairs), dtype=np.float64)
    order = np.argsort(left, kind="stable")
    bounds = np.flatnonzero(np.diff(left[order])) + 1
    for group in np.split(order, bounds):
        a = left[group[0]]
        partners = right[group]
        counts = sizes[partners]
        starts = offsets[partners]
        # Row indices of all partner images, concatenated partner by partner.
        seg_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        columns = np.repeat(starts - seg_start, counts) + np.arange(counts.sum())
        sim = np.clip(z[offsets[a] : offsets[a + 1]] @ z[columns].T, -1.0, 1.0)  # (n_a, sum counts)
        fused = np.zeros(len(group))
        for b in beta_values:
            scaled = b * sim
            seg_max = np.maximum.reduceat(scaled.max(axis=0), seg_start)
            w = np.exp(scaled - np.repeat(seg_max, counts)[None, :])
            numerator = np.add.reduceat((w * sim).sum(axis=0), seg_start)
            denominator = np.add.reduceat(w.sum(axis=0), seg_start)
            fused += numerator / denominator
        out[group] = fused / len(beta_values)
    return out
