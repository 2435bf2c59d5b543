"""``fd_fmnist``: the Fréchet distance on the features of a Fashion-MNIST classifier.

Standard FID needs Inception weights that an offline machine lacks; this domain Fréchet
distance needs nothing but Fashion-MNIST. It is *not* FID and is never called so (SPEC
"Metrics"). The classifier is a small conv net (3 conv-BN-ReLU-pool blocks, a 128-d ReLU
layer, a linear head) that mvq trains once (a few CPU minutes, >= 91% test accuracy) and caches
in ``$MVQ_CACHE_DIR/fd_fmnist/`` (default ``~/.cache/mvq/fd_fmnist/``) as
``<key>.safetensors`` + ``<key>.json``. The key hashes the training config (architecture,
feature layer, seed, schedule) and the SHA-256 of the four data files; the JSON also records
the test accuracy and training time. A cached classifier is reused; training only happens when
no file has the key, and says so on stderr.

Features: the penultimate layer (``fc1``, 128-d, after ReLU) of uint8 ``(N, 1, 28, 28)``
images mapped to [-1, 1] like the data. ``fd_fmnist_floor``: the distance between two random
halves of the real reference images, the value a perfect model would reach at that size;
report it beside every number.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import tqdm

from mvq.metrics.frechet import frechet_distance

FEATURE_LAYER = "fc1 (penultimate, after ReLU)"
ARCH_VERSION = 1
ENV_CACHE = "MVQ_CACHE_DIR"
IMAGE_SHAPE = (1, 28, 28)


@dataclass(frozen=True)
class ClassifierConfig:
    """The classifier and its training schedule; every field is part of the cache key.

    Attributes:
        width: channels of the first conv block (then 2x, 4x).
        feature_dim: width of the penultimate layer (the features).
        epochs, batch_size, lr, weight_decay: AdamW with a one-cycle schedule.
        hflip: random horizontal flips while training.
        seed: seed of the weights, the order and the flips.
        train_subset: train on the first N training images only (0: all 60,000; tests).
    """

    width: int = 16
    feature_dim: int = 128
    epochs: int = 4
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    hflip: bool = True
    seed: int = 0
    train_subset: int = 0


class FMNISTClassifier(nn.Module):
    """conv(w)-pool-conv(2w)-pool-conv(4w)-pool -> fc1 (feature_dim, ReLU) -> fc2 (10)."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True), nn.MaxPool2d(2)]  # fmt: skip

        self.convs = nn.Sequential(*block(1, w), *block(w, 2 * w), *block(2 * w, 4 * w))
        self.fc1 = nn.Linear(4 * w * 3 * 3, config.feature_dim)  # 28 -> 14 -> 7 -> 3
        self.fc2 = nn.Linear(config.feature_dim, 10)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``(B, feature_dim)`` of images ``(B, 1, 28, 28)`` in [-1, 1]."""
        return F.relu(self.fc1(self.convs(x).flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(B, 10)``."""
        return self.fc2(self.features(x))


@dataclass
class CachedClassifier:
    """A trained classifier and what the cache records about it."""

    model: FMNISTClassifier
    meta: dict


def cache_root() -> Path:
    """``$MVQ_CACHE_DIR`` or ``$XDG_CACHE_HOME/mvq`` (default ``~/.cache/mvq``)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "mvq"


def data_files(root: str | os.PathLike | None = None) -> list[Path]:
    """The four Fashion-MNIST IDX files (train/test images/labels) found by ``mvq.data``."""
    from mvq.data.fashion_mnist import _locate

    path = Path(root) if root is not None else None
    return [p for split in ("train", "val") for p in _locate(path, split, download=False)]


def data_hash(root: str | os.PathLike | None = None) -> str:
    """SHA-256 over the four data files' contents (gzipped or not, as found)."""
    h = hashlib.sha256()
    for path in data_files(root):
        h.update(path.name.removesuffix(".gz").encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def cache_key(config: ClassifierConfig, data_sha256: str) -> str:
    """Hash of the architecture version, feature layer, training config and data."""
    what = {"arch": ARCH_VERSION, "layer": FEATURE_LAYER, "config": asdict(config),
            "data": data_sha256}  # fmt: skip
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def images_to_input(images: Tensor) -> Tensor:
    """uint8 ``(N, 1, 28, 28)`` -> float32 in [-1, 1]; other shapes are a clear error."""
    if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise ValueError(
            f"fd_fmnist needs uint8 images (N, 1, 28, 28) like Fashion-MNIST, got "
            f"{images.dtype} {tuple(images.shape)}"
        )
    return images.float() / 127.5 - 1.0


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy on uint8 images ``(N, 1, 28, 28)``."""
    model.eval()
    hits = 0
    for i in range(0, len(images), batch_size):
        predicted = model(images_to_input(images[i : i + batch_size])).argmax(1)
        hits += int((predicted == labels[i : i + batch_size]).sum())
    return hits / len(images)


def _load_split(root: str | os.PathLike | None, split: str) -> tuple[Tensor, Tensor]:
    from mvq.data import build_dataset

    ds = build_dataset("fashion_mnist", root, split)
    return ds.images, ds.labels  # (N, 1, 28, 28) uint8, (N,) int64


def train_classifier(
    config: ClassifierConfig = ClassifierConfig(), root: str | os.PathLike | None = None
) -> CachedClassifier:
    """Train the classifier on the training split (progress bar), test on the test split."""
    torch.manual_seed(config.seed)
    model = FMNISTClassifier(config)
    images, labels = _load_split(root, "train")
    if config.train_subset:
        images, labels = images[: config.train_subset], labels[: config.train_subset]
    steps_per_epoch = len(images) // config.batch_size
    opt = torch.optim.AdamW(model.parameters(), config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, config.lr, total_steps=config.epochs * steps_per_epoch
    )
    g = torch.Generator().manual_seed(config.seed)
    t0, cpu0 = time.perf_counter(), time.process_time()
    bar = tqdm(total=config.epochs * steps_per_epoch, desc="fd_fmnist classifier", file=sys.stderr)
    for _ in range(config.epochs):
        model.train()
        order = torch.randperm(len(images), generator=g)
        for i in range(steps_per_epoch):
            idx = order[i * config.batch_size : (i + 1) * config.batch_size]
            x = images_to_input(images[idx])  # (B, 1, 28, 28)
            if config.hflip:
                flip = torch.rand(len(x), generator=g) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    test_images, test_labels = _load_split(root, "val")
    meta = {"accuracy": accuracy(model, test_images, test_labels), "feature_layer": FEATURE_LAYER,
            "feature_dim": config.feature_dim, "config": asdict(config),
            "train_seconds": round(seconds, 1), "train_cpu_seconds": round(cpu_seconds, 1),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__}  # fmt: skip
    return CachedClassifier(model.eval(), meta)


def save_classifier(classifier: CachedClassifier, directory: Path, key: str) -> Path:
    """Write ``<key>.safetensors`` and ``<key>.json`` atomically (rename into place)."""
    directory.mkdir(parents=True, exist_ok=True)
    weights, meta = directory / f"{key}.safetensors", directory / f"{key}.json"
    tmp = directory / f".{key}.{os.getpid()}"
    save_file(classifier.model.state_dict(), f"{tmp}.safetensors")
    Path(f"{tmp}.json").write_text(json.dumps(classifier.meta | {"key": key}, indent=2) + "\n")
    os.replace(f"{tmp}.safetensors", weights)
    os.replace(f"{tmp}.json", meta)  # the JSON last: its presence marks a complete entry
    return meta


def load_classifier(
    config: ClassifierConfig = ClassifierConfig(),
    root: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    train_if_missing: bool = True,
) -> CachedClassifier:
    """The cached classifier for ``config`` and the data found at ``root``; trains it once.

    Args:
        config: architecture and schedule (part of the key).
        root: Fashion-MNIST folder (``None``: where ``mvq.data`` finds it).
        cache: cache folder (default ``cache_root() / "fd_fmnist"``).
        train_if_missing: train (announced on stderr) when no entry has the key; else
            ``FileNotFoundError``.
    """
    directory = Path(cache) if cache is not None else cache_root() / "fd_fmnist"
    key = cache_key(config, data_hash(root))
    meta_path = directory / f"{key}.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        model = FMNISTClassifier(config)
        model.load_state_dict(load_file(str(directory / f"{key}.safetensors")))
        return CachedClassifier(model.eval(), meta)
    if not train_if_missing:
        raise FileNotFoundError(
            f"no fd_fmnist classifier cached under {meta_path}: run `mvq eval` once online or "
            "offline with Fashion-MNIST to train it (a few CPU minutes)"
        )
    print(f"mvq: training the fd_fmnist classifier once ({config.epochs} epochs on "
          f"Fashion-MNIST); it is cached as {meta_path}", file=sys.stderr)  # fmt: skip
    classifier = train_classifier(config, root)
    save_classifier(classifier, directory, key)
    classifier.meta["key"] = key
    return classifier


@torch.no_grad()
def classifier_features(model: nn.Module, images: Tensor, batch_size: int = 1000) -> np.ndarray:
    """Penultimate features ``(N, feature_dim)`` float64 of uint8 images ``(N, 1, 28, 28)``."""
    model.eval()
    device = next(model.parameters()).device
    parts = [
        model.features(images_to_input(images[i : i + batch_size]).to(device)).double().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(parts).numpy()


def fd_fmnist(model: nn.Module, images: Tensor, reference: Tensor) -> float:
    """Fréchet distance between the classifier features of two uint8 image sets."""
    return frechet_distance(
        classifier_features(model, images), classifier_features(model, reference)
    )


def fd_floor(reference_features: np.ndarray, seed: int = 0) -> float:
    """FD between two random halves of the real features: what a perfect model reaches."""
    order = np.random.default_rng(seed).permutation(len(reference_features))
    half = len(order) // 2
    return frechet_distance(
        reference_features[order[:half]], reference_features[order[half : 2 * half]]
    )
