"""``fd_fmnist``: the Fréchet distance on the features of a Fashion-MNIST classifier.

Standard FID needs Inception weights that an offline machine lacks; this domain Fréchet
distance needs nothing but Fashion-MNIST. It is *not* FID and is never called so (SPEC
"Metrics"). The classifier is a small conv net (3 conv-BN-ReLU-pool blocks, a 128-d ReLU
layer, a linear head).

A distance is only comparable under one classifier (retraining the same recipe gives other
weights), so mvq ships one as package data: ``mvq/metrics/fd_fmnist_classifier/<key>.safetensors``
+ ``<key>.json`` (weights, test accuracy, training record, SHA-256 of the weights), the one the
replication study measured with. ``mvq eval`` uses it unless told otherwise
(``--fd-classifier local`` or a record's path) and names it in ``eval.json``'s meta.

The key hashes the training config (architecture, feature layer, seed, schedule) and the
decoded training split (the uint8 images and the labels, :func:`data_hash`), so the same
images give the same key whether they come from Debian's ``.gz`` files or torchvision's
unpacked download. :func:`load_classifier` returns the shipped classifier when the key is its
key, else one cached in ``$MVQ_CACHE_DIR/fd_fmnist/`` (default ``~/.cache/mvq/fd_fmnist/``),
training it once (announced on stderr) when no file has the key.

Features: the penultimate layer (``fc1``, 128-d, after ReLU) of uint8 ``(N, 1, 28, 28)``
images mapped to [-1, 1] like the data. ``fd_fmnist_floor``: the distance between two random
halves of the real reference images, the value a perfect model would reach at that size;
report it beside every number.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm import tqdm

from mvq.core.errors import MVQError
from mvq.core.pixels import uint8_to_float
from mvq.metrics.frechet import frechet_distance

FEATURE_LAYER = "fc1 (penultimate, after ReLU)"
ARCH_VERSION = 1
ENV_CACHE = "MVQ_CACHE_DIR"
IMAGE_SHAPE = (1, 28, 28)
SHIPPED_DIR = "fd_fmnist_classifier"  # package data of mvq.metrics
SHIPPED_KEY = "d7ab17a1b3bcd6cd"
SPECS = ("shipped", "local")  # ``--fd-classifier`` besides a record's path


class ClassifierError(MVQError, ValueError):
    """A classifier record or weights file that cannot be used; the message says the fix."""


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
            return [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]

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


def images_digest(images: Tensor, labels: Tensor) -> str:
    """SHA-256 of decoded images (uint8 ``(N, C, H, W)``) and their labels (as int64).

    The same images give the same digest whatever file format they were read from.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or len(labels) != len(images):
        raise ValueError(
            f"images_digest needs uint8 images (N, C, H, W) and N labels, got "
            f"{images.dtype} {tuple(images.shape)} and {len(labels)} labels"
        )
    h = hashlib.sha256(json.dumps({"images": list(images.shape), "dtype": "uint8"}).encode())
    h.update(images.contiguous().numpy().tobytes())
    h.update(labels.to(torch.int64).contiguous().numpy().astype("<i8").tobytes())
    return h.hexdigest()


def data_hash(root: str | os.PathLike | None = None) -> str:
    """:func:`images_digest` of the Fashion-MNIST training split found at ``root``."""
    images, labels = _load_split(root, "train")
    return images_digest(images, labels)


def cache_key(config: ClassifierConfig, data_sha256: str) -> str:
    """Hash of the architecture version, feature layer, training config and training data
    (:func:`data_hash`): the classifier's id."""
    what = {
        "arch": ARCH_VERSION,
        "layer": FEATURE_LAYER,
        "config": asdict(config),
        "data": data_sha256,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def images_to_input(images: Tensor) -> Tensor:
    """uint8 ``(N, 1, 28, 28)`` -> float32 in [-1, 1]; other shapes are a clear error."""
    if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise ValueError(
            f"fd_fmnist needs uint8 images (N, 1, 28, 28) like Fashion-MNIST, got "
            f"{images.dtype} {tuple(images.shape)}"
        )
    return uint8_to_float(images)


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
    meta = {
        "accuracy": accuracy(model, test_images, test_labels),
        "feature_layer": FEATURE_LAYER,
        "feature_dim": config.feature_dim,
        "config": asdict(config),
        "train_seconds": round(seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    return CachedClassifier(model.eval(), meta)


def save_classifier(classifier: CachedClassifier, directory: Path, key: str) -> Path:
    """Write ``<key>.safetensors`` and ``<key>.json`` (with the weights' SHA-256) atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    weights, meta = directory / f"{key}.safetensors", directory / f"{key}.json"
    tmp = directory / f".{key}.{os.getpid()}"
    save_file(classifier.model.state_dict(), f"{tmp}.safetensors")
    sha = hashlib.sha256(Path(f"{tmp}.safetensors").read_bytes()).hexdigest()
    classifier.meta |= {"key": key, "weights_sha256": sha}
    Path(f"{tmp}.json").write_text(json.dumps(classifier.meta, indent=2) + "\n")
    os.replace(f"{tmp}.safetensors", weights)
    os.replace(f"{tmp}.json", meta)  # the JSON last: its presence marks a complete entry
    return meta


def _from_record(record: dict, raw: bytes, where: str, fix: str) -> CachedClassifier:
    """The classifier of a JSON record and its safetensors bytes, the weights' hash checked."""
    sha = hashlib.sha256(raw).hexdigest()
    expected = record.get("weights_sha256")
    if expected is not None and sha != expected:
        raise ClassifierError(
            f"{where} has weights SHA-256 {sha[:16]}... but its record says "
            f"{expected[:16]}...: the file is damaged; {fix}"
        )
    try:
        model = FMNISTClassifier(ClassifierConfig(**record["config"]))
        model.load_state_dict(load_safetensors(raw))
    except (KeyError, TypeError, RuntimeError, SafetensorError) as err:
        why = " ".join(str(err).split())[:160]
        raise ClassifierError(
            f"{where} is not an fd_fmnist classifier mvq can load "
            f"({type(err).__name__}: {why}); {fix}"
        ) from err
    return CachedClassifier(model.eval(), record | {"weights_sha256": sha})


@functools.cache
def _shipped_files() -> tuple[dict, bytes, str]:
    """The shipped record, weights bytes and where they are (read once per process)."""
    folder = resources.files("mvq.metrics") / SHIPPED_DIR
    where = f"mvq's shipped fd_fmnist classifier ({folder}/{SHIPPED_KEY}.*)"
    try:
        record = json.loads((folder / f"{SHIPPED_KEY}.json").read_text())
        raw = (folder / f"{SHIPPED_KEY}.safetensors").read_bytes()
    except (OSError, json.JSONDecodeError) as err:
        raise ClassifierError(
            f"{where} cannot be read ({type(err).__name__}: {err}); "
            "reinstall mvq (pip install --force-reinstall mvq)"
        ) from err
    return record, raw, where


def shipped_record() -> dict:
    """The JSON record of the classifier mvq ships (key, test accuracy, weights' SHA-256, ...)."""
    return dict(_shipped_files()[0])


def shipped_classifier() -> CachedClassifier:
    """The classifier mvq ships, the one ``mvq eval`` uses by default (weights' hash checked)."""
    record, raw, where = _shipped_files()
    classifier = _from_record(record, raw, where, "reinstall mvq (pip install --force-reinstall)")
    classifier.meta["source"] = "shipped"
    return classifier


def load_classifier_file(path: str | os.PathLike) -> CachedClassifier:
    """A classifier saved by mvq: ``<key>.json`` with ``<key>.safetensors`` beside it (either
    path, or the two without their suffix)."""
    path = Path(path).expanduser()
    stem = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
    record_path, weights_path = Path(f"{stem}.json"), Path(f"{stem}.safetensors")
    fix = "give the <key>.json that mvq wrote, with its <key>.safetensors beside it"
    if not record_path.is_file() or not weights_path.is_file():
        gone = record_path if not record_path.is_file() else weights_path
        raise ClassifierError(
            f"fd_fmnist classifier {path}: {gone} not found; {fix}, or "
            f"'{SPECS[0]}' (mvq's) or '{SPECS[1]}'"
        )
    try:
        record = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ClassifierError(
            f"{record_path} is not a readable JSON record ({err}); {fix}"
        ) from err
    if not isinstance(record, dict):
        raise ClassifierError(f"{record_path} is not a classifier record (not an object); {fix}")
    classifier = _from_record(record, weights_path.read_bytes(), str(weights_path), fix)
    classifier.meta["source"] = str(record_path)
    return classifier


def load_classifier(
    config: ClassifierConfig = ClassifierConfig(),
    root: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    train_if_missing: bool = True,
) -> CachedClassifier:
    """The classifier of ``config`` trained on the data found at ``root``: the shipped one when
    the key is its key, else the cached one; trains it once when neither exists.

    Args:
        config: architecture and schedule (part of the key).
        root: Fashion-MNIST folder (``None``: where ``mvq.data`` finds it).
        cache: cache folder (default ``cache_root() / "fd_fmnist"``).
        train_if_missing: train (announced on stderr) when no entry has the key; else
            ``FileNotFoundError``.
    """
    directory = Path(cache) if cache is not None else cache_root() / "fd_fmnist"
    digest = data_hash(root)
    key = cache_key(config, digest)
    if key == SHIPPED_KEY:
        return shipped_classifier()
    meta_path = directory / f"{key}.json"
    if meta_path.is_file():
        return load_classifier_file(meta_path)
    if not train_if_missing:
        raise FileNotFoundError(
            f"no fd_fmnist classifier cached under {meta_path}: call load_classifier with "
            "train_if_missing=True to train it (a few CPU minutes)"
        )
    print(
        f"mvq: training an fd_fmnist classifier ({config.epochs} epochs on Fashion-MNIST), "
        f"not mvq's shipped {SHIPPED_KEY}; it is cached as {meta_path}",
        file=sys.stderr,
    )
    classifier = train_classifier(config, root)
    classifier.meta["train_data_sha256"] = digest
    save_classifier(classifier, directory, key)
    classifier.meta["source"] = str(meta_path)
    return classifier


def resolve_classifier(
    spec: str = "shipped", root: str | os.PathLike | None = None
) -> CachedClassifier:
    """``shipped`` (mvq's), ``local`` (the default recipe on the data at ``root``: the shipped
    one for the standard images, else cached or trained once) or a record's path."""
    if spec == "shipped":
        return shipped_classifier()
    if spec == "local":
        return load_classifier(ClassifierConfig(), root)
    return load_classifier_file(spec)


def classifier_identity(meta: dict) -> dict:
    """What ``eval.json`` records of the classifier behind its fd_fmnist numbers.

    ``id`` names the weights: the shipped key when they are the shipped ones (whatever file
    they came from), else the classifier's key (with the weights' hash when a retrain of the
    shipped recipe reuses its key); ``shipped`` says which.
    """
    shipped = shipped_record()
    sha, key = meta.get("weights_sha256"), meta.get("key")
    same = sha is not None and sha == shipped["weights_sha256"]
    ident = SHIPPED_KEY if same else key if key != SHIPPED_KEY else f"{key}-{str(sha)[:8]}"
    return {
        "id": ident,
        "shipped": same,
        "accuracy": meta.get("accuracy"),
        "feature_layer": meta.get("feature_layer"),
        "key": key,
        "weights_sha256": sha,
        "source": meta.get("source"),
    }


def classifier_label(identity: object) -> str | None:
    """``None`` when an ``eval.json``'s ``meta.fd_fmnist_classifier`` is the shipped classifier
    (or absent), else a short name for the tables that show its fd_fmnist numbers.

    Records written before mvq recorded the weights' hash count as shipped when both the key
    and the test accuracy are the shipped classifier's (its earlier key included).
    """
    if not isinstance(identity, dict):
        return None
    shipped = shipped_record()
    if identity.get("weights_sha256") is not None:
        if identity["weights_sha256"] == shipped["weights_sha256"]:
            return None
    elif (
        identity.get("key") in (SHIPPED_KEY, *shipped.get("earlier_keys", []))
        and identity.get("accuracy") == shipped["accuracy"]
    ):
        return None
    name = identity.get("id") or identity.get("key") or "unnamed"
    accuracy = identity.get("accuracy")
    return str(name) + (f" (accuracy {accuracy:.4f})" if isinstance(accuracy, float) else "")


def describe_classifier(identity: dict) -> str:
    """One line naming the classifier of an eval, for its printed table."""
    accuracy = identity.get("accuracy")
    acc = f"test accuracy {accuracy:.2%}" if isinstance(accuracy, float) else "accuracy unknown"
    if identity.get("shipped"):
        return f"fd_fmnist classifier: mvq's shipped {identity['id']} ({acc})"
    return (
        f"fd_fmnist classifier: {identity['id']} from {identity.get('source')} ({acc}), "
        f"NOT mvq's shipped {SHIPPED_KEY}: its fd_fmnist values compare only with "
        "values from the same classifier"
    )


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
