"""FID's feature extractor: torch-fidelity's ``inception-v3-compat`` (the TF 2015-12-05
Inception), 2048-d pool features, with the weights file found by ``mvq.metrics.weights``.

Input: uint8 images ``(N, C, H, W)``, C = 1 or 3; gray images are repeated to three channels
and the extractor resizes to 299 itself (TF-style bilinear), as the published Fashion-MNIST
FIDs do (SPEC "Evaluation practice").
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor, nn

from mvq.metrics.weights import WEIGHTS, resolve_weights

FEATURE = "2048"


def load_inception(
    weights_dir: str | os.PathLike | None = None, device: torch.device | str = "cpu"
) -> nn.Module:
    """torch-fidelity's Inception feature extractor on ``device`` (weights resolved, no URL)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = resolve_weights(WEIGHTS["inception"], weights_dir)
    try:
        model = FeatureExtractorInceptionV3(
            "inception-v3-compat", [FEATURE], feature_extractor_weights_path=str(path)
        )
    except Exception as err:  # noqa: BLE001 - torch.load raises many types on a bad file
        raise ValueError(
            f"{path} is not torch-fidelity's Inception state dict ({' '.join(str(err).split())}"
            f"); delete it and download {WEIGHTS['inception'].url} again"
        ) from err
    return model.to(device).eval()


def to_rgb_uint8(images: Tensor) -> Tensor:
    """uint8 ``(N, 1 or 3, H, W)`` -> ``(N, 3, H, W)`` (gray repeated)."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"images must be uint8 (N, 1 or 3, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


@torch.no_grad()
def inception_features(model: nn.Module, images: Tensor, batch_size: int = 100) -> np.ndarray:
    """2048-d Inception pool features ``(N, 2048)`` float64 of uint8 images ``(N, C, H, W)``."""
    device = next(model.parameters()).device
    parts = [
        model(to_rgb_uint8(images[i : i + batch_size]).to(device))[0].double().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(parts).numpy()
