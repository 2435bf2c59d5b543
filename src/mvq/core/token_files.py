"""Tokens on disk: token files (named images) and token directories (encoded data sets).

A **token file** holds the tokens of a list of named images in one safetensors file; written
by ``mvq tokenize`` (``save_token_file``), read by ``mvq decode`` (``load_token_file``)::

    indices    (N, h, w)   primary indices, smallest unsigned type that holds the vocabulary
    secondary  (N, h2, w2) secondary indices (when the tokenizer has them)
    mask       (N, ceil(D'/8)) uint8, MVQ's packed MH-Dropout masks (MVQ only)

and, in the safetensors header (string values, JSON-encoded): ``format`` ("mvq-tokens"),
``format_version``, ``names`` (the images' file names, in row order), ``tokenizer`` (its
identity: class, config, SHA-256 of its weights, as ``tokenizer_identity`` computes) and
``layout`` (the tokenizer's ``TokenLayout``). Tokens only decode with the tokenizer that made
them: ``check_tokenizer`` compares the identities.

A **token directory** is a data set encoded once by a tokenizer, for training priors (written
atomically by ``mvq encode`` / ``encode_dataset``)::

    meta.json            tokenizer identity (class, config, weights fingerprint), token layout,
                         number of classes, source data set, split sizes
    train.safetensors    primary (N, h, w), secondary (N, 1, 1), [mask (N, ceil(D'/8)) uint8],
    val.safetensors      label (N,) — indices stored in the smallest unsigned integer type

``TokenDataset(dir, split)`` serves ``{"primary", "secondary", "label"}`` int64 dicts, plus
``"mask"`` (the packed uint8 mask bytes) for MVQ tokens, the batch format of ``mvq.priors``.
What the tokens are (``Tokens``, ``TokenLayout``) is ``mvq.core.tokens``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor
from torch.utils.data import Dataset

from mvq.core.pretrained import (
    WEIGHTS_NAME,
    CheckpointError,
    atomic_write_file,
    resolve_pretrained,
)
from mvq.core.tokens import Tokens, layout_overrides

if TYPE_CHECKING:
    from torch import nn

META_NAME = "meta.json"
DIR_FORMAT_VERSION = 1
FORMAT = "mvq-tokens"
FILE_FORMAT_VERSION = 1
SUFFIX = ".safetensors"


def tokenizer_identity(model: nn.Module, directory: str | os.PathLike | None = None) -> dict:
    """Class, config and a fingerprint of the weights of a tokenizer ``model`` (its
    ``config`` a dataclass): what tokens must be decoded with."""
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


def index_dtype(vocab: int) -> torch.dtype:
    """The smallest integer type that holds indices ``[0, vocab)``: how indices are stored."""
    return torch.uint8 if vocab <= 256 else torch.int16 if vocab <= 32768 else torch.int32


# -- token directories -----------------------------------------------------------------------------


def read_token_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """``meta.json`` of a token directory; a missing or broken one is a clear error."""
    path = Path(directory) / META_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{directory} is not a token directory ({META_NAME} missing): "
            "make one with `mvq encode`"
        )
    try:
        meta = json.loads(path.read_text())
        meta["tokenizer"], meta["splits"]  # noqa: B018
        layout_overrides(meta["layout"])  # a layout without its fields is a TypeError
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} is corrupted ({err}); re-run `mvq encode`") from err
    return meta


class TokenDataset(Dataset):
    """One split of a token directory, as dicts ``{"primary", "secondary", "label"}`` (int64)
    and ``"mask"`` (packed uint8 bytes ``(ceil(D'/8),)``) when the tokens carry MVQ masks."""

    def __init__(self, directory: str | os.PathLike, split: str = "train") -> None:
        self.meta = read_token_meta(directory)
        if split not in self.meta["splits"]:
            raise CheckpointError(
                f"{directory} has no '{split}' split (has {sorted(self.meta['splits'])}): "
                f"encode it with `mvq encode --splits {split},...`"
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


# -- token files -----------------------------------------------------------------------------------


@dataclass
class TokenFile:
    """What a token file holds.

    Attributes:
        tokens: int64 indices (and secondary indices, uint8 packed masks), one row per image.
        names: the images' file names, one per row.
        tokenizer: identity of the tokenizer that made them (class, config, sha256).
        layout: that tokenizer's token layout, as a dict.
    """

    tokens: Tokens
    names: list[str]
    tokenizer: dict[str, Any]
    layout: dict[str, Any]


def save_token_file(
    path: str | os.PathLike,
    tokens: Tokens,
    names: list[str],
    tokenizer: dict[str, Any],
    layout: Any,
) -> Path:
    """Write ``tokens`` of the images ``names`` to ``path`` (atomically: a temporary file is
    renamed into place). ``tokenizer`` is ``tokenizer_identity(model, dir)``, ``layout`` the
    model's ``token_layout``."""
    path = Path(path)
    if len(names) != len(tokens.indices):
        raise ValueError(f"{len(names)} names for {len(tokens.indices)} rows of tokens")
    layout = layout if isinstance(layout, dict) else asdict(layout)
    tensors = {"indices": tokens.indices.cpu().to(index_dtype(layout["primary_vocab"]))}
    if tokens.secondary is not None:
        tensors["secondary"] = tokens.secondary.cpu().to(index_dtype(layout["secondary_vocab"]))
    if tokens.mask is not None:
        tensors["mask"] = tokens.mask.cpu()
    header = {
        "format": FORMAT,
        "format_version": FILE_FORMAT_VERSION,
        "names": names,
        "tokenizer": tokenizer,
        "layout": layout,
    }
    metadata = {k: json.dumps(v) for k, v in header.items()}
    data = safetensors_bytes({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_file(path, data)
    return path


def load_token_file(path: str | os.PathLike) -> TokenFile:
    """Read a token file; a missing, foreign or broken one is a one-line ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"token file {path} does not exist: make one with `mvq tokenize`")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
        header = {k: json.loads(v) for k, v in metadata.items()}
    except Exception as err:  # noqa: BLE001 - safetensors and json raise several types
        raise CheckpointError(f"{path} is not a readable token file ({err})") from err
    if header.get("format") != FORMAT or "indices" not in tensors:
        raise CheckpointError(f"{path} is not an mvq token file: make one with `mvq tokenize`")
    version = header.get("format_version")
    if not isinstance(version, int) or "tokenizer" not in header or "layout" not in header:
        raise CheckpointError(f"{path} is a corrupted token file (its header is incomplete)")
    if version > FILE_FORMAT_VERSION:
        raise CheckpointError(f"{path} is a newer token file format; upgrade mvq to read it")
    secondary = tensors.get("secondary")
    tokens = Tokens(
        tensors["indices"].long(),
        None if secondary is None else secondary.long(),
        tensors.get("mask"),
    )
    names = list(header.get("names", []))
    if len(names) != len(tokens.indices):
        raise CheckpointError(
            f"{path} is corrupted: {len(names)} names for {len(tokens.indices)} rows of tokens"
        )
    return TokenFile(tokens, names, header["tokenizer"], header["layout"])


def check_tokenizer(
    token_file: TokenFile, identity: dict[str, Any], path: str | os.PathLike, tokenizer: str
) -> None:
    """Tokens decode only with the tokenizer that made them: a one-line ``CheckpointError``
    naming both fingerprints when ``identity`` is another tokenizer's."""
    made = token_file.tokenizer
    if made.get("sha256") != identity["sha256"] or made.get("class") != identity["class"]:
        raise CheckpointError(
            f"{path} holds tokens of another tokenizer ({made.get('class')} "
            f"{str(made.get('sha256'))[:12]}), not of {tokenizer} ({identity['class']} "
            f"{identity['sha256'][:12]}): decode it with the tokenizer that made it"
        )


def is_token_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file whose header says it is an mvq token file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == json.dumps(FORMAT)
    except Exception:  # noqa: BLE001 - anything unreadable is not a token file
        return False
