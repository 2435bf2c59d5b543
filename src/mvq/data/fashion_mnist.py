"""Fashion-MNIST (Xiao et al. 2017) read straight from its IDX files.

Splits: ``train`` = the 60,000 training images, ``val`` = the official 10,000 ``t10k`` test
images. Files may be gzipped or not. Looked for in ``root`` and ``root/FashionMNIST/raw``
(torchvision's layout); with ``root=None`` in the Debian package folder
``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``) and then in the
user cache ``~/.cache/mvq/fashion_mnist``.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from mvq.data.base import DataError, TensorImageDataset, default_root

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_PREFIX = {"train": "train", "val": "t10k"}
_IDX_UINT8 = 0x08


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an IDX file of uint8 with ``ndim`` dimensions (gzipped when ``path`` ends in .gz)."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"cannot read {path}: {e}; the file is corrupted, delete it and get it again"
        ) from e
    head = 4 + 4 * ndim
    if len(raw) < head or raw[:3] != bytes([0, 0, _IDX_UINT8]) or raw[3] != ndim:
        raise DataError(
            f"{path} is not a uint8 IDX file with {ndim} dimensions (bad header); "
            "the file is corrupted, delete it and get it again"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:head])
    if len(raw) != head + math.prod(dims):
        raise DataError(
            f"{path} is truncated or corrupted: {len(raw)} bytes where its header {dims} "
            f"needs {head + math.prod(dims)}; delete it and get it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(dims).copy()


def _find(folders: list[Path], name: str) -> Path | None:
    """The first existing ``name`` or ``name.gz`` in ``folders`` (plain first: no decompressing)."""
    for folder in folders:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _search_folders(root: Path | None) -> list[Path]:
    """Where the IDX files are looked for, in order."""
    roots = [root] if root is not None else [DEBIAN_ROOT, default_root("fashion_mnist")]
    return [folder for r in roots for folder in (r, r / "FashionMNIST" / "raw")]


def _download(root: Path) -> None:
    """Fetch the four IDX files into ``root/FashionMNIST/raw`` with torchvision."""
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(str(root), train=True, download=True)
    except (OSError, RuntimeError) as e:
        raise DataError(
            f"downloading Fashion-MNIST into {root} failed: {e}; check the network"
        ) from e


def _locate(root: Path | None, split: str, download: bool) -> tuple[Path, Path]:
    """Paths of the split's image and label files, downloading them if asked and absent."""
    prefix = _PREFIX[split]
    names = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    found = [_find(_search_folders(root), n) for n in names]
    if None in found and download:
        target = root if root is not None else default_root("fashion_mnist")
        _download(target)
        found = [_find(_search_folders(target), n) for n in names]
    if found[0] is None or found[1] is None:
        where = ", ".join(str(f) for f in _search_folders(root))
        raise DataError(
            f"Fashion-MNIST {split} files ({names[0]}[.gz], {names[1]}[.gz]) not found in {where}; "
            "run `apt-get install dataset-fashion-mnist`, pass root=<folder with the files>, "
            "or download=True (--download)"
        )
    return found[0], found[1]


def fashion_mnist(
    root: Path | None, split: str, image_size: int | None = None, download: bool = False
) -> TensorImageDataset:
    """Fashion-MNIST as 1×28×28 images (resized to ``image_size`` if given), 10 classes."""
    image_path, label_path = _locate(root, split, download)
    images = read_idx(image_path, ndim=3)  # (N, H, W)
    labels = read_idx(label_path, ndim=1)  # (N,)
    if len(images) != len(labels):
        raise DataError(
            f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels; "
            "the files do not belong together, get them again"
        )
    if labels.size and labels.max() >= len(CLASSES):
        raise DataError(f"{label_path} has label {labels.max()} outside 0..9; get the file again")
    images_t = torch.from_numpy(images).unsqueeze(1)  # (N, 1, H, W)
    return TensorImageDataset(images_t, torch.from_numpy(labels), CLASSES, image_size)
