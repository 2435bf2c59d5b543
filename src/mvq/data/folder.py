"""Any folder of images (png, jpg, jpeg, bmp, webp), searched recursively.

Splits: when ``root`` has a ``train/`` subfolder, ``train`` = ``root/train`` and ``val`` =
``root/val``. Otherwise the whole of ``root`` is ``train`` and asking for ``val`` is an error:
no hold-out is carved out silently, so what is trained on is always what the user laid out.

Labels: when every image of a split lies in a subfolder, the label is the index of its
first-level subfolder name among the sorted subfolders of the train folder (as torchvision's
``ImageFolder``); images lying directly in the split folder make the whole split unlabeled (-1).
Hidden files and folders (``.name``) are skipped.

Size: with ``image_size`` each image's shorter side is resized to it (bilinear, antialiased)
and the other side center-cropped. Without it, all images must be square and of one size (that
of the first image, checked as each image is read). Images are converted to RGB
(``channels=3``) or grayscale (``channels=1``).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from mvq.data.base import DataError, DataInfo, fit_square, uint8_to_float

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_MODES = {1: "L", 3: "RGB"}
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted), skipping hidden files and folders."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )


def _split_folder(root: Path, split: str) -> Path:
    """The folder holding ``split``'s images."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; pass root=<a folder of images>")
    if (root / "train").is_dir():
        if not (root / split).is_dir():
            raise DataError(f"{root} has train/ but no {split}/ subfolder; create {root / split}")
        return root / split
    if split != "train":
        raise DataError(
            f"{root} has no train/ and {split}/ subfolders, so only the train split exists; "
            f"put images in {root / 'train'} and {root / split}"
        )
    return root


def _class_names(root: Path) -> list[str]:
    """Sorted, non-hidden subfolder names of the train folder."""
    train = root / "train" if (root / "train").is_dir() else root
    return sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))


def _open(path: str | Path, mode: str) -> Image.Image:
    """The image at ``path`` converted to ``mode``."""
    try:
        with Image.open(path) as im:
            return im.convert(mode)
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"cannot read image {path}: {e}; remove or replace the file") from e


def _mode_of(path: Path) -> str:
    """The PIL mode of the image at ``path`` (reads the header only)."""
    try:
        with Image.open(path) as im:
            return im.mode
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"cannot read image {path}: {e}; remove or replace the file") from e


def detect_channels(files: list[Path]) -> int:
    """1 when every image of ``files`` is grayscale, else 3 (stops at the first colour one)."""
    return 1 if all(_mode_of(f) in GRAY_MODES for f in files) else 3


def check_channels(channels: object) -> int:
    """``channels`` if it is 1 or 3; anything else is a one-line ``DataError``."""
    if isinstance(channels, bool) or channels not in _MODES:
        raise DataError(
            f"data.channels must be 1 (grayscale) or 3 (RGB) for an image folder, got "
            f"{channels!r}; leave it unset to detect it from the images"
        )
    return channels  # type: ignore[return-value]


def read_image(path: str | Path, channels: int, image_size: int) -> Tensor:
    """The image at ``path`` as float ``(channels, image_size, image_size)`` in [-1, 1]:
    converted to grayscale or RGB, shorter side resized and the other center-cropped."""
    pixels = TF.pil_to_tensor(_open(path, _MODES[check_channels(channels)]))  # (C, H, W) uint8
    return fit_square(uint8_to_float(pixels), image_size)


class ImageFolder(Dataset[tuple[Tensor, int]]):
    """The images of one split of a folder (see the module docstring for the rules).

    Attributes:
        files: the image paths, sorted.
        file_labels: one label per file (-1 when unlabeled).
        classes: class names, index = label (empty when unlabeled).
        info: channels, image size and number of classes (0 when unlabeled).
    """

    def __init__(
        self, root: Path, split: str, image_size: int | None = None, channels: int | None = None
    ) -> None:
        if channels is not None:
            check_channels(channels)
        folder = _split_folder(root, split)
        self.files = list_images(folder)
        if not self.files:
            raise DataError(f"no images ({', '.join(EXTENSIONS)}) found under {folder}")
        if channels is None:
            channels = detect_channels(list_images(root))  # both splits: they must agree
        self.classes, self.file_labels = _labels(root, folder, self.files)
        self.mode = _MODES[channels]
        self.check_size = image_size is None  # native size: every image must match the first
        if image_size is None:
            width, height = _open(self.files[0], self.mode).size
            if width != height:
                raise DataError(
                    f"{self.files[0]} is {width}×{height}, not square; pass image_size to resize"
                )
            image_size = width
        self.image_size = image_size
        self.info = DataInfo(channels, image_size, len(self.classes))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path = self.files[index]
        pixels = TF.pil_to_tensor(_open(path, self.mode))  # (C, H, W) uint8
        if self.check_size and pixels.shape[-2:] != (self.image_size, self.image_size):
            raise DataError(
                f"{path} is {pixels.shape[-1]}×{pixels.shape[-2]} but the first image is "
                f"{self.image_size}×{self.image_size}; pass image_size to resize all images"
            )
        return fit_square(uint8_to_float(pixels), self.image_size), self.file_labels[index]


def _labels(root: Path, folder: Path, files: list[Path]) -> tuple[list[str], list[int]]:
    """Class names and per-file labels: from first-level subfolders, or none (-1)."""
    if any(len(f.relative_to(folder).parts) == 1 for f in files):
        return [], [-1] * len(files)
    classes = _class_names(root)
    index = {name: i for i, name in enumerate(classes)}
    labels = []
    for f in files:
        name = f.relative_to(folder).parts[0]
        if name not in index:
            raise DataError(
                f"{f} is in class folder '{name}', which the train folder lacks; "
                f"class folders there: {', '.join(classes)}"
            )
        labels.append(index[name])
    return classes, labels


def image_folder(
    root: Path | None,
    split: str,
    image_size: int | None = None,
    download: bool = False,
    channels: int | None = None,
) -> ImageFolder:
    """A folder of images as a data set; ``root`` is required (``download`` has no effect);
    ``channels`` None detects grayscale or RGB from the images."""
    if root is None:
        raise DataError("the folder data set needs root=<a folder of images>")
    return ImageFolder(root, split, image_size, channels)
