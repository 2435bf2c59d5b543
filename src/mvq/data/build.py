"""The data set registry: names → builders, and ``build_dataset``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from mvq.data.base import DataError, DataInfo
from mvq.data.celeba import celeba64
from mvq.data.cifar import cifar10
from mvq.data.fashion_mnist import fashion_mnist
from mvq.data.folder import check_channels, detect_channels, image_folder, list_images
from mvq.data.imagenet64 import imagenet64
from mvq.registry import closest_hint


@dataclass(frozen=True)
class DatasetSpec:
    """A registered data set.

    Attributes:
        info: channels, native image size and number of classes.
        splits: the split names it accepts.
        build: ``build(root, split, image_size, download[, channels])`` → Dataset.
        channels: the channel counts it can produce (the first is the default; ``None``: the
            files decide).
    """

    info: DataInfo
    splits: tuple[str, ...]
    build: Callable[..., Dataset]
    channels: tuple[int | None, ...]


DATASETS: dict[str, DatasetSpec] = {
    "fashion_mnist": DatasetSpec(DataInfo(1, 28, 10), ("train", "val"), fashion_mnist, (1,)),
    "cifar10": DatasetSpec(DataInfo(3, 32, 10), ("train", "val"), cifar10, (3,)),
    "celeba64": DatasetSpec(DataInfo(3, 64, 0), ("train", "val", "test"), celeba64, (3,)),
    "imagenet64": DatasetSpec(DataInfo(3, 64, 1000), ("train", "val"), imagenet64, (3,)),
    "folder": DatasetSpec(DataInfo(3, None, 0), ("train", "val"), image_folder, (None, 1, 3)),
}


def _spec(name: str) -> DatasetSpec:
    """The spec registered as ``name``; an unknown name suggests the closest one."""
    if name not in DATASETS:
        names = sorted(DATASETS)
        raise DataError(
            f"unknown dataset '{name}'{closest_hint(name, names)}; available: {', '.join(names)}"
        )
    return DATASETS[name]


def dataset_info(name: str) -> DataInfo:
    """Channels, native image size and number of classes of data set ``name``.

    For ``folder`` the size is ``None`` and classes 0: the files decide; the built data set's
    ``.info`` has the actual values.
    """
    return _spec(name).info


def data_channels(name: str, root: str | Path | None, channels: int | None = None) -> int:
    """The channels data set ``name`` yields: its own, or for ``folder`` ``channels`` (checked)
    or, when unset, 1 if every image under ``root`` is grayscale and else 3."""
    spec = _spec(name)
    if None not in spec.channels:
        return spec.info.channels
    if channels is not None:
        return check_channels(channels)
    if root is None:
        raise DataError(f"the {name} data set needs root=<a folder of images>")
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist; pass root=<a folder of images>")
    return detect_channels(list_images(folder))


def build_dataset(
    name: str,
    root: str | Path | None,
    split: str,
    image_size: int | None = None,
    download: bool = False,
    channels: int | None = None,
) -> Dataset:
    """Build data set ``name``; its items are ``(image, label)``.

    Args:
        name: one of ``DATASETS`` (``fashion_mnist``, ``cifar10``, ``celeba64``, ``imagenet64``,
            ``folder``).
        root: where the files are; ``None`` for the data set's default place (see its module).
        split: ``train`` or ``val`` (the data set's own test/validation split; ``celeba64``
            also has ``test``).
        image_size: output side in pixels; ``None`` keeps the native size.
        download: fetch missing files (Fashion-MNIST, CIFAR-10, CelebA) with torchvision;
            present files are never fetched again. No effect for ``imagenet64`` (needs a
            login) and ``folder``.
        channels: ``folder`` only: 3 (RGB) or 1 (grayscale); ``None`` (default) detects it
            from the images (1 when all are grayscale, else 3).

    Returns:
        A Dataset of ``(image, label)``: image float32 ``(C, H, W)`` in ``[-1, 1]``, label an
        int (-1 when unlabeled). It has an ``info`` attribute (DataInfo of what it yields).

    Raises:
        DataError: unknown name or split, missing or corrupted files, empty folder.
    """
    spec = _spec(name)
    if split not in spec.splits:
        raise DataError(
            f"unknown split '{split}' for {name}{closest_hint(split, list(spec.splits))}; "
            f"choose from {', '.join(spec.splits)}"
        )
    if image_size is not None and image_size < 1:
        raise DataError(f"image_size must be a positive number of pixels, got {image_size}")
    if None in spec.channels and channels is not None:  # the files decide unless it is set
        check_channels(channels)
    elif channels is not None and (isinstance(channels, bool) or channels not in spec.channels):
        raise DataError(
            f"{name} has {spec.info.channels} channel(s), got channels={channels}; leave it unset"
        )
    extra = {"channels": channels or spec.channels[0]} if len(spec.channels) > 1 else {}
    path = Path(root).expanduser() if root is not None else None
    return spec.build(path, split, image_size, download, **extra)
