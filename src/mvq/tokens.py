"""Token data sets on disk: a data set encoded once by a tokenizer, for training priors.

Layout of a token directory (written atomically by ``encode_dataset``)::

    meta.json            tokenizer identity (class, config, weights fingerprint), token layout,
                         number of classes, source data set, split sizes
    train.safetensors    primary (N, h, w), secondary (N, 1, 1), [mask (N, ceil(D'/8)) uint8],
    val.safetensors      label (N,) — indices stored in the smallest unsigned integer type

``TokenDataset(dir, split)`` serves ``{"primary", "secondary", "label"}`` int64 dicts, plus
``"mask"`` (the packed uint8 mask bytes) for MVQ tokens, the batch format of ``mvq.priors``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mvq.pretrained import WEIGHTS_NAME, CheckpointError, atomic_write_dir, resolve_pretrained
from mvq.tokenizers import Tokenizer

META_NAME = "meta.json"
FORMAT_VERSION = 1


def tokenizer_identity(model: Tokenizer, directory: str | os.PathLike | None = None) -> dict:
    """Class, config and a fingerprint of the weights: what tokens must be decoded with."""
    folder = resolve_pretrained(directory) if directory is not None else None  # Hub ids too
    if folder is not None and (folder / WEIGHTS_NAME).is_file():
        digest = hashlib.sha256((folder / WEIGHTS_NAME).read_bytes()).hexdigest()
    else:
        h = hashlib.sha256()
        for name, t in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        digest = h.hexdigest()
    return {"class": type(model).__name__, "config": asdict(model.config), "sha256": digest}


def _index_dtype(vocab: int) -> torch.dtype:
    return torch.uint8 if vocab <= 256 else torch.int16 if vocab <= 32768 else torch.int32


@torch.no_grad()
def encode_split(model: Tokenizer, dataset: Dataset, batch_size: int = 256) -> dict[str, Tensor]:
    """Tokens of every image of ``dataset`` (eval mode, seeded mask search)."""
    model.eval()
    device = next(model.parameters()).device
    layout = model.token_layout
    parts: dict[str, list[Tensor]] = {"primary": [], "secondary": [], "mask": [], "label": []}
    for x, y in tqdm(
        DataLoader(dataset, batch_size=batch_size), desc="encode", leave=False, disable=None
    ):
        t = model.encode(x.to(device))
        parts["primary"].append(t.indices.cpu().to(_index_dtype(layout.primary_vocab)))
        parts["secondary"].append(t.secondary.cpu().to(_index_dtype(layout.secondary_vocab)))
        if t.mask is not None:
            parts["mask"].append(t.mask.cpu())
        parts["label"].append(torch.as_tensor(y).to(torch.int64))
    return {k: torch.cat(v) for k, v in parts.items() if v}


def encode_dataset(
    model: Tokenizer,
    splits: dict[str, Dataset],
    out: str | os.PathLike,
    identity: dict,
    source: dict[str, Any],
    num_classes: int,
    seed: int = 0,
) -> Path:
    """Encode each split and write the token directory ``out`` atomically."""
    torch.manual_seed(seed)  # MVQ's mask search samples masks
    encoded = {name: encode_split(model, ds) for name, ds in splits.items()}
    meta = {
        "format_version": FORMAT_VERSION,
        "tokenizer": identity,
        "layout": asdict(model.token_layout),
        "num_classes": num_classes,
        "source": source,
        "splits": {name: len(t["primary"]) for name, t in encoded.items()},
    }

    def write(tmp: Path) -> None:
        for name, tensors in encoded.items():
            save_file(
                {k: v.contiguous() for k, v in tensors.items()}, str(tmp / f"{name}.safetensors")
            )
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")

    atomic_write_dir(Path(out), write)
    return Path(out)


def read_token_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """``meta.json`` of a token directory; a missing or broken one is a clear error."""
    path = Path(directory) / META_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a token directory ({META_NAME} missing): "
                              "make one with `mvq encode`")  # fmt: skip
    try:
        meta = json.loads(path.read_text())
        meta["tokenizer"], meta["layout"], meta["splits"]  # noqa: B018
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} is corrupted ({err}); re-run `mvq encode`") from err
    return meta


class TokenDataset(Dataset):
    """One split of a token directory, as dicts ``{"primary", "secondary", "label"}`` (int64)
    and ``"mask"`` (packed uint8 bytes ``(ceil(D'/8),)``) when the tokens carry MVQ masks."""

    def __init__(self, directory: str | os.PathLike, split: str = "train") -> None:
        self.meta = read_token_meta(directory)
        if split not in self.meta["splits"]:
            raise ValueError(
                f"{directory} has no '{split}' split (has {sorted(self.meta['splits'])})"
            )
        try:
            tensors = load_file(str(Path(directory) / f"{split}.safetensors"))
        except Exception as err:  # noqa: BLE001 - safetensors raises several types
            raise CheckpointError(f"{directory}/{split}.safetensors is unreadable ({err})") from err
        self.primary = tensors["primary"].long()  # (N, h, w)
        self.secondary = tensors["secondary"].long()  # (N, 1, 1)
        self.label = tensors["label"].long()  # (N,)
        self.mask = tensors.get("mask")  # (N, ceil(D'/8)) uint8, MVQ only

    def __len__(self) -> int:
        return len(self.primary)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = {"primary": self.primary[i], "secondary": self.secondary[i], "label": self.label[i]}
        if self.mask is not None:
            item["mask"] = self.mask[i]
        return item
