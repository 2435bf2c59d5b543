"""CIFAR-10 read from the official python pickle batches.

Layout: ``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` (or ``root``
being that folder). Splits: ``train`` = the five data batches (50,000 images), ``val`` = the
official ``test_batch`` (10,000 images).

The batches are read by a small reader here rather than through
``torchvision.datasets.CIFAR10``: torchvision checks the md5 of every file, so it rejects any
file but the originals (small test files included). torchvision is used only to download.
The reader unpickles with an allow-list (numpy arrays and bytes only), so a tampered batch file
cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvq.data.base import DataError, TensorImageDataset, default_root

FOLDER = "cifar-10-batches-py"
_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "val": ["test_batch"]}
_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # bytes as pickled by Python 3 with protocol <= 2
    *(
        (m, n)
        for m in ("numpy.core.multiarray", "numpy._core.multiarray")
        for n in ("_reconstruct", "scalar")
    ),
    *((m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")),
}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays, numpy scalars and plain containers."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def read_pickle(path: Path) -> dict[str, Any]:
    """Load a CIFAR pickle (Python 2 or 3) as a dict with ``str`` keys."""
    try:
        with path.open("rb") as f:
            entry = _SafeUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise DataError(f"cannot read {path}: {e}; the file is corrupted, extract it again") from e
    if not isinstance(entry, dict):
        raise DataError(
            f"{path} holds a {type(entry).__name__}, not a CIFAR dict; extract it again"
        )
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The ``(n, 3072)`` uint8 pixels and ``(n,)`` labels of one data batch."""
    entry = read_pickle(path)
    if "data" not in entry or "labels" not in entry:
        raise DataError(f"{path} lacks the 'data'/'labels' keys of a CIFAR batch; extract it again")
    data = np.asarray(entry["data"])
    labels = np.asarray(entry["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path} has data {data.dtype} {data.shape}, expected uint8 (n, 3072)")
    if labels.shape != (len(data),) or (labels.size and not 0 <= labels.min() <= labels.max() < 10):
        raise DataError(f"{path} has {labels.shape} labels for {len(data)} images, or not in 0..9")
    return data, labels


def _folder(root: Path, download: bool) -> Path:
    """The folder holding the batches, downloading CIFAR-10 into ``root`` if asked and absent."""
    candidates = (root / FOLDER, root)
    found = next((c for c in candidates if (c / "batches.meta").is_file()), None)
    if found is None and download:
        from torchvision.datasets import CIFAR10

        try:
            CIFAR10(str(root), train=False, download=True)
        except (OSError, RuntimeError) as e:
            raise DataError(
                f"downloading CIFAR-10 into {root} failed: {e}; check the network"
            ) from e
        found = root / FOLDER
    if found is None:
        raise DataError(
            f"CIFAR-10 not found: no {FOLDER}/batches.meta in {root}; pass root=<folder holding "
            f"{FOLDER}> or download=True (--download)"
        )
    return found


def cifar10(
    root: Path | None, split: str, image_size: int | None = None, download: bool = False
) -> TensorImageDataset:
    """CIFAR-10 as 3×32×32 images (resized to ``image_size`` if given), 10 classes."""
    folder = _folder(root if root is not None else default_root("cifar10"), download)
    names = read_pickle(folder / "batches.meta").get("label_names", [])
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in names]
    if len(classes) != 10:
        raise DataError(f"{folder / 'batches.meta'} lists {len(classes)} label_names, expected 10")
    missing = [name for name in _FILES[split] if not (folder / name).is_file()]
    if missing:
        raise DataError(f"CIFAR-10 {split} files missing in {folder}: {', '.join(missing)}")
    parts = [_read_batch(folder / name) for name in _FILES[split]]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    images = torch.from_numpy(data).view(-1, 3, 32, 32)  # rows are R, G, B planes of 32×32
    return TensorImageDataset(images, torch.from_numpy(labels), classes, image_size)
