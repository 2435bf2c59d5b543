"""Pixels: uint8 images in [0, 255] and float images in [-1, 1], one scaling and one rounding.

A uint8 value ``v`` is the float ``v / 127.5 - 1`` (0 -> -1 and 255 -> 1 exactly). A float
``x`` is written back as ``floor((x + 1) / 2 * 255 + 0.5)`` clamped to [0, 255]: rounding half
up, exactly as ``torchvision.utils.save_image`` writes ``to_unit(x)``, so a PNG written by
``save_image`` and the uint8 images the metrics compare hold the same values. Imports torch only.
"""

from __future__ import annotations

import torch
from torch import Tensor


def uint8_to_float(images: Tensor) -> Tensor:
    """Map uint8 pixels ``[0, 255]`` to float32 ``[-1, 1]`` (0 → -1, 255 → 1 exactly)."""
    return images.to(torch.float32) / 127.5 - 1.0


def float_to_uint8(images: Tensor) -> Tensor:
    """Float images in [-1, 1] -> uint8, half up, as ``torchvision.utils.save_image`` writes
    them; values outside [-1, 1] are clamped."""
    return ((images + 1) / 2 * 255 + 0.5).clamp(0, 255).to(torch.uint8)


def to_unit(images: Tensor) -> Tensor:
    """Float images in [-1, 1] -> [0, 1] (clamped), the range ``save_image`` and
    ``make_grid`` take."""
    return ((images + 1) / 2).clamp(0, 1)
