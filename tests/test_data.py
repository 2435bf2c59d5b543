"""Data sets: tiny files in each real on-disk format, read through ``build_dataset``."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
from PIL import Image

from mvq.data import (
    DATASETS,
    DataError,
    DataInfo,
    Table2,
    build_dataset,
    data_channels,
    dataset_info,
    paper_data,
    uint8_to_float,
)

# ---------------------------------------------------------------- writers of the real formats


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX uint8 file (gzipped when ``path`` ends in .gz)."""
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def fake_fashion(root: Path, gz: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Five train and three val 28×28 images with their labels."""
    rng = np.random.default_rng(0)
    data = {}
    for split, prefix, n in (("train", "train", 5), ("val", "t10k", 3)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[0, 0, :2] = (0, 255)
        labels = np.arange(n, dtype=np.uint8) + 2
        ext = ".gz" if gz else ""
        write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        data[split] = (images, labels)
    return data


def cifar_pixels(k: int) -> np.ndarray:
    """Row ``k`` of a CIFAR batch: R plane k, G plane 100 + k, B plane 255 - k."""
    return np.concatenate([np.full(1024, v, np.uint8) for v in (k, 100 + k, 255 - k)])


def fake_cifar(root: Path) -> Path:
    """cifar-10-batches-py with 2 images per data batch and 3 in test_batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    files = [(f"data_batch_{i}", 2) for i in range(1, 6)] + [("test_batch", 3)]
    k = 0
    for name, n in files:
        entry = {
            b"batch_label": name.encode(),
            b"data": np.stack([cifar_pixels(k + j) for j in range(n)]),
            b"labels": [(k + j) % 10 for j in range(n)],
            b"filenames": [f"img_{k + j}.png".encode() for j in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        k += n
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    names += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    meta = {b"label_names": names, b"num_cases_per_batch": 2, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def fake_celeba(root: Path) -> Path:
    """celeba/ with six solid-color 178×218 jpgs: 3 train, 2 valid, 1 test."""
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    lines = []
    for i, part in enumerate((0, 0, 0, 1, 1, 2)):
        name = f"{i + 1:06d}.jpg"
        Image.new("RGB", (178, 218), (255, 0, 40 * i)).save(folder / "img_align_celeba" / name)
        lines.append(f"{name} {part}")
    (folder / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return folder


def imagenet_rows(n: int, start: int) -> np.ndarray:
    """``n`` rows of 12288 uint8: row k has R, G, B planes k, k + 1, k + 2 (k = start + i)."""
    ks = np.arange(start, start + n)[:, None, None] + np.arange(3)[None, :, None]
    return np.broadcast_to(ks, (n, 3, 4096)).reshape(n, 12288).astype(np.uint8)


def fake_imagenet(root: Path, compressed: bool = False) -> None:
    """Ten train batches of 2 rows and a val batch of 3, in a subfolder like the zips make."""
    save = np.savez_compressed if compressed else np.savez
    (root / "Imagenet64_train").mkdir(parents=True)
    for i in range(1, 11):
        data = imagenet_rows(2, 2 * (i - 1))
        labels = [2 * (i - 1) + 1, 2 * (i - 1) + 2]  # 1-indexed on disk
        save(
            root / "Imagenet64_train" / f"train_data_batch_{i}.npz",
            data=data,
            labels=labels,
            mean=data.mean(0),
        )
    save(root / "val_data.npz", data=imagenet_rows(3, 50), labels=[1000, 1, 7])


def save_png(path: Path, size: tuple[int, int], value: int = 255, mode: str = "RGB") -> None:
    """A solid image of ``size`` (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 0, 0)).save(path)


def fake_folder(root: Path) -> Path:
    """An image folder with class subfolders cat/ (2 images) and dog/ (1 image)."""
    save_png(root / "cat" / "a.png", (8, 8))
    save_png(root / "cat" / "nested" / "b.jpg", (8, 8))
    save_png(root / "dog" / "c.png", (8, 8), value=0)
    (root / "cat" / "notes.txt").write_text("not an image")
    save_png(root / ".hidden" / "x.png", (5, 5))
    return root


MAKERS = {
    "fashion_mnist": fake_fashion,
    "cifar10": fake_cifar,
    "celeba64": fake_celeba,
    "imagenet64": fake_imagenet,
    "folder": fake_folder,
}

# ---------------------------------------------------------------- contracts for every data set


def test_uint8_maps_exactly_to_signed_unit_range() -> None:
    x = uint8_to_float(torch.tensor([0, 1, 128, 254, 255], dtype=torch.uint8))
    assert x.dtype == torch.float32
    assert x[0] == -1.0 and x[-1] == 1.0
    assert torch.allclose(x, torch.tensor([0, 1, 128, 254, 255]) / 127.5 - 1)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_dataset_builds_and_matches_its_info(name: str, tmp_path: Path) -> None:
    MAKERS[name](tmp_path)
    for size in (None, 16):
        ds = build_dataset(name, tmp_path, "train", image_size=size)
        image, label = ds[0]
        info = ds.info
        assert isinstance(info, DataInfo) and isinstance(label, int)
        assert image.dtype == torch.float32
        assert image.shape == (info.channels, info.image_size, info.image_size)
        assert info.image_size == (size or dataset_info(name).image_size or 8)
        assert -1.0 <= image.min() and image.max() <= 1.0
        assert info.channels == dataset_info(name).channels
        assert (label == -1) == (info.num_classes == 0)


def test_dataset_info_values() -> None:
    assert dataset_info("fashion_mnist") == DataInfo(1, 28, 10)
    assert dataset_info("cifar10") == DataInfo(3, 32, 10)
    assert dataset_info("celeba64") == DataInfo(3, 64, 0)
    assert dataset_info("imagenet64") == DataInfo(3, 64, 1000)
    assert dataset_info("folder") == DataInfo(3, None, 0)


def test_paper_data_is_the_table_2_row_of_a_tag() -> None:
    assert paper_data("fmnist") == ("fashion_mnist", DataInfo(1, 28, 10), Table2("fmnist", 16, 350))
    assert paper_data("cifar10")[2] == Table2("cifar10", 96, 650)
    assert [s.paper for s in DATASETS.values()].count(None) == 1  # only folder is not the paper's
    with pytest.raises(DataError, match="did you mean 'fmnist'"):
        paper_data("fmnis")


# ---------------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_values_labels_and_sizes(tmp_path: Path, gz: bool) -> None:
    data = fake_fashion(tmp_path, gz=gz)
    for split, n in (("train", 5), ("val", 3)):
        ds = build_dataset("fashion_mnist", tmp_path, split)
        images, labels = data[split]
        assert len(ds) == n and ds.images.dtype == torch.uint8
        assert ds.images.shape == (n, 1, 28, 28)
        assert ds.labels.tolist() == labels.tolist()
        image, label = ds[1]
        assert label == int(labels[1])
        assert torch.equal(image[0], torch.from_numpy(images[1]).float() / 127.5 - 1)
    first, _ = build_dataset("fashion_mnist", tmp_path, "train")[0]
    assert first[0, 0, 0] == -1.0 and first[0, 0, 1] == 1.0


def test_fashion_mnist_resize_and_batch(tmp_path: Path) -> None:
    fake_fashion(tmp_path)
    ds = build_dataset("fashion_mnist", tmp_path, "train", image_size=32)
    images, labels = ds.batch(torch.tensor([0, 2]))
    assert images.shape == (2, 1, 32, 32) and labels.tolist() == [2, 4]
    assert torch.allclose(images[1], ds[2][0])


def test_fashion_mnist_torchvision_layout(tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    fake_fashion(raw, gz=False)
    assert len(build_dataset("fashion_mnist", tmp_path, "val")) == 3


def test_fashion_mnist_download_lands_where_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_download(root: str, train: bool, download: bool) -> None:
        raw = Path(root) / "FashionMNIST" / "raw"  # where torchvision puts the files
        raw.mkdir(parents=True)
        fake_fashion(raw)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake_download)
    assert len(build_dataset("fashion_mnist", tmp_path, "train", download=True)) == 5


def test_cifar10_download_lands_where_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_download(root: str, train: bool, download: bool) -> None:
        fake_cifar(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_download)
    assert len(build_dataset("cifar10", tmp_path, "val", download=True)) == 3


def test_failed_download_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nno network")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DataError, match="no network; check the network") as err:
        build_dataset("fashion_mnist", tmp_path, "train", download=True)
    assert "\n" not in str(err.value)


def test_fashion_mnist_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as err:
        build_dataset("fashion_mnist", tmp_path, "train")
    assert str(tmp_path) in str(err.value)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda raw: raw[: len(raw) // 2], "corrupted"),  # truncated gzip stream
        (lambda raw: gzip.compress(gzip.decompress(raw)[:-10]), "truncated"),
        (lambda raw: gzip.compress(b"\x00\x00\x09\x03" + gzip.decompress(raw)[4:]), "bad header"),
    ],
)
def test_fashion_mnist_corrupt_file(tmp_path: Path, damage, message: str) -> None:
    fake_fashion(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=message) as err:
        build_dataset("fashion_mnist", tmp_path, "train")
    assert str(path) in str(err.value)


@pytest.mark.real_data
def test_real_fashion_mnist_from_its_default_place() -> None:
    """Debian's dataset-fashion-mnist (or the user cache): the real files, read with root=None."""
    train = build_dataset("fashion_mnist", None, "train")
    val = build_dataset("fashion_mnist", None, "val")
    assert (len(train), len(val)) == (60000, 10000)
    assert train[0][1] == 9 and val[0][1] == 9  # both start with an ankle boot
    assert train.labels.bincount().tolist() == [6000] * 10


# ---------------------------------------------------------------- CIFAR-10


def test_cifar10_planes_labels_and_splits(tmp_path: Path) -> None:
    fake_cifar(tmp_path)
    train = build_dataset("cifar10", tmp_path, "train")
    val = build_dataset("cifar10", tmp_path / "cifar-10-batches-py", "val")
    assert (len(train), len(val)) == (10, 3)
    assert train.classes[0] == "airplane" and train.classes[9] == "truck"
    image, label = train[7]
    assert label == 7 and image.shape == (3, 32, 32)
    assert image[:, 5, 9].tolist() == pytest.approx(
        [7 / 127.5 - 1, 107 / 127.5 - 1, 248 / 127.5 - 1]
    )
    assert val.labels.tolist() == [0, 1, 2]  # k = 10, 11, 12
    assert val.images[2, 0].unique().tolist() == [12]
    assert build_dataset("cifar10", tmp_path, "val", image_size=64)[0][0].shape == (3, 64, 64)


def test_cifar10_missing_and_corrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="download=True"):
        build_dataset("cifar10", None, "train")
    folder = fake_cifar(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        build_dataset("cifar10", tmp_path, "train")
    (folder / "test_batch").write_bytes(b"\x80\x02}q\x00(X")
    with pytest.raises(DataError, match="test_batch.*corrupted"):
        build_dataset("cifar10", tmp_path, "val")


def test_cifar10_reader_refuses_code_in_pickles(tmp_path: Path) -> None:
    folder = fake_cifar(tmp_path)
    (folder / "test_batch").write_bytes(b"cos\nsystem\n(S'echo hacked'\ntR.")
    with pytest.raises(DataError, match="unexpected object os.system"):
        build_dataset("cifar10", tmp_path, "val")


# ---------------------------------------------------------------- CelebA


def test_celeba64_partitions_crop_and_resize(tmp_path: Path) -> None:
    fake_celeba(tmp_path)
    sizes = {s: len(build_dataset("celeba64", tmp_path, s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 3, "val": 2, "test": 1}
    image, label = build_dataset("celeba64", tmp_path, "val")[1]  # 000005.jpg, color (255, 0, 160)
    assert image.shape == (3, 64, 64) and label == -1
    expected = torch.tensor([255, 0, 160]) / 127.5 - 1
    assert torch.allclose(image.mean((1, 2)), expected, atol=0.05)
    small = build_dataset("celeba64", tmp_path / "celeba", "test", image_size=32)
    assert small[0][0].shape == (3, 32, 32)


def test_celeba64_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="list_eval_partition.txt"):
        build_dataset("celeba64", tmp_path, "train")
    folder = fake_celeba(tmp_path)
    (folder / "img_align_celeba" / "000002.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="000002.jpg"):
        build_dataset("celeba64", tmp_path, "train")[1]
    (folder / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg train\n")
    with pytest.raises(DataError, match="line 2"):
        build_dataset("celeba64", tmp_path, "train")


# ---------------------------------------------------------------- ImageNet 64×64


@pytest.mark.parametrize("compressed", [False, True])
def test_imagenet64_planes_labels_and_splits(tmp_path: Path, compressed: bool) -> None:
    fake_imagenet(tmp_path, compressed)
    train = build_dataset("imagenet64", tmp_path, "train")
    val = build_dataset("imagenet64", tmp_path, "val")
    assert (len(train), len(val)) == (20, 3)
    assert train.labels.tolist() == list(range(20))  # 1-indexed on disk, 0-indexed here
    assert val.labels.tolist() == [999, 0, 6]
    for index in (0, 13, -1):
        image, label = train[index]
        k = index % 20
        assert label == k and image.shape == (3, 64, 64)
        assert torch.equal(image[:, 31, 2], torch.tensor([k, k + 1, k + 2]) / 127.5 - 1)
    again = pickle.loads(pickle.dumps(train))  # as sent to a DataLoader worker
    assert torch.equal(again[13][0], train[13][0])
    assert build_dataset("imagenet64", tmp_path, "val", image_size=32)[2][0].shape == (3, 32, 32)
    with pytest.raises(IndexError):
        train[20]


def test_imagenet64_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="image-net.org"):
        build_dataset("imagenet64", tmp_path, "val")
    with pytest.raises(DataError, match="cannot be downloaded"):
        build_dataset("imagenet64", tmp_path, "val", download=True)
    np.savez(tmp_path / "val_data.npz", data=imagenet_rows(2, 0), labels=[0, 1])
    with pytest.raises(DataError, match="1..1000"):
        build_dataset("imagenet64", tmp_path, "val")
    (tmp_path / "val_data.npz").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(DataError, match="val_data.npz.*corrupted"):
        build_dataset("imagenet64", tmp_path, "val")


# ---------------------------------------------------------------- image folders


def test_folder_classes_from_subfolders(tmp_path: Path) -> None:
    ds = build_dataset("folder", fake_folder(tmp_path), "train")
    assert ds.classes == ["cat", "dog"] and ds.file_labels == [0, 0, 1]
    assert ds.info == DataInfo(3, 8, 2)
    image, label = ds[2]
    assert label == 1 and torch.equal(image, torch.full((3, 8, 8), -1.0))
    assert torch.equal(ds[0][0][0], torch.ones(8, 8))  # red: R = 255 → 1, G = B = 0 → -1
    gray = build_dataset("folder", tmp_path, "train", channels=1)
    assert gray[0][0].shape == (1, 8, 8)


def test_folder_unlabeled_resized_and_train_val(tmp_path: Path) -> None:
    save_png(tmp_path / "flat" / "a.png", (20, 10))
    save_png(tmp_path / "flat" / "sub" / "b.webp", (10, 10))
    ds = build_dataset("folder", tmp_path / "flat", "train", image_size=6)
    assert [label for _, label in ds] == [-1, -1] and ds.info.num_classes == 0
    assert ds[0][0].shape == (3, 6, 6)
    save_png(tmp_path / "tv" / "train" / "x" / "a.png", (4, 4))
    save_png(tmp_path / "tv" / "train" / "y" / "b.png", (4, 4))
    save_png(tmp_path / "tv" / "val" / "y" / "c.png", (4, 4))
    val = build_dataset("folder", tmp_path / "tv", "val")
    assert len(val) == 1 and val[0][1] == 1


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="needs root"):
        build_dataset("folder", None, "train")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        build_dataset("folder", tmp_path / "empty", "train")
    save_png(tmp_path / "mixed" / "a.png", (8, 8))
    save_png(tmp_path / "mixed" / "b.png", (9, 9))
    with pytest.raises(DataError, match="only the train split"):
        build_dataset("folder", tmp_path / "mixed", "val")
    ds = build_dataset("folder", tmp_path / "mixed", "train")
    with pytest.raises(DataError, match="pass image_size"):
        ds[1]
    save_png(tmp_path / "wide" / "a.png", (8, 4))
    with pytest.raises(DataError, match="not square"):
        build_dataset("folder", tmp_path / "wide", "train")
    with pytest.raises(DataError, match="channels"):
        build_dataset("folder", tmp_path / "mixed", "train", channels=4)


def test_folder_channels_detected_or_set(tmp_path: Path) -> None:
    save_png(tmp_path / "gray" / "train" / "a.png", (12, 9), mode="L")
    save_png(tmp_path / "gray" / "val" / "b.jpg", (9, 9), mode="L")
    gray = build_dataset("folder", tmp_path / "gray", "val", image_size=4)
    assert gray.info.channels == 1 and gray[0][0].shape == (1, 4, 4)
    assert data_channels("folder", tmp_path / "gray") == 1
    rgb = build_dataset("folder", tmp_path / "gray", "train", image_size=4, channels=3)
    assert rgb[0][0].shape == (3, 4, 4)  # set: converted
    save_png(tmp_path / "gray" / "val" / "c.png", (9, 9))  # one colour image: RGB for both splits
    assert build_dataset("folder", tmp_path / "gray", "train", image_size=4).info.channels == 3
    assert data_channels("folder", tmp_path / "gray") == 3
    assert data_channels("fashion_mnist", None) == 1
    for bad in (2, 4, "rgb", True):
        with pytest.raises(DataError, match="data.channels must be 1 .grayscale. or 3 .RGB."):
            build_dataset("folder", tmp_path / "gray", "train", channels=bad)
        with pytest.raises(DataError, match="data.channels must be 1"):
            data_channels("folder", tmp_path / "gray", bad)


# ---------------------------------------------------------------- names and splits


def test_unknown_name_split_and_channels_are_one_line_errors(tmp_path: Path) -> None:
    cases = [
        (dict(name="cifar_10", split="train"), "did you mean 'cifar10'"),
        (dict(name="fashion_mnist", split="valid"), "did you mean 'val'"),
        (dict(name="cifar10", split="train", channels=1), "channels=1"),
        (dict(name="cifar10", split="train", image_size=0), "image_size"),
    ]
    for kwargs, message in cases:
        with pytest.raises(DataError, match=message) as err:
            build_dataset(root=tmp_path, **kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="did you mean 'celeba64'"):
        dataset_info("celeba")
    assert issubclass(DataError, ValueError)
