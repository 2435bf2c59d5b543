"""What every data set shares: the error type, the info record, pixel mapping and resizing.

Every item is ``(image, label)``: ``image`` a float32 ``(C, H, W)`` tensor in ``[-1, 1]``
(uint8 ``v`` maps to ``v / 127.5 - 1``, so 0 → -1 and 255 → 1 exactly: ``mvq.core.pixels``'s
``uint8_to_float``), ``label`` a Python int (-1 where the data set has no classes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from mvq.core.errors import MVQError
from mvq.core.pixels import uint8_to_float


class DataError(MVQError, ValueError):
    """A data set cannot be built or read; the one-line message names the problem and the fix."""

    def __init__(self, message: str) -> None:
        # Causes quoted from other libraries may span lines; keep the message on one.
        super().__init__(" ".join(message.split()))


@dataclass(frozen=True)
class DataInfo:
    """What a data set produces.

    Attributes:
        channels: image channels C (1 or 3).
        image_size: side of the square images; ``None`` when the files decide (image folders).
        num_classes: number of classes; 0 when the data set is unlabeled (labels are -1).
    """

    channels: int
    image_size: int | None
    num_classes: int


def default_root(name: str) -> Path:
    """The per-user cache folder for data set ``name``: ``$XDG_CACHE_HOME/mvq/<name>``."""
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "mvq" / name


def fit_square(images: Tensor, size: int) -> Tensor:
    """Resize float ``(..., C, H, W)`` images to ``(..., C, size, size)``.

    The shorter side is resized to ``size`` (bilinear, antialiased) and the longer one
    center-cropped; images already ``size × size`` are returned unchanged.
    """
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    if h == w:
        out = TF.resize(images, [size, size], antialias=True)
    else:
        out = TF.center_crop(TF.resize(images, [size], antialias=True), [size, size])
    return out.clamp_(-1.0, 1.0)


class TensorImageDataset(Dataset[tuple[Tensor, int]]):
    """Images held in memory as uint8, converted (and resized) per item.

    Attributes:
        images: ``(N, C, H, W)`` uint8 at the native size, for fast batched use.
        labels: ``(N,)`` int64.
        classes: class names, index = label.
        info: channels, output image size and number of classes.

    Args:
        images: ``(N, C, H, W)`` uint8 square images.
        labels: ``(N,)`` integer labels.
        classes: class names.
        image_size: output side; ``None`` keeps the native ``H``.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        classes: list[str],
        image_size: int | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}")
        if labels.shape != images.shape[:1]:
            raise DataError(f"{len(images)} images but labels of shape {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.classes = classes
        self.image_size = image_size or images.shape[-1]
        self.info = DataInfo(images.shape[1], self.image_size, len(classes))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = fit_square(uint8_to_float(self.images[index]), self.image_size)
        return image, int(self.labels[index])

    def batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Items ``indices`` at once: float images ``(B, C, S, S)`` and int64 labels ``(B,)``."""
        images = fit_square(uint8_to_float(self.images[indices]), self.image_size)
        return images, self.labels[indices]
