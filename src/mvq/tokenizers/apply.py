"""A trained tokenizer applied to data: ``mvq encode`` (a data set -> a token directory for
priors), ``mvq reconstruct``, ``mvq tokenize`` and ``mvq decode`` (image files).

Images are read as the tokenizer wants them: converted to grayscale or RGB after its
``in_channels``, the shorter side resized to its ``image_size`` and the other center-cropped.
Outputs are PNGs at the tokenizer's size, named as the inputs relative to the input folder with
the suffix ``.png`` (``cats/a.jpg`` -> ``cats/a.png``). Every check (tokenizer, images, output
place, token file) runs before anything is written, and folders are written atomically, so a
failure leaves nothing behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import save as safetensors_bytes
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from mvq.core.pixels import float_to_uint8
from mvq.core.pretrained import atomic_write_dir, resolve_pretrained
from mvq.core.token_files import (
    DIR_FORMAT_VERSION,
    META_NAME,
    SUFFIX,
    check_tokenizer,
    index_dtype,
    is_token_file,
    load_token_file,
    save_token_file,
    tokenizer_identity,
)
from mvq.core.tokens import Tokens
from mvq.data.base import DataError
from mvq.data.folder import EXTENSIONS, list_images, read_image
from mvq.tokenizers import Tokenizer, encode_images, load_tokenizer
from mvq.tokenizers.base import in_order


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; a one-line
    ``DeviceError`` for anything else or a GPU that is not there."""
    from mvq.core.device import resolve_device

    return resolve_device(name)


def load_for_images(tokenizer: str | Path, device: str) -> tuple[Tokenizer, dict, Path]:
    """The tokenizer (eval mode, on ``device``), its identity and the folder it came from."""
    target = pick_device(device)
    folder = resolve_pretrained(tokenizer)
    model = load_tokenizer(folder)
    return model.to(target).eval(), tokenizer_identity(model, folder), folder


def find_images(images: str | Path) -> tuple[list[Path], list[str]]:
    """The image files under folder ``images`` (or the one file ``images``) and their names
    relative to it (POSIX paths)."""
    root = Path(images).expanduser()
    if root.is_file():
        if root.suffix.lower() not in EXTENSIONS:
            raise DataError(f"{root} is not an image ({', '.join(EXTENSIONS)})")
        return [root], [root.name]
    if not root.is_dir():
        raise DataError(f"--images {root} does not exist: pass a folder of images or one image")
    files = list_images(root)
    if not files:
        raise DataError(f"no images ({', '.join(EXTENSIONS)}) found under {root}")
    return files, [f.relative_to(root).as_posix() for f in files]


def png_names(names: list[str]) -> list[str]:
    """``names`` with the suffix ``.png``; two inputs that would share an output, or a name
    that leaves the output folder (absolute, ``..``), are an error."""
    out = [Path(n).with_suffix(".png").as_posix() for n in names]
    seen: dict[str, str] = {}
    for name, png in zip(names, out, strict=True):
        if Path(name).is_absolute() or ".." in Path(name).parts or not Path(name).stem:
            raise DataError(f"image name '{name}' must be a relative path inside the folder")
        if png in seen:
            raise DataError(f"{seen[png]} and {name} would both be written as {png}; rename one")
        seen[png] = name
    return out


def check_out_dir(out: str | Path, images: str | Path | None = None) -> Path:
    """``out`` as a new (or empty) folder outside the input folder ``images``."""
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(
            f"--out {out} already exists and is not an empty folder; "
            "choose a new folder or remove it"
        )
    if images is not None and Path(images).expanduser().is_dir():
        inside = out.resolve().is_relative_to(Path(images).expanduser().resolve())
        if inside:
            raise DataError(f"--out {out} is inside --images {images}; choose a folder outside it")
    return out


def check_batch_size(batch_size: int) -> int:
    """``batch_size`` if it is at least 1."""
    if batch_size < 1:
        raise DataError(f"--batch-size must be at least 1, got {batch_size}")
    return batch_size


def image_batches(model: Tokenizer, files: list[Path], batch_size: int) -> Iterator[Tensor]:
    """``files`` read as the tokenizer wants them, in batches ``(B, C, S, S)`` in [-1, 1]."""
    c = model.config
    for i in range(0, len(files), batch_size):
        chunk = files[i : i + batch_size]
        yield torch.stack([read_image(f, c.in_channels, c.image_size) for f in chunk])


def save_png(image: Tensor, path: Path) -> None:
    """Write one image ``(C, H, W)`` in [-1, 1] (C = 1 or 3) as an 8-bit grayscale/RGB PNG."""
    pixels = float_to_uint8(image.detach().float().cpu())
    path.parent.mkdir(parents=True, exist_ok=True)
    array = pixels.permute(1, 2, 0).numpy()  # (H, W, C)
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)


def encode_files(
    model: Tokenizer, files: list[Path], batch_size: int = 32, seed: int = 0
) -> Tokens:
    """Tokens of the image files (``encode_images``, MVQ's mask search seeded with ``seed``),
    on the CPU."""
    generator = torch.Generator(next(model.parameters()).device).manual_seed(seed)
    return encode_images(model, image_batches(model, files, batch_size), batch_size, generator)


@torch.no_grad()
def decode_to_folder(
    model: Tokenizer, tokens: Tokens, names: list[str], out: Path, batch_size: int = 32
) -> Path:
    """Decode ``tokens`` and write one PNG per row, named ``names``, into folder ``out``
    (atomically)."""
    device = next(model.parameters()).device

    def write(tmp: Path) -> None:
        for i in range(0, len(names), batch_size):
            images = model.decode(tokens[i : i + batch_size].to(device)).clamp(-1, 1)
            for image, name in zip(images, names[i : i + batch_size], strict=True):
                save_png(image, tmp / name)

    atomic_write_dir(out, write)
    return out


def reconstruct(
    tokenizer: str | Path,
    images: str | Path,
    out: str | Path,
    device: str = "auto",
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, object]:
    """``mvq reconstruct``: every image under ``images`` through the tokenizer
    (encode -> decode) into PNGs under ``out``; returns a summary."""
    check_batch_size(batch_size)
    files, names = find_images(images)
    pngs = png_names(names)
    out = check_out_dir(out, images)
    model, _, folder = load_for_images(tokenizer, device)
    tokens = encode_files(model, files, batch_size, seed)
    decode_to_folder(model, tokens, pngs, out, batch_size)
    return {
        "images": len(files),
        "out": str(out),
        "tokenizer": str(folder),
        "bits_per_image": model.bits_per_image,
    }


def tokenize(
    tokenizer: str | Path,
    images: str | Path,
    out: str | Path,
    device: str = "auto",
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, object]:
    """``mvq tokenize``: the tokens of every image under ``images`` into token file ``out``."""
    check_batch_size(batch_size)
    out = Path(out).expanduser()
    if out.suffix != SUFFIX:
        raise DataError(f"--out {out} must end in {SUFFIX}")
    if out.exists() and not is_token_file(out):
        raise DataError(f"--out {out} exists and is not a token file; choose another name")
    files, names = find_images(images)
    model, identity, folder = load_for_images(tokenizer, device)
    tokens = encode_files(model, files, batch_size, seed)
    save_token_file(out, tokens, names, identity, model.token_layout)
    return {
        "images": len(files),
        "out": str(out),
        "tokenizer": str(folder),
        "tokens_per_image": model.token_layout.num_tokens,
    }


def decode(
    tokenizer: str | Path,
    tokens: str | Path,
    out: str | Path,
    device: str = "auto",
    batch_size: int = 32,
) -> dict[str, object]:
    """``mvq decode``: a token file back to PNGs under ``out``, named after the images."""
    check_batch_size(batch_size)
    token_file = load_token_file(tokens)
    pngs = png_names(token_file.names)
    out = check_out_dir(out)
    model, identity, folder = load_for_images(tokenizer, device)
    check_tokenizer(token_file, identity, tokens, str(tokenizer))
    decode_to_folder(model, token_file.tokens, pngs, out, batch_size)
    return {"images": len(pngs), "out": str(out), "tokenizer": str(folder)}


@torch.no_grad()
def encode_split(
    model: Tokenizer,
    dataset: Dataset,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """The tensors of a token directory's split: the tokens of every image of ``dataset``
    (``encode_images``, MVQ's masks drawn from ``generator``) in the prior's batch form, indices
    in their stored types, and the labels."""
    labels: list[Tensor] = []

    def images() -> Iterator[Tensor]:
        loader = in_order(dataset, batch_size, generator)
        for x, y in tqdm(loader, desc="encode", leave=False, disable=None):
            labels.append(torch.as_tensor(y).to(torch.int64))
            yield x

    batch = encode_images(model, images(), batch_size, generator).to_batch()
    layout = model.token_layout
    batch["primary"] = batch["primary"].to(index_dtype(layout.primary_vocab))
    batch["secondary"] = batch["secondary"].to(index_dtype(layout.secondary_vocab))
    return batch | {"label": torch.cat(labels)}


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
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)  # MVQ's mask search draws masks
    encoded = {name: encode_split(model, ds, generator=generator) for name, ds in splits.items()}
    meta = {
        "format_version": DIR_FORMAT_VERSION,
        "tokenizer": identity,
        "layout": asdict(model.token_layout),
        "num_classes": num_classes,
        "source": source,
        "splits": {name: len(t["primary"]) for name, t in encoded.items()},
    }

    files = {
        f"{name}.safetensors": safetensors_bytes({k: v.contiguous() for k, v in t.items()})
        for name, t in encoded.items()
    }
    files[META_NAME] = (json.dumps(meta, indent=2) + "\n").encode()

    def write(tmp: Path) -> None:
        for name, data in files.items():
            (tmp / name).write_bytes(data)

    atomic_write_dir(Path(out), write, size=sum(map(len, files.values())))
    return Path(out)
