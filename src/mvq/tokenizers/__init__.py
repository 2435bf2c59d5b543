"""Tokenizers (VQVAE2, MVQVAE, FSQVAE and their GAN-trained VQGAN, MVQGAN, FSQGAN) and their
registry of the paper's settings.

Variant names read ``<arch>_<dataset>_s<S>_k<K>``: e.g. ``mvqvae_fmnist_s4_k16`` is MVQVAE on
Fashion-MNIST with 4 + 1 tokens and K = 16 codebook entries (8 primary + 8 secondary);
``mvqgan_fmnist_s4_k16`` the same networks trained with the VQGAN objective.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mvq.pretrained import (
    CheckpointError,
    config_from_dict,
    read_pretrained_meta,
    resolve_pretrained,
)
from mvq.registry import Registry
from mvq.tokenizers.base import Tokenizer, TokenizerConfig, TokenizerOutput, TokenLayout
from mvq.tokenizers.fsqvae import FSQVAE, FSQVAEConfig
from mvq.tokenizers.gan import FSQGAN, MVQGAN, VQGAN, FSQGANConfig, MVQGANConfig, VQGANConfig
from mvq.tokenizers.mvqvae import MVQVAE, MVQVAEConfig
from mvq.tokenizers.vqvae2 import VQVAE2, VQVAE2Config

ARCHITECTURES: dict[str, type[Tokenizer]] = {
    "vqvae2": VQVAE2, "mvqvae": MVQVAE, "fsqvae": FSQVAE,
    "vqgan": VQGAN, "mvqgan": MVQGAN, "fsqgan": FSQGAN,
}  # fmt: skip

# dataset -> (image channels, image size, D = D') from Table 2
DATASET_SHAPES: dict[str, tuple[int, int, int]] = {
    "fmnist": (1, 28, 16),
    "cifar10": (3, 32, 96),
    "celeba64": (3, 64, 256),
    "imagenet64": (3, 64, 256),
}
TOKENS = (1, 4, 16)
CODEBOOKS = (16, 256)

TOKENIZERS: Registry[Tokenizer] = Registry("tokenizer")


def _register(arch: str, dataset: str, s: int, k: int) -> None:
    channels, size, dim = DATASET_SHAPES[dataset]
    factor = size // math.isqrt(s)
    cls = ARCHITECTURES[arch]

    def factory(**overrides: Any) -> Tokenizer:
        base = dict(in_channels=channels, image_size=size, factor=factor, codebook_size=k, dim=dim,
                    secondary_dim=dim)  # fmt: skip
        config = config_from_dict(cls.config_class, base | overrides, f"{arch}_{dataset}_s{s}_k{k}")
        return cls(config)

    factory.__doc__ = f"{cls.__name__} on {dataset}, {s}+1 tokens, K={k}."
    TOKENIZERS.register(f"{arch}_{dataset}_s{s}_k{k}")(factory)


for _arch in ARCHITECTURES:
    for _dataset in DATASET_SHAPES:
        for _s in TOKENS:
            for _k in CODEBOOKS:
                _register(_arch, _dataset, _s, _k)


def create_tokenizer(name: str, **overrides: Any) -> Tokenizer:
    """Build the registered variant ``name`` with config ``overrides``."""
    return TOKENIZERS.create(name, **overrides)


def list_tokenizers() -> list[str]:
    """All registered variant names."""
    return TOKENIZERS.names()


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load any tokenizer saved with ``save_pretrained``, whatever its class, from a folder, a
    run directory (its ``model/``) or a Hugging Face Hub id ``org/name[@revision]``."""
    directory = resolve_pretrained(directory)
    meta = read_pretrained_meta(directory)
    classes = {cls.__name__: cls for cls in ARCHITECTURES.values()}
    if meta["class"] not in classes:
        raise CheckpointError(
            f"{directory} holds a {meta['class']}, not a tokenizer ({', '.join(classes)})"
        )
    return classes[meta["class"]].from_pretrained(directory)


__all__ = [
    "FSQGAN",
    "FSQVAE",
    "MVQGAN",
    "MVQVAE",
    "TOKENIZERS",
    "VQGAN",
    "VQVAE2",
    "FSQGANConfig",
    "FSQVAEConfig",
    "MVQGANConfig",
    "MVQVAEConfig",
    "VQGANConfig",
    "TokenLayout",
    "Tokenizer",
    "TokenizerConfig",
    "TokenizerOutput",
    "VQVAE2Config",
    "create_tokenizer",
    "list_tokenizers",
    "load_tokenizer",
]
