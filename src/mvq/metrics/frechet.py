"""Fréchet distance between two sets of features (FID, ``fd_fmnist``).

    FD = ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^{1/2})

with the means ``mu`` and unbiased covariances ``S`` of the rows. The trace term is computed
in the symmetric eigenvalue form, tr((S_a S_b)^{1/2}) = sum_i sqrt(lambda_i(A S_b A)) with
A = S_a^{1/2} (from ``eigh``): the eigenvalues of A S_b A equal those of S_a S_b, and the
symmetric form has no complex round-off parts to discard, unlike ``scipy.linalg.sqrtm``.
Everything is float64.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def _check_features(features: ArrayLike, name: str) -> np.ndarray:
    """``features`` as a finite float64 ``(N, D)`` array with N >= 2."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must be an (N, D) array with N >= 2 rows, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return x


def feature_statistics(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of ``(N, D)`` features, float64."""
    x = _check_features(features, "features")
    return x.mean(0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off -> 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance_from_statistics(
    mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray
) -> float:
    """Fréchet distance between the Gaussians N(mu_a, sigma_a) and N(mu_b, sigma_b)."""
    if mu_a.shape != mu_b.shape or sigma_a.shape != sigma_b.shape:
        raise ValueError(f"feature widths differ: {mu_a.shape} vs {mu_b.shape}")
    root_a = _psd_sqrt(sigma_a)
    middle = root_a @ sigma_b @ root_a
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    diff = mu_a - mu_b
    fd = diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * trace_sqrt
    return float(max(fd, 0.0))  # a distance: only round-off can make it negative


def frechet_distance(features_a: ArrayLike, features_b: ArrayLike) -> float:
    """Fréchet distance between the Gaussian fits of two feature sets ``(N_a, D)``, ``(N_b, D)``.

    The one implementation behind FID (Inception features) and ``fd_fmnist`` (the Fashion-MNIST
    classifier's features). Float64 throughout; 0 for a set against itself.
    """
    a = _check_features(features_a, "features_a")
    b = _check_features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature widths differ: {a.shape[1]} vs {b.shape[1]}")
    return frechet_distance_from_statistics(*feature_statistics(a), *feature_statistics(b))
