"""Token files: the tokens of a list of named images, in one safetensors file.

Written by ``mvq tokenize`` (or ``save_token_file``), read by ``mvq decode`` (or
``load_token_file``). Layout::

    indices    (N, h, w)   primary indices, smallest unsigned type that holds the vocabulary
    secondary  (N, h2, w2) secondary indices (when the tokenizer has them)
    mask       (N, ceil(D'/8)) uint8, MVQ's packed MH-Dropout masks (MVQ only)

and, in the safetensors header (string values, JSON-encoded): ``format`` ("mvq-tokens"),
``format_version``, ``names`` (the images' file names, in row order), ``tokenizer`` (its
identity: class, config, SHA-256 of its weights, as ``mvq.tokens.tokenizer_identity`` computes)
and ``layout`` (the tokenizer's ``TokenLayout``). Tokens only decode with the tokenizer that
made them: ``check_tokenizer`` compares the identities.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file

from mvq.pretrained import CheckpointError
from mvq.quantizers import Tokens
from mvq.tokens import _index_dtype

FORMAT = "mvq-tokens"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"


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
    tensors = {"indices": tokens.indices.cpu().to(_index_dtype(layout["primary_vocab"]))}
    if tokens.secondary is not None:
        tensors["secondary"] = tokens.secondary.cpu().to(_index_dtype(layout["secondary_vocab"]))
    if tokens.mask is not None:
        tensors["mask"] = tokens.mask.cpu()
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "names": names,
              "tokenizer": tokenizer, "layout": layout}  # fmt: skip
    metadata = {k: json.dumps(v) for k, v in header.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
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
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} is a newer token file format; upgrade mvq to read it")
    secondary = tensors.get("secondary")
    tokens = Tokens(
        tensors["indices"].long(), None if secondary is None else secondary.long(),
        tensors.get("mask"),
    )  # fmt: skip
    names = list(header.get("names", []))
    if len(names) != len(tokens.indices):
        raise CheckpointError(f"{path} is corrupted: {len(names)} names for "
                              f"{len(tokens.indices)} rows of tokens")  # fmt: skip
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
