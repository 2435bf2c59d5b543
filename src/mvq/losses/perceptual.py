"""LPIPS (VGG) for the VQGAN objective, through the weights resolver of ``mvq.metrics``.

``lpips.LPIPS(net="vgg")`` ships its linear layers inside the package but fetches the VGG16
backbone ``vgg16-397923af.pth`` through torchvision; offline that fails with a bare
``URLError``. ``build_lpips`` takes the file from an explicit path, else from the one resolver
``mvq eval`` uses too (``$MVQ_WEIGHTS_DIR``, the torch hub cache, a download), and turns a
failure into one line naming the file, its URL, where to put it and the L1-only alternative.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from mvq.metrics.lpips_vgg import load_lpips
from mvq.metrics.weights import WEIGHTS, WeightsUnavailable, resolve_weights

VGG16_FILE = WEIGHTS["vgg16"].name
VGG16_URL = WEIGHTS["vgg16"].url

__all__ = ["VGG16_FILE", "VGG16_URL", "WeightsUnavailable", "build_lpips", "resolve_vgg16"]


def resolve_vgg16(weights_path: str | os.PathLike | None = None) -> Path:
    """The VGG16 backbone file: ``weights_path``, else what ``mvq.metrics`` resolves.

    Raises:
        WeightsUnavailable: an explicit path that does not exist, or no file and no download
            (the message adds that ``--set model_config.perceptual=none`` trains without it).
    """
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise WeightsUnavailable(f"LPIPS VGG16 weights {path} do not exist")
        return path
    try:
        return resolve_weights(WEIGHTS["vgg16"])
    except WeightsUnavailable as err:
        raise WeightsUnavailable(
            f"{err}; or train without LPIPS with --set model_config.perceptual=none "
            "(not the paper's recipe)"
        ) from None


def build_lpips(
    weights_path: str | os.PathLike | None = None, random_backbone: bool = False
) -> nn.Module:
    """Frozen ``lpips.LPIPS(net="vgg")`` in eval mode: ``(x, x_hat) -> (B, 1, 1, 1)`` distances
    of 3-channel images in [-1, 1].

    Args:
        weights_path: the VGG16 backbone file (default: resolved by ``resolve_vgg16``).
        random_backbone: keep the random backbone (``pnet_rand``): for wiring tests only, the
            distances mean nothing.
    """
    if random_backbone:
        return load_lpips(random_backbone=True)
    return load_lpips(path=resolve_vgg16(weights_path))
