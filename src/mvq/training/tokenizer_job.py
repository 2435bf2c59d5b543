"""Train a tokenizer from a run config: build the model, the data and the trainer's config.

Also holds ``ReconstructionGrid`` (the periodic images). Test metrics (MSE, codebook usage, bits
per image) are ``mvq eval``'s (``mvq.eval``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision.utils import make_grid, save_image

from mvq.core.device import resolve_device
from mvq.core.errors import ConfigError, MVQError
from mvq.core.pixels import to_unit
from mvq.core.pretrained import config_from_dict
from mvq.data import build_dataset, data_channels
from mvq.tokenizers import TOKENIZERS, Tokenizer, create_tokenizer
from mvq.tokenizers.gan import GANObjective
from mvq.training import TrainConfig, TrainResult, train
from mvq.training.runconfig import RunConfig, check_keys, check_model_config, check_types


def build_tokenizer(cfg: RunConfig) -> Tokenizer:
    """The registered variant ``cfg.model`` with ``cfg.model_config`` overrides; for an image
    folder its ``in_channels`` are those of the images (see ``channels_from_data``)."""
    check_model_config(cfg, TOKENIZERS)
    with config_values(f"model_config of {cfg.model}"):
        return create_tokenizer(cfg.model, **(cfg.model_config | channels_from_data(cfg)))


def channels_from_data(cfg: RunConfig) -> dict[str, int]:
    """``{"in_channels": C}`` when the files decide the channels (``data.name: folder``):
    ``data.channels`` or, unset, 1 if every image is grayscale and else 3; ``{}`` otherwise."""
    data = cfg.data
    if data.get("name") != "folder":
        return {}
    channels = data_channels("folder", data.get("root"), data.get("channels"))
    chosen = cfg.model_config.get("in_channels")
    if chosen is not None and chosen != channels:
        raise ConfigError(
            f"model_config.in_channels={chosen} but the folder data gives {channels}-channel "
            f"images; drop model_config.in_channels or set data.channels={chosen}"
        )
    return {"in_channels": channels}


def build_train_config(cfg: RunConfig) -> TrainConfig:
    """``TrainConfig`` with the run config's ``train`` overrides; an unknown key or a bad value
    is a ``ConfigError``."""
    check_keys(cfg.train, [f.name for f in dataclasses.fields(TrainConfig)], "train")
    check_types(TrainConfig, cfg.train, "train")
    return config_from_dict(TrainConfig, cfg.train, "train")


def runnable_train_config(cfg: RunConfig) -> TrainConfig:
    """``build_train_config``, whose device this machine must have (a ``DeviceError`` before
    any model or data is built)."""
    train_cfg = build_train_config(cfg)
    resolve_device(train_cfg.device, int(os.environ.get("LOCAL_RANK", 0)))
    return train_cfg


@contextlib.contextmanager
def config_values(where: str) -> Iterator[None]:
    """Turn a ``ValueError`` of a config's own checks (``__post_init__``) into a one-line
    ``ConfigError`` naming ``where`` the values came from; the cause stays chained."""
    try:
        yield
    except MVQError:
        raise
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from err


def build_splits(cfg: RunConfig, model: Tokenizer) -> tuple[Dataset, Dataset]:
    """Train and validation splits of ``cfg.data``, checked against the tokenizer's input."""
    data = {"root": None, "image_size": None, "download": False} | cfg.data
    if "name" not in data:
        raise ConfigError("data.name is missing: e.g. data: {name: fashion_mnist}")
    c = model.config
    if data["name"] == "folder":  # any image size is resized to the tokenizer's by default
        data["image_size"] = data["image_size"] or c.image_size
        data["channels"] = c.in_channels
    splits = [build_dataset(split=s, **data) for s in ("train", "val")]
    image = splits[0][0][0]
    if tuple(image.shape) != (c.in_channels, c.image_size, c.image_size):
        raise ConfigError(
            f"data '{data['name']}' gives images {tuple(image.shape)} but {cfg.model} expects "
            f"({c.in_channels}, {c.image_size}, {c.image_size}): set data.image_size or pick "
            "the tokenizer built for this data set"
        )
    return splits[0], splits[1]


def data_summary(cfg: RunConfig, train_set: Dataset) -> dict[str, Any]:
    """What a tokenizer was trained on, for its model card (no local paths but a folder's name)."""
    summary: dict[str, Any] = {"name": cfg.data["name"], "train_images": len(train_set)}  # type: ignore[arg-type]
    if cfg.data["name"] == "folder" and cfg.data.get("root"):
        summary["folder"] = Path(str(cfg.data["root"])).expanduser().resolve().name
    return summary


class ReconstructionGrid:
    """Trainer callback: originals (top row) and reconstructions (bottom row) of fixed images."""

    def __init__(self, images: Tensor) -> None:
        self.images = images

    @torch.no_grad()
    def __call__(self, model: nn.Module, step: int, run_dir: Path, writer: Any) -> None:
        x = self.images.to(next(model.parameters()).device)
        grid = make_grid(to_unit(torch.cat([x, model(x).recon])), nrow=len(x), padding=1)
        (run_dir / "samples").mkdir(exist_ok=True)
        save_image(grid, run_dir / "samples" / f"recon_{step:07d}.png")
        if writer is not None:
            writer.add_image("reconstructions", grid, step)


def first_images(dataset: Dataset, n: int) -> Tensor:
    """The first ``n`` images of a dataset (all when it has fewer), stacked ``(n, C, H, W)``."""
    return torch.stack([dataset[i][0] for i in range(min(n, len(dataset)))])


def train_tokenizer(
    cfg: RunConfig, run_dir: str | Path, resume: bool = False
) -> tuple[Tokenizer, TrainResult]:
    """Build and check everything from ``cfg`` first, then train; saves the model at the end."""
    train_cfg = runnable_train_config(cfg)
    torch.manual_seed(train_cfg.seed)  # the initial weights depend on the seed alone
    model = build_tokenizer(cfg)
    if isinstance(model, GANObjective):
        prepare_gan(model)
    train_set, val_set = build_splits(cfg, model)
    grid = ReconstructionGrid(first_images(val_set, 8))
    result = train(
        model,
        train_set,
        val_set,
        train_cfg,
        run_dir,
        resume=resume,
        callbacks=[grid],
        save_model=lambda m, path: m.save_pretrained(path, data=data_summary(cfg, train_set)),
    )
    return model, result


def prepare_gan(model: GANObjective) -> None:
    """Build LPIPS now, so missing VGG16 weights fail before any run directory is written, and
    say when a run is not the paper's recipe (``perceptual: none``)."""
    if model.gan_loss.perceptual_network() is None and os.environ.get("RANK", "0") == "0":
        print(
            f"{type(model).__name__}: perceptual=none, L1 without LPIPS: not the paper's "
            "recipe (recorded in the model's config.json)",
            file=sys.stderr,
        )
