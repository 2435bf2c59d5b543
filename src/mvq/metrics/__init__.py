"""Metrics of tokenizers and generative models: Fréchet distances (FID, ``fd_fmnist``), the PRD
F-scores, LPIPS and Inception features, with their weights found offline first.

Pure functions on arrays and images; the networks they need are loaded by ``load_*``.
Imports ``mvq.data`` (the Fashion-MNIST reference set of ``fd_fmnist``) and ``mvq.core.errors``
only. The classifier of ``fd_fmnist`` ships as package data (``fd_fmnist_classifier/``).
"""

from mvq.metrics.fd_fmnist import (
    CachedClassifier,
    ClassifierConfig,
    ClassifierError,
    FMNISTClassifier,
    classifier_features,
    fd_floor,
    fd_fmnist,
    load_classifier,
    load_classifier_file,
    resolve_classifier,
    shipped_classifier,
    train_classifier,
)
from mvq.metrics.frechet import feature_statistics, frechet_distance
from mvq.metrics.inception import inception_features, load_inception
from mvq.metrics.lpips_vgg import load_lpips, lpips_distance
from mvq.metrics.prd import prd_curve, prd_f_scores
from mvq.metrics.weights import WEIGHTS, WeightsFile, WeightsUnavailable, resolve_weights

__all__ = [
    "WEIGHTS",
    "CachedClassifier",
    "ClassifierConfig",
    "ClassifierError",
    "FMNISTClassifier",
    "WeightsFile",
    "WeightsUnavailable",
    "classifier_features",
    "fd_floor",
    "fd_fmnist",
    "feature_statistics",
    "frechet_distance",
    "inception_features",
    "load_classifier",
    "load_classifier_file",
    "load_inception",
    "load_lpips",
    "lpips_distance",
    "prd_curve",
    "prd_f_scores",
    "resolve_classifier",
    "resolve_weights",
    "shipped_classifier",
    "train_classifier",
]
