"""Precision and recall for distributions (PRD; Sajjadi et al., NeurIPS 2018) and its F-scores.

Algorithm (SPEC "Metrics", as in the authors' reference code): with equally many generated
(``eval``) and real (``ref``) feature rows, cluster their union into 20 clusters with
MiniBatchKMeans (``n_init=10``, ``batch_size=100`` as in the reference code's scikit-learn)
``num_runs = 10`` times with fixed seeds; per run take the
normalised cluster histograms alpha (eval) and beta (ref); for 1001 angles evenly spaced in
[1e-10, pi/2 - 1e-10] and lambda = tan(angle):

    precision(lambda) = sum_i min(lambda * beta_i, alpha_i),  recall(lambda) = precision / lambda

Average the curves over the runs; F_beta = (1 + beta^2) p r / (beta^2 p + r); report
max F_8 (recall-like: does the model cover the data?) and max F_{1/8} (precision-like: are its
samples realistic?). Swapping ``eval`` and ``ref`` swaps the two.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from sklearn.cluster import MiniBatchKMeans

NUM_CLUSTERS = 20
NUM_ANGLES = 1001
NUM_RUNS = 10
# The reference code ran scikit-learn < 1.0, whose MiniBatchKMeans default batch_size was 100
# (k-means++ on 3 * 100 points); 1.0 changed it to 1024, which is 4x slower at width 2048.
BATCH_SIZE = 100
EPSILON = 1e-10


def _check_pair(eval_features: ArrayLike, ref_features: ArrayLike) -> tuple[np.ndarray, ...]:
    """Both sets as float64 ``(N, D)`` arrays of equal shape, finite.

    float64 on purpose: scikit-learn upcasts float32 distances chunk by chunk, 2x slower.
    """
    a = np.asarray(eval_features, dtype=np.float64)
    b = np.asarray(ref_features, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (N, D) arrays of one width, got {a.shape}, {b.shape}")
    if len(a) != len(b) or len(a) < NUM_CLUSTERS:
        raise ValueError(
            f"PRD needs equally many eval and ref rows (>= {NUM_CLUSTERS}), got {len(a)} and "
            f"{len(b)}: subsample the larger set"
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("features contain NaN or Inf")
    return a, b


def cluster_histograms(
    eval_features: np.ndarray, ref_features: np.ndarray, seed: int, num_clusters: int = NUM_CLUSTERS
) -> tuple[np.ndarray, np.ndarray]:
    """One clustering of the union: normalised histograms ``(num_clusters,)`` of eval and ref."""
    union = np.concatenate([eval_features, ref_features])  # (2N, D)
    kmeans = MiniBatchKMeans(
        n_clusters=num_clusters, n_init=10, batch_size=BATCH_SIZE, random_state=seed
    )
    labels = kmeans.fit(union).labels_
    n = len(eval_features)
    alpha = np.bincount(labels[:n], minlength=num_clusters) / n
    beta = np.bincount(labels[n:], minlength=num_clusters) / len(ref_features)
    return alpha, beta


def prd_from_histograms(
    alpha: np.ndarray, beta: np.ndarray, num_angles: int = NUM_ANGLES
) -> tuple[np.ndarray, np.ndarray]:
    """The PRD curve ``(precision, recall)``, each ``(num_angles,)``, of two histograms."""
    angles = np.linspace(EPSILON, np.pi / 2 - EPSILON, num_angles)
    slopes = np.tan(angles)[:, None]  # (A, 1)
    precision = np.minimum(beta[None, :] * slopes, alpha[None, :]).sum(1)  # (A,)
    recall = precision / slopes[:, 0]
    return np.clip(precision, 0.0, 1.0), np.clip(recall, 0.0, 1.0)


def prd_curve(
    eval_features: ArrayLike, ref_features: ArrayLike, seed: int = 0, num_runs: int = NUM_RUNS
) -> tuple[np.ndarray, np.ndarray]:
    """PRD curve averaged over ``num_runs`` clusterings seeded ``seed, seed + 1, ...``."""
    a, b = _check_pair(eval_features, ref_features)
    curves = [prd_from_histograms(*cluster_histograms(a, b, seed + run)) for run in range(num_runs)]
    precision = np.mean([p for p, _ in curves], axis=0)
    recall = np.mean([r for _, r in curves], axis=0)
    return precision, recall


def max_f_beta(precision: np.ndarray, recall: np.ndarray, beta: float) -> float:
    """max over the curve of F_beta = (1 + beta^2) p r / (beta^2 p + r)."""
    f = (1 + beta**2) * precision * recall / (beta**2 * precision + recall + EPSILON)
    return float(f.max())


def prd_f_scores(
    eval_features: ArrayLike, ref_features: ArrayLike, seed: int = 0
) -> tuple[float, float]:
    """``(F_8, F_1/8)`` of generated features ``(N, D)`` against real features ``(N, D)``.

    F_8 is recall-like (high when the generated set covers the real one), F_1/8 precision-like
    (high when generated samples lie where real ones are); both in [0, 1].
    """
    precision, recall = prd_curve(eval_features, ref_features, seed)
    return max_f_beta(precision, recall, 8.0), max_f_beta(precision, recall, 1 / 8)
