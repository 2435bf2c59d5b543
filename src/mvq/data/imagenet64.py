"""ImageNet 64×64: the official downsampled npz batches (Chrabaszcz et al. 2017).

Files: ``train_data_batch_1.npz`` … ``train_data_batch_10.npz`` (1,281,167 images) and
``val_data.npz`` (the official 50,000 validation images), in ``root`` or one folder below it
(the download zips extract into such folders). Each holds ``data`` ``(n, 12288)`` uint8, rows
being the R, G and B planes of 64×64, and 1-indexed ``labels`` (1..1000), stored here 0-indexed;
the ``mean`` of the train batches is not used. Splits: ``train`` = the ten train batches,
``val`` = ``val_data.npz``. There is no download: ImageNet needs a login at image-net.org.

Memory: the train set is 15.7 GB as uint8. Building the data set reads only labels and array
headers. A batch whose ``data`` is stored uncompressed in its npz (``np.savez``) is memory-mapped
in place: no copy, pages shared by all DataLoader workers through the OS cache. A compressed
batch (``np.savez_compressed``) is decompressed into memory on its first use, in each process
that uses it (~1.6 GB per train batch, ~16 GB for all ten); to avoid that, re-save it once
uncompressed: ``np.savez(p, **np.load(p))``.
"""

from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mvq.data.base import DataError, DataInfo, fit_square, uint8_to_float

NATIVE_SIZE = 64
NUM_CLASSES = 1000
ROW = 3 * NATIVE_SIZE * NATIVE_SIZE
FILES = {"train": [f"train_data_batch_{i}.npz" for i in range(1, 11)], "val": ["val_data.npz"]}
_HOW_TO_GET = (
    "log in at https://image-net.org/download-images, download 'Downsampled ImageNet 64x64' "
    "(npz) and extract it under root"
)


@dataclass(frozen=True)
class _Batch:
    """One npz batch: its path, number of rows, and the byte offset of stored (raw) pixels."""

    path: Path
    rows: int
    offset: int | None  # None: 'data' is compressed and must be decompressed to be read


def _locate(root: Path, name: str, download: bool) -> Path:
    """``root/name`` or ``root/*/name``."""
    for candidate in (root / name, *sorted(root.glob(f"*/{name}"))):
        if candidate.is_file():
            return candidate
    cannot = " and cannot be downloaded automatically" if download else ""
    raise DataError(
        f"ImageNet64 file {name} not found in {root} or its subfolders{cannot}; {_HOW_TO_GET}"
    )


def _raw_offset(path: Path, member: zipfile.ZipInfo, npy_header: int) -> int:
    """Byte offset in ``path`` of an uncompressed member's array data."""
    with path.open("rb") as f:
        f.seek(member.header_offset)
        local = f.read(30)  # the zip local file header, then its name and extra field
    if local[:4] != b"PK\x03\x04":
        raise DataError(f"{path} has a broken zip header; the file is corrupted, get it again")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return member.header_offset + 30 + name_len + extra_len + npy_header


def _open_batch(path: Path) -> tuple[_Batch, np.ndarray]:
    """Check one batch's ``data`` header and read its labels (0-indexed), not its pixels."""
    try:
        with zipfile.ZipFile(path) as zf:
            member = zf.getinfo("data.npy")
            with zf.open(member) as fp:
                version = np.lib.format.read_magic(fp)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(fp)
                npy_header = fp.tell()
        with np.load(path) as npz:
            labels = np.asarray(npz["labels"], dtype=np.int64).reshape(-1)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read {path}: {e}; the file is corrupted, get it again") from e
    if dtype != np.uint8 or len(shape) != 2 or shape[1] != ROW:
        raise DataError(f"{path} has data {dtype} {shape}, expected uint8 (n, {ROW})")
    if len(labels) != shape[0] or (labels.size and not 1 <= labels.min() <= labels.max() <= 1000):
        raise DataError(f"{path} has {len(labels)} labels for {shape[0]} images, or not in 1..1000")
    stored = member.compress_type == zipfile.ZIP_STORED and not fortran and shape[0] > 0
    offset = _raw_offset(path, member, npy_header) if stored else None
    return _Batch(path, shape[0], offset), labels - 1


class ImageNet64(Dataset[tuple[Tensor, int]]):
    """Downsampled ImageNet 64×64 over npz batches, read lazily (see the module docstring).

    Attributes:
        labels: ``(N,)`` int64 class indices 0..999.
        info: channels (3), image size and number of classes (1000).
    """

    def __init__(self, paths: list[Path], image_size: int | None = None) -> None:
        opened = [_open_batch(p) for p in paths]
        self._batches = [b for b, _ in opened]
        self._starts = np.cumsum([0] + [b.rows for b in self._batches])  # first row per batch
        self._arrays: dict[int, np.ndarray] = {}
        self.labels = torch.from_numpy(np.concatenate([labels for _, labels in opened]))
        self.image_size = image_size or NATIVE_SIZE
        self.info = DataInfo(3, self.image_size, NUM_CLASSES)

    def _pixels(self, k: int) -> np.ndarray:
        """The ``(n, 12288)`` pixels of batch ``k``: memory-mapped, or decompressed once."""
        if k not in self._arrays:
            batch = self._batches[k]
            if batch.offset is not None:
                shape = (batch.rows, ROW)
                self._arrays[k] = np.memmap(batch.path, np.uint8, "r", batch.offset, shape)
            else:
                with np.load(batch.path) as npz:
                    self._arrays[k] = npz["data"]
        return self._arrays[k]

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        k = int(np.searchsorted(self._starts, index, side="right")) - 1
        row = np.array(self._pixels(k)[index - self._starts[k]])  # copy out of the map
        image = uint8_to_float(torch.from_numpy(row).view(3, NATIVE_SIZE, NATIVE_SIZE))
        return fit_square(image, self.image_size), int(self.labels[index])

    def __getstate__(self) -> dict[str, Any]:
        # Maps and decompressed arrays are reopened in each worker, never pickled.
        return {**self.__dict__, "_arrays": {}}


def imagenet64(
    root: Path | None, split: str, image_size: int | None = None, download: bool = False
) -> ImageNet64:
    """Downsampled ImageNet 64×64 (or ``image_size``), 1000 classes; ``root`` is required.

    ``download`` only changes the message for missing files: ImageNet needs a login.
    """
    if root is None:
        raise DataError(f"ImageNet64 needs root=<folder with the npz batches>; {_HOW_TO_GET}")
    return ImageNet64([_locate(root, name, download) for name in FILES[split]], image_size)
