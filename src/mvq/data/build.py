"""The data set registry: names → builders and the paper's settings, and ``build_dataset``.

``DATASETS`` is the one table of data sets: what each yields (C, image size, classes), its
splits and builder, and for the paper's four its Table 2 row (the tag in variant names, D = D',
epochs) that the tokenizer variants (``mvq.tokenizers.variants``) and the run configs
(``mvq.training.runconfig``) read through ``paper_data``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from mvq.core.registry import closest_hint
from mvq.data.base import DataError, DataInfo
from mvq.data.celeba import celeba64
from mvq.data.cifar import cifar10
from mvq.data.fashion_mnist import fashion_mnist
from mvq.data.folder import check_channels, detect_channels, image_folder, list_images
from mvq.data.imagenet64 import imagenet64


@dataclass(frozen=True)
class Table2:
    """A data set's row of the paper's Table 2.

    Attributes:
        tag: its short name in variant names (``fmnist`` in ``mvqvae_fmnist_s4_k16``).
        dim: D = D', the width of the primary and secondary codes.
        epochs: training epochs.
    """

    tag: str
    dim: int
    epochs: int


@dataclass(frozen=True)
class DatasetSpec:
    """A registered data set.

    Attributes:
        info: channels, native image size and number of classes.
        splits: the split names it accepts.
        build: ``build(root, split, image_size, download[, channels])`` → Dataset.
        channels: the channel counts it can produce (the first is the default; ``None``: the
            files decide).
        paper: its Table 2 row; ``None`` for a data set the paper does not use.
    """

    info: DataInfo
    splits: tuple[str, ...]
    build: Callable[..., Dataset]
    channels: tuple[int | None, ...]
    paper: Table2 | None = None


TRAIN_VAL = ("train", "val")
DATASETS: dict[str, DatasetSpec] = {
    # name: DataInfo(C, size, classes), splits, builder, channels, Table2(tag, D = D', epochs)
    "fashion_mnist": DatasetSpec(
        DataInfo(1, 28, 10), TRAIN_VAL, fashion_mnist, (1,), Table2("fmnist", 16, 350)
    ),
    "cifar10": DatasetSpec(
        DataInfo(3, 32, 10), TRAIN_VAL, cifar10, (3,), Table2("cifar10", 96, 650)
    ),
    "celeba64": DatasetSpec(
        DataInfo(3, 64, 0), (*TRAIN_VAL, "test"), celeba64, (3,), Table2("celeba64", 256, 250)
    ),
    "imagenet64": DatasetSpec(
        DataInfo(3, 64, 1000), TRAIN_VAL, imagenet64, (3,), Table2("imagenet64", 256, 650)
    ),
    "folder": DatasetSpec(DataInfo(3, None, 0), TRAIN_VAL, image_folder, (None, 1, 3)),
}


def paper_data(tag: str) -> tuple[str, DataInfo, Table2]:
    """The data set whose Table 2 tag is ``tag`` (``fmnist``): its name (``fashion_mnist``),
    what it yields and its Table 2 row; an unknown tag is a ``DataError``."""
    tags = {spec.paper.tag: name for name, spec in DATASETS.items() if spec.paper is not None}
    if tag not in tags:
        raise DataError(
            f"unknown data set tag '{tag}'{closest_hint(tag, sorted(tags))}; "
            f"available: {', '.join(sorted(tags))}"
        )
    spec = DATASETS[tags[tag]]
    assert spec.paper is not None
    return tags[tag], spec.info, spec.paper


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
