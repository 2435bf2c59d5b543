"""CelebA at 64×64 from the aligned-and-cropped images.

Layout: ``root/celeba/img_align_celeba/*.jpg`` and ``root/celeba/list_eval_partition.txt`` (or
``root`` being the ``celeba`` folder). Splits follow the partition file: ``train`` = 0 (162,770
images), ``val`` = 1 ("valid", 19,867), ``test`` = 2 (19,962). Unlabeled: labels are -1.

Preprocessing is the usual one for 64×64 CelebA: center crop 148×148 of the 178×218 image,
then resize (bilinear, antialiased) to 64×64, or straight to ``image_size`` when given.

Images are read by a small reader here rather than through ``torchvision.datasets.CelebA``,
which checks the md5 of five annotation files that this data set does not use. torchvision is
used only to download (from Google Drive, which often hits its quota: then get the files by
hand from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from mvq.data.base import DataError, DataInfo, default_root, fit_square, uint8_to_float

CROP = 148
NATIVE_SIZE = 64
PARTITIONS = {"train": 0, "val": 1, "test": 2}


def read_partition(path: Path) -> dict[int, list[str]]:
    """Image file names per partition (0, 1, 2) from ``list_eval_partition.txt``."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}; the file is corrupted, get it again") from e
    parts: dict[int, list[str]] = {0: [], 1: [], 2: []}
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DataError(
                f"{path} line {number} is {line!r}, expected '<image>.jpg <0|1|2>'; "
                "the file is corrupted, get it again"
            )
        parts[int(fields[1])].append(fields[0])
    return parts


def _folder(root: Path, download: bool) -> Path:
    """The ``celeba`` folder, downloading CelebA into ``root`` if asked and absent."""
    found = next(
        (c for c in (root / "celeba", root) if (c / "list_eval_partition.txt").is_file()), None
    )
    if found is None and download:
        from torchvision.datasets import CelebA

        try:
            CelebA(str(root), split="all", target_type=[], download=True)
        except (OSError, RuntimeError) as e:
            raise DataError(
                f"downloading CelebA into {root} failed: {e}; get img_align_celeba.zip and "
                "list_eval_partition.txt from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
            ) from e
        found = root / "celeba"
    if found is None:
        raise DataError(
            f"CelebA not found: no celeba/list_eval_partition.txt in {root}; pass root=<folder "
            "holding celeba/> or download=True (--download)"
        )
    if not (found / "img_align_celeba").is_dir():
        raise DataError(
            f"no img_align_celeba/ folder in {found}; extract img_align_celeba.zip there"
        )
    return found


class CelebA64(Dataset[tuple[Tensor, int]]):
    """CelebA images center-cropped to 148 and resized to ``image_size`` (default 64).

    Attributes:
        files: the image paths of the split, in partition-file order.
        info: channels (3), image size and number of classes (0: labels are -1).
    """

    def __init__(self, folder: Path, split: str, image_size: int | None = None) -> None:
        names = read_partition(folder / "list_eval_partition.txt")[PARTITIONS[split]]
        if not names:
            raise DataError(f"{folder / 'list_eval_partition.txt'} lists no {split} images")
        self.files = [folder / "img_align_celeba" / n for n in names]
        self.image_size = image_size or NATIVE_SIZE
        self.info = DataInfo(3, self.image_size, 0)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path = self.files[index]
        try:
            with Image.open(path) as im:
                pixels = TF.pil_to_tensor(im.convert("RGB"))  # (3, H, W) uint8
        except (OSError, UnidentifiedImageError) as e:
            raise DataError(f"cannot read CelebA image {path}: {e}; extract it again") from e
        if min(pixels.shape[-2:]) < CROP:
            raise DataError(
                f"{path} is {pixels.shape[-1]}×{pixels.shape[-2]}, smaller than the {CROP} crop; "
                "use the aligned 178×218 img_align_celeba images"
            )
        crop = uint8_to_float(TF.center_crop(pixels, [CROP, CROP]))
        return fit_square(crop, self.image_size), -1


def celeba64(
    root: Path | None, split: str, image_size: int | None = None, download: bool = False
) -> CelebA64:
    """CelebA 64×64 (or ``image_size``), splits ``train``/``val``/``test``, labels -1."""
    folder = _folder(root if root is not None else default_root("celeba64"), download)
    return CelebA64(folder, split, image_size)
