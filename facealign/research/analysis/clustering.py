"""Dimension reduction and clustering of one layer's representations.

:func:`reduce_features` (PCA for wide layers) and :func:`cluster_features` (a
diagonal Gaussian mixture fitted by EM, seeded k-means start, assignment by
maximum posterior, Eq. 2). Needs scikit-learn.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np


def reduce_features(x: np.ndarray, dims: int, above: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """PCA-project ``x`` (``N x D``) to ``dims`` components when ``D > above``; else keep it.

    Returns the (float64) features and ``{"input_dims", "dims", "pca",
    "explained_variance"}`` (the fraction of the total variance kept, None
    without PCA). Randomised SVD, seeded; no whitening.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected N x D features, got shape {x.shape}")
    n, d = x.shape
    if d <= above:
        return x.astype(np.float64), {"input_dims": d, "dims": d, "pca": False, "explained_variance": None}
    from sklearn.decomposition import PCA

    dims = int(min(dims, n, d))
    pca = PCA(n_components=dims, whiten=False, svd_solver="randomized", random_state=seed)
    y = pca.fit_transform(x.astype(np.float32)).astype(np.float64)
    info = {
        "input_dims": d,
        "dims": dims,
        "pca": True,
        "explained_variance": float(pca.explained_variance_ratio_.sum()),
    }
    return y, info


def cluster_features(
    x: np.ndarray, k: int, seed: int, max_iter: int = 100, reg_covar: float = 1e-3
) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit a K-component diagonal Gaussian mixture by EM and assign by maximum posterior (Eq. 2).

    Parameters
    ----------
    x : ndarray, shape (N, D)
    k : int
        Components; at most N.
    seed : int
        Seeds the k-means initialisation.
    max_iter : int
        EM iterations at most (one initialisation).
    reg_covar : float
        Added to every variance, *relative* to the mean per-dimension variance of
        ``x`` (so it does not depend on the features' scale); keeps components on
        near-constant dimensions (e.g. saturated ``abs(tanh)`` units) finite.

    Returns
    -------
    labels : ndarray of int, shape (N,)
    info : dict
        ``converged``, ``n_iter``, ``reg_covar`` (absolute), ``lower_bound``.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected N x D features, got shape {x.shape}")
    if not 1 <= k <= len(x):
        raise ValueError(f"cannot fit {k} clusters to {len(x)} faces")
    reg = max(reg_covar * float(x.var(0).mean()), 1e-9)
    gmm = GaussianMixture(
        n_components=k,
        covariance_type="diag",
        reg_covar=reg,
        max_iter=max_iter,
        n_init=1,
        init_params="kmeans",
        random_state=seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm.fit(x)
    labels = gmm.predict(x)
    info = {
        "converged": bool(gmm.converged_),
        "n_iter": int(gmm.n_iter_),
        "reg_covar": reg,
        "lower_bound": float(gmm.lower_bound_),
    }
    return labels.astype(np.int64), info
