"""The registered tokenizer variants: the paper's settings, one literal row per name.

Names read ``<arch>_<dataset>_s<S>_k<K>``: ``mvqvae_fmnist_s4_k16`` is MVQVAE on Fashion-MNIST
with 4 + 1 tokens and K = 16 codebook entries (8 primary + 8 secondary); ``mvqgan_fmnist_s4_k16``
the same networks trained with the VQGAN objective. Every name is written out in ``VARIANTS``
(so ``grep -r mvqvae_fmnist_s4_k16 src`` finds it); a variant's config is the dataset's image
shape and D = D' (its Table 2 row in ``mvq.data.DATASETS``), ``factor = image_size / sqrt(S)``
and K. Each name's registry entry carries its class and config class (``TOKENIZERS.entry``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mvq.core.pretrained import (
    CheckpointError,
    config_from_dict,
    read_pretrained_meta,
    resolve_pretrained,
)
from mvq.core.registry import Registry
from mvq.data import paper_data
from mvq.tokenizers.base import Tokenizer
from mvq.tokenizers.fsqvae import FSQVAE
from mvq.tokenizers.gan import FSQGAN, MVQGAN, VQGAN
from mvq.tokenizers.mvqvae import MFSQVAE, MVQVAE
from mvq.tokenizers.qvae import BSQVAE, LFQVAE, RVQVAE, SimVQVAE
from mvq.tokenizers.vqvae2 import VQVAE2

ARCHITECTURES: dict[str, type[Tokenizer]] = {
    "vqvae2": VQVAE2,
    "mvqvae": MVQVAE,
    "fsqvae": FSQVAE,
    "vqgan": VQGAN,
    "mvqgan": MVQGAN,
    "fsqgan": FSQGAN,
    "lfqvae": LFQVAE,
    "bsqvae": BSQVAE,
    "rvqvae": RVQVAE,
    "simvqvae": SimVQVAE,
    "mfsqvae": MFSQVAE,
}

# fmt: off
VARIANTS: tuple[tuple[str, type[Tokenizer], str, int, int], ...] = (
    # name                         class   data set tag   S    K
    ("vqvae2_fmnist_s1_k16",       VQVAE2, "fmnist",      1,  16),
    ("vqvae2_fmnist_s1_k256",      VQVAE2, "fmnist",      1, 256),
    ("vqvae2_fmnist_s4_k16",       VQVAE2, "fmnist",      4,  16),
    ("vqvae2_fmnist_s4_k256",      VQVAE2, "fmnist",      4, 256),
    ("vqvae2_fmnist_s16_k16",      VQVAE2, "fmnist",     16,  16),
    ("vqvae2_fmnist_s16_k256",     VQVAE2, "fmnist",     16, 256),
    ("vqvae2_cifar10_s1_k16",      VQVAE2, "cifar10",     1,  16),
    ("vqvae2_cifar10_s1_k256",     VQVAE2, "cifar10",     1, 256),
    ("vqvae2_cifar10_s4_k16",      VQVAE2, "cifar10",     4,  16),
    ("vqvae2_cifar10_s4_k256",     VQVAE2, "cifar10",     4, 256),
    ("vqvae2_cifar10_s16_k16",     VQVAE2, "cifar10",    16,  16),
    ("vqvae2_cifar10_s16_k256",    VQVAE2, "cifar10",    16, 256),
    ("vqvae2_celeba64_s1_k16",     VQVAE2, "celeba64",    1,  16),
    ("vqvae2_celeba64_s1_k256",    VQVAE2, "celeba64",    1, 256),
    ("vqvae2_celeba64_s4_k16",     VQVAE2, "celeba64",    4,  16),
    ("vqvae2_celeba64_s4_k256",    VQVAE2, "celeba64",    4, 256),
    ("vqvae2_celeba64_s16_k16",    VQVAE2, "celeba64",   16,  16),
    ("vqvae2_celeba64_s16_k256",   VQVAE2, "celeba64",   16, 256),
    ("vqvae2_imagenet64_s1_k16",   VQVAE2, "imagenet64",  1,  16),
    ("vqvae2_imagenet64_s1_k256",  VQVAE2, "imagenet64",  1, 256),
    ("vqvae2_imagenet64_s4_k16",   VQVAE2, "imagenet64",  4,  16),
    ("vqvae2_imagenet64_s4_k256",  VQVAE2, "imagenet64",  4, 256),
    ("vqvae2_imagenet64_s16_k16",  VQVAE2, "imagenet64", 16,  16),
    ("vqvae2_imagenet64_s16_k256", VQVAE2, "imagenet64", 16, 256),

    ("mvqvae_fmnist_s1_k16",       MVQVAE, "fmnist",      1,  16),
    ("mvqvae_fmnist_s1_k256",      MVQVAE, "fmnist",      1, 256),
    ("mvqvae_fmnist_s4_k16",       MVQVAE, "fmnist",      4,  16),
    ("mvqvae_fmnist_s4_k256",      MVQVAE, "fmnist",      4, 256),
    ("mvqvae_fmnist_s16_k16",      MVQVAE, "fmnist",     16,  16),
    ("mvqvae_fmnist_s16_k256",     MVQVAE, "fmnist",     16, 256),
    ("mvqvae_cifar10_s1_k16",      MVQVAE, "cifar10",     1,  16),
    ("mvqvae_cifar10_s1_k256",     MVQVAE, "cifar10",     1, 256),
    ("mvqvae_cifar10_s4_k16",      MVQVAE, "cifar10",     4,  16),
    ("mvqvae_cifar10_s4_k256",     MVQVAE, "cifar10",     4, 256),
    ("mvqvae_cifar10_s16_k16",     MVQVAE, "cifar10",    16,  16),
    ("mvqvae_cifar10_s16_k256",    MVQVAE, "cifar10",    16, 256),
    ("mvqvae_celeba64_s1_k16",     MVQVAE, "celeba64",    1,  16),
    ("mvqvae_celeba64_s1_k256",    MVQVAE, "celeba64",    1, 256),
    ("mvqvae_celeba64_s4_k16",     MVQVAE, "celeba64",    4,  16),
    ("mvqvae_celeba64_s4_k256",    MVQVAE, "celeba64",    4, 256),
    ("mvqvae_celeba64_s16_k16",    MVQVAE, "celeba64",   16,  16),
    ("mvqvae_celeba64_s16_k256",   MVQVAE, "celeba64",   16, 256),
    ("mvqvae_imagenet64_s1_k16",   MVQVAE, "imagenet64",  1,  16),
    ("mvqvae_imagenet64_s1_k256",  MVQVAE, "imagenet64",  1, 256),
    ("mvqvae_imagenet64_s4_k16",   MVQVAE, "imagenet64",  4,  16),
    ("mvqvae_imagenet64_s4_k256",  MVQVAE, "imagenet64",  4, 256),
    ("mvqvae_imagenet64_s16_k16",  MVQVAE, "imagenet64", 16,  16),
    ("mvqvae_imagenet64_s16_k256", MVQVAE, "imagenet64", 16, 256),

    ("fsqvae_fmnist_s1_k16",       FSQVAE, "fmnist",      1,  16),
    ("fsqvae_fmnist_s1_k256",      FSQVAE, "fmnist",      1, 256),
    ("fsqvae_fmnist_s4_k16",       FSQVAE, "fmnist",      4,  16),
    ("fsqvae_fmnist_s4_k256",      FSQVAE, "fmnist",      4, 256),
    ("fsqvae_fmnist_s16_k16",      FSQVAE, "fmnist",     16,  16),
    ("fsqvae_fmnist_s16_k256",     FSQVAE, "fmnist",     16, 256),
    ("fsqvae_cifar10_s1_k16",      FSQVAE, "cifar10",     1,  16),
    ("fsqvae_cifar10_s1_k256",     FSQVAE, "cifar10",     1, 256),
    ("fsqvae_cifar10_s4_k16",      FSQVAE, "cifar10",     4,  16),
    ("fsqvae_cifar10_s4_k256",     FSQVAE, "cifar10",     4, 256),
    ("fsqvae_cifar10_s16_k16",     FSQVAE, "cifar10",    16,  16),
    ("fsqvae_cifar10_s16_k256",    FSQVAE, "cifar10",    16, 256),
    ("fsqvae_celeba64_s1_k16",     FSQVAE, "celeba64",    1,  16),
    ("fsqvae_celeba64_s1_k256",    FSQVAE, "celeba64",    1, 256),
    ("fsqvae_celeba64_s4_k16",     FSQVAE, "celeba64",    4,  16),
    ("fsqvae_celeba64_s4_k256",    FSQVAE, "celeba64",    4, 256),
    ("fsqvae_celeba64_s16_k16",    FSQVAE, "celeba64",   16,  16),
    ("fsqvae_celeba64_s16_k256",   FSQVAE, "celeba64",   16, 256),
    ("fsqvae_imagenet64_s1_k16",   FSQVAE, "imagenet64",  1,  16),
    ("fsqvae_imagenet64_s1_k256",  FSQVAE, "imagenet64",  1, 256),
    ("fsqvae_imagenet64_s4_k16",   FSQVAE, "imagenet64",  4,  16),
    ("fsqvae_imagenet64_s4_k256",  FSQVAE, "imagenet64",  4, 256),
    ("fsqvae_imagenet64_s16_k16",  FSQVAE, "imagenet64", 16,  16),
    ("fsqvae_imagenet64_s16_k256", FSQVAE, "imagenet64", 16, 256),

    ("vqgan_fmnist_s1_k16",        VQGAN,  "fmnist",      1,  16),
    ("vqgan_fmnist_s1_k256",       VQGAN,  "fmnist",      1, 256),
    ("vqgan_fmnist_s4_k16",        VQGAN,  "fmnist",      4,  16),
    ("vqgan_fmnist_s4_k256",       VQGAN,  "fmnist",      4, 256),
    ("vqgan_fmnist_s16_k16",       VQGAN,  "fmnist",     16,  16),
    ("vqgan_fmnist_s16_k256",      VQGAN,  "fmnist",     16, 256),
    ("vqgan_cifar10_s1_k16",       VQGAN,  "cifar10",     1,  16),
    ("vqgan_cifar10_s1_k256",      VQGAN,  "cifar10",     1, 256),
    ("vqgan_cifar10_s4_k16",       VQGAN,  "cifar10",     4,  16),
    ("vqgan_cifar10_s4_k256",      VQGAN,  "cifar10",     4, 256),
    ("vqgan_cifar10_s16_k16",      VQGAN,  "cifar10",    16,  16),
    ("vqgan_cifar10_s16_k256",     VQGAN,  "cifar10",    16, 256),
    ("vqgan_celeba64_s1_k16",      VQGAN,  "celeba64",    1,  16),
    ("vqgan_celeba64_s1_k256",     VQGAN,  "celeba64",    1, 256),
    ("vqgan_celeba64_s4_k16",      VQGAN,  "celeba64",    4,  16),
    ("vqgan_celeba64_s4_k256",     VQGAN,  "celeba64",    4, 256),
    ("vqgan_celeba64_s16_k16",     VQGAN,  "celeba64",   16,  16),
    ("vqgan_celeba64_s16_k256",    VQGAN,  "celeba64",   16, 256),
    ("vqgan_imagenet64_s1_k16",    VQGAN,  "imagenet64",  1,  16),
    ("vqgan_imagenet64_s1_k256",   VQGAN,  "imagenet64",  1, 256),
    ("vqgan_imagenet64_s4_k16",    VQGAN,  "imagenet64",  4,  16),
    ("vqgan_imagenet64_s4_k256",   VQGAN,  "imagenet64",  4, 256),
    ("vqgan_imagenet64_s16_k16",   VQGAN,  "imagenet64", 16,  16),
    ("vqgan_imagenet64_s16_k256",  VQGAN,  "imagenet64", 16, 256),

    ("mvqgan_fmnist_s1_k16",       MVQGAN, "fmnist",      1,  16),
    ("mvqgan_fmnist_s1_k256",      MVQGAN, "fmnist",      1, 256),
    ("mvqgan_fmnist_s4_k16",       MVQGAN, "fmnist",      4,  16),
    ("mvqgan_fmnist_s4_k256",      MVQGAN, "fmnist",      4, 256),
    ("mvqgan_fmnist_s16_k16",      MVQGAN, "fmnist",     16,  16),
    ("mvqgan_fmnist_s16_k256",     MVQGAN, "fmnist",     16, 256),
    ("mvqgan_cifar10_s1_k16",      MVQGAN, "cifar10",     1,  16),
    ("mvqgan_cifar10_s1_k256",     MVQGAN, "cifar10",     1, 256),
    ("mvqgan_cifar10_s4_k16",      MVQGAN, "cifar10",     4,  16),
    ("mvqgan_cifar10_s4_k256",     MVQGAN, "cifar10",     4, 256),
    ("mvqgan_cifar10_s16_k16",     MVQGAN, "cifar10",    16,  16),
    ("mvqgan_cifar10_s16_k256",    MVQGAN, "cifar10",    16, 256),
    ("mvqgan_celeba64_s1_k16",     MVQGAN, "celeba64",    1,  16),
    ("mvqgan_celeba64_s1_k256",    MVQGAN, "celeba64",    1, 256),
    ("mvqgan_celeba64_s4_k16",     MVQGAN, "celeba64",    4,  16),
    ("mvqgan_celeba64_s4_k256",    MVQGAN, "celeba64",    4, 256),
    ("mvqgan_celeba64_s16_k16",    MVQGAN, "celeba64",   16,  16),
    ("mvqgan_celeba64_s16_k256",   MVQGAN, "celeba64",   16, 256),
    ("mvqgan_imagenet64_s1_k16",   MVQGAN, "imagenet64",  1,  16),
    ("mvqgan_imagenet64_s1_k256",  MVQGAN, "imagenet64",  1, 256),
    ("mvqgan_imagenet64_s4_k16",   MVQGAN, "imagenet64",  4,  16),
    ("mvqgan_imagenet64_s4_k256",  MVQGAN, "imagenet64",  4, 256),
    ("mvqgan_imagenet64_s16_k16",  MVQGAN, "imagenet64", 16,  16),
    ("mvqgan_imagenet64_s16_k256", MVQGAN, "imagenet64", 16, 256),

    ("fsqgan_fmnist_s1_k16",       FSQGAN, "fmnist",      1,  16),
    ("fsqgan_fmnist_s1_k256",      FSQGAN, "fmnist",      1, 256),
    ("fsqgan_fmnist_s4_k16",       FSQGAN, "fmnist",      4,  16),
    ("fsqgan_fmnist_s4_k256",      FSQGAN, "fmnist",      4, 256),
    ("fsqgan_fmnist_s16_k16",      FSQGAN, "fmnist",     16,  16),
    ("fsqgan_fmnist_s16_k256",     FSQGAN, "fmnist",     16, 256),
    ("fsqgan_cifar10_s1_k16",      FSQGAN, "cifar10",     1,  16),
    ("fsqgan_cifar10_s1_k256",     FSQGAN, "cifar10",     1, 256),
    ("fsqgan_cifar10_s4_k16",      FSQGAN, "cifar10",     4,  16),
    ("fsqgan_cifar10_s4_k256",     FSQGAN, "cifar10",     4, 256),
    ("fsqgan_cifar10_s16_k16",     FSQGAN, "cifar10",    16,  16),
    ("fsqgan_cifar10_s16_k256",    FSQGAN, "cifar10",    16, 256),
    ("fsqgan_celeba64_s1_k16",     FSQGAN, "celeba64",    1,  16),
    ("fsqgan_celeba64_s1_k256",    FSQGAN, "celeba64",    1, 256),
    ("fsqgan_celeba64_s4_k16",     FSQGAN, "celeba64",    4,  16),
    ("fsqgan_celeba64_s4_k256",    FSQGAN, "celeba64",    4, 256),
    ("fsqgan_celeba64_s16_k16",    FSQGAN, "celeba64",   16,  16),
    ("fsqgan_celeba64_s16_k256",   FSQGAN, "celeba64",   16, 256),
    ("fsqgan_imagenet64_s1_k16",   FSQGAN, "imagenet64",  1,  16),
    ("fsqgan_imagenet64_s1_k256",  FSQGAN, "imagenet64",  1, 256),
    ("fsqgan_imagenet64_s4_k16",   FSQGAN, "imagenet64",  4,  16),
    ("fsqgan_imagenet64_s4_k256",  FSQGAN, "imagenet64",  4, 256),
    ("fsqgan_imagenet64_s16_k16",  FSQGAN, "imagenet64", 16,  16),
    ("fsqgan_imagenet64_s16_k256", FSQGAN, "imagenet64", 16, 256),

    # the field's other quantizer families in the same networks (mvq.tokenizers.qvae)
    ("lfqvae_fmnist_s1_k16",         LFQVAE,   "fmnist",      1,  16),
    ("lfqvae_fmnist_s1_k256",        LFQVAE,   "fmnist",      1, 256),
    ("lfqvae_fmnist_s4_k16",         LFQVAE,   "fmnist",      4,  16),
    ("lfqvae_fmnist_s4_k256",        LFQVAE,   "fmnist",      4, 256),
    ("lfqvae_fmnist_s16_k16",        LFQVAE,   "fmnist",     16,  16),
    ("lfqvae_fmnist_s16_k256",       LFQVAE,   "fmnist",     16, 256),
    ("lfqvae_cifar10_s1_k16",        LFQVAE,   "cifar10",     1,  16),
    ("lfqvae_cifar10_s1_k256",       LFQVAE,   "cifar10",     1, 256),
    ("lfqvae_cifar10_s4_k16",        LFQVAE,   "cifar10",     4,  16),
    ("lfqvae_cifar10_s4_k256",       LFQVAE,   "cifar10",     4, 256),
    ("lfqvae_cifar10_s16_k16",       LFQVAE,   "cifar10",    16,  16),
    ("lfqvae_cifar10_s16_k256",      LFQVAE,   "cifar10",    16, 256),
    ("lfqvae_celeba64_s1_k16",       LFQVAE,   "celeba64",    1,  16),
    ("lfqvae_celeba64_s1_k256",      LFQVAE,   "celeba64",    1, 256),
    ("lfqvae_celeba64_s4_k16",       LFQVAE,   "celeba64",    4,  16),
    ("lfqvae_celeba64_s4_k256",      LFQVAE,   "celeba64",    4, 256),
    ("lfqvae_celeba64_s16_k16",      LFQVAE,   "celeba64",   16,  16),
    ("lfqvae_celeba64_s16_k256",     LFQVAE,   "celeba64",   16, 256),
    ("lfqvae_imagenet64_s1_k16",     LFQVAE,   "imagenet64",  1,  16),
    ("lfqvae_imagenet64_s1_k256",    LFQVAE,   "imagenet64",  1, 256),
    ("lfqvae_imagenet64_s4_k16",     LFQVAE,   "imagenet64",  4,  16),
    ("lfqvae_imagenet64_s4_k256",    LFQVAE,   "imagenet64",  4, 256),
    ("lfqvae_imagenet64_s16_k16",    LFQVAE,   "imagenet64", 16,  16),
    ("lfqvae_imagenet64_s16_k256",   LFQVAE,   "imagenet64", 16, 256),

    ("bsqvae_fmnist_s1_k16",         BSQVAE,   "fmnist",      1,  16),
    ("bsqvae_fmnist_s1_k256",        BSQVAE,   "fmnist",      1, 256),
    ("bsqvae_fmnist_s4_k16",         BSQVAE,   "fmnist",      4,  16),
    ("bsqvae_fmnist_s4_k256",        BSQVAE,   "fmnist",      4, 256),
    ("bsqvae_fmnist_s16_k16",        BSQVAE,   "fmnist",     16,  16),
    ("bsqvae_fmnist_s16_k256",       BSQVAE,   "fmnist",     16, 256),
    ("bsqvae_cifar10_s1_k16",        BSQVAE,   "cifar10",     1,  16),
    ("bsqvae_cifar10_s1_k256",       BSQVAE,   "cifar10",     1, 256),
    ("bsqvae_cifar10_s4_k16",        BSQVAE,   "cifar10",     4,  16),
    ("bsqvae_cifar10_s4_k256",       BSQVAE,   "cifar10",     4, 256),
    ("bsqvae_cifar10_s16_k16",       BSQVAE,   "cifar10",    16,  16),
    ("bsqvae_cifar10_s16_k256",      BSQVAE,   "cifar10",    16, 256),
    ("bsqvae_celeba64_s1_k16",       BSQVAE,   "celeba64",    1,  16),
    ("bsqvae_celeba64_s1_k256",      BSQVAE,   "celeba64",    1, 256),
    ("bsqvae_celeba64_s4_k16",       BSQVAE,   "celeba64",    4,  16),
    ("bsqvae_celeba64_s4_k256",      BSQVAE,   "celeba64",    4, 256),
    ("bsqvae_celeba64_s16_k16",      BSQVAE,   "celeba64",   16,  16),
    ("bsqvae_celeba64_s16_k256",     BSQVAE,   "celeba64",   16, 256),
    ("bsqvae_imagenet64_s1_k16",     BSQVAE,   "imagenet64",  1,  16),
    ("bsqvae_imagenet64_s1_k256",    BSQVAE,   "imagenet64",  1, 256),
    ("bsqvae_imagenet64_s4_k16",     BSQVAE,   "imagenet64",  4,  16),
    ("bsqvae_imagenet64_s4_k256",    BSQVAE,   "imagenet64",  4, 256),
    ("bsqvae_imagenet64_s16_k16",    BSQVAE,   "imagenet64", 16,  16),
    ("bsqvae_imagenet64_s16_k256",   BSQVAE,   "imagenet64", 16, 256),

    ("rvqvae_fmnist_s1_k16",         RVQVAE,   "fmnist",      1,  16),
    ("rvqvae_fmnist_s1_k256",        RVQVAE,   "fmnist",      1, 256),
    ("rvqvae_fmnist_s4_k16",         RVQVAE,   "fmnist",      4,  16),
    ("rvqvae_fmnist_s4_k256",        RVQVAE,   "fmnist",      4, 256),
    ("rvqvae_fmnist_s16_k16",        RVQVAE,   "fmnist",     16,  16),
    ("rvqvae_fmnist_s16_k256",       RVQVAE,   "fmnist",     16, 256),
    ("rvqvae_cifar10_s1_k16",        RVQVAE,   "cifar10",     1,  16),
    ("rvqvae_cifar10_s1_k256",       RVQVAE,   "cifar10",     1, 256),
    ("rvqvae_cifar10_s4_k16",        RVQVAE,   "cifar10",     4,  16),
    ("rvqvae_cifar10_s4_k256",       RVQVAE,   "cifar10",     4, 256),
    ("rvqvae_cifar10_s16_k16",       RVQVAE,   "cifar10",    16,  16),
    ("rvqvae_cifar10_s16_k256",      RVQVAE,   "cifar10",    16, 256),
    ("rvqvae_celeba64_s1_k16",       RVQVAE,   "celeba64",    1,  16),
    ("rvqvae_celeba64_s1_k256",      RVQVAE,   "celeba64",    1, 256),
    ("rvqvae_celeba64_s4_k16",       RVQVAE,   "celeba64",    4,  16),
    ("rvqvae_celeba64_s4_k256",      RVQVAE,   "celeba64",    4, 256),
    ("rvqvae_celeba64_s16_k16",      RVQVAE,   "celeba64",   16,  16),
    ("rvqvae_celeba64_s16_k256",     RVQVAE,   "celeba64",   16, 256),
    ("rvqvae_imagenet64_s1_k16",     RVQVAE,   "imagenet64",  1,  16),
    ("rvqvae_imagenet64_s1_k256",    RVQVAE,   "imagenet64",  1, 256),
    ("rvqvae_imagenet64_s4_k16",     RVQVAE,   "imagenet64",  4,  16),
    ("rvqvae_imagenet64_s4_k256",    RVQVAE,   "imagenet64",  4, 256),
    ("rvqvae_imagenet64_s16_k16",    RVQVAE,   "imagenet64", 16,  16),
    ("rvqvae_imagenet64_s16_k256",   RVQVAE,   "imagenet64", 16, 256),

    ("simvqvae_fmnist_s1_k16",       SimVQVAE, "fmnist",      1,  16),
    ("simvqvae_fmnist_s1_k256",      SimVQVAE, "fmnist",      1, 256),
    ("simvqvae_fmnist_s4_k16",       SimVQVAE, "fmnist",      4,  16),
    ("simvqvae_fmnist_s4_k256",      SimVQVAE, "fmnist",      4, 256),
    ("simvqvae_fmnist_s16_k16",      SimVQVAE, "fmnist",     16,  16),
    ("simvqvae_fmnist_s16_k256",     SimVQVAE, "fmnist",     16, 256),
    ("simvqvae_cifar10_s1_k16",      SimVQVAE, "cifar10",     1,  16),
    ("simvqvae_cifar10_s1_k256",     SimVQVAE, "cifar10",     1, 256),
    ("simvqvae_cifar10_s4_k16",      SimVQVAE, "cifar10",     4,  16),
    ("simvqvae_cifar10_s4_k256",     SimVQVAE, "cifar10",     4, 256),
    ("simvqvae_cifar10_s16_k16",     SimVQVAE, "cifar10",    16,  16),
    ("simvqvae_cifar10_s16_k256",    SimVQVAE, "cifar10",    16, 256),
    ("simvqvae_celeba64_s1_k16",     SimVQVAE, "celeba64",    1,  16),
    ("simvqvae_celeba64_s1_k256",    SimVQVAE, "celeba64",    1, 256),
    ("simvqvae_celeba64_s4_k16",     SimVQVAE, "celeba64",    4,  16),
    ("simvqvae_celeba64_s4_k256",    SimVQVAE, "celeba64",    4, 256),
    ("simvqvae_celeba64_s16_k16",    SimVQVAE, "celeba64",   16,  16),
    ("simvqvae_celeba64_s16_k256",   SimVQVAE, "celeba64",   16, 256),
    ("simvqvae_imagenet64_s1_k16",   SimVQVAE, "imagenet64",  1,  16),
    ("simvqvae_imagenet64_s1_k256",  SimVQVAE, "imagenet64",  1, 256),
    ("simvqvae_imagenet64_s4_k16",   SimVQVAE, "imagenet64",  4,  16),
    ("simvqvae_imagenet64_s4_k256",  SimVQVAE, "imagenet64",  4, 256),
    ("simvqvae_imagenet64_s16_k16",  SimVQVAE, "imagenet64", 16,  16),
    ("simvqvae_imagenet64_s16_k256", SimVQVAE, "imagenet64", 16, 256),

    # Masked FSQ: MVQVAE's f and MH-Dropout with FSQ codes for e and e' (mvq.tokenizers.mvqvae)
    ("mfsqvae_fmnist_s1_k16",         MFSQVAE,  "fmnist",      1,  16),
    ("mfsqvae_fmnist_s1_k256",        MFSQVAE,  "fmnist",      1, 256),
    ("mfsqvae_fmnist_s4_k16",         MFSQVAE,  "fmnist",      4,  16),
    ("mfsqvae_fmnist_s4_k256",        MFSQVAE,  "fmnist",      4, 256),
    ("mfsqvae_fmnist_s16_k16",        MFSQVAE,  "fmnist",     16,  16),
    ("mfsqvae_fmnist_s16_k256",       MFSQVAE,  "fmnist",     16, 256),
    ("mfsqvae_cifar10_s1_k16",        MFSQVAE,  "cifar10",     1,  16),
    ("mfsqvae_cifar10_s1_k256",       MFSQVAE,  "cifar10",     1, 256),
    ("mfsqvae_cifar10_s4_k16",        MFSQVAE,  "cifar10",     4,  16),
    ("mfsqvae_cifar10_s4_k256",       MFSQVAE,  "cifar10",     4, 256),
    ("mfsqvae_cifar10_s16_k16",       MFSQVAE,  "cifar10",    16,  16),
    ("mfsqvae_cifar10_s16_k256",      MFSQVAE,  "cifar10",    16, 256),
    ("mfsqvae_celeba64_s1_k16",       MFSQVAE,  "celeba64",    1,  16),
    ("mfsqvae_celeba64_s1_k256",      MFSQVAE,  "celeba64",    1, 256),
    ("mfsqvae_celeba64_s4_k16",       MFSQVAE,  "celeba64",    4,  16),
    ("mfsqvae_celeba64_s4_k256",      MFSQVAE,  "celeba64",    4, 256),
    ("mfsqvae_celeba64_s16_k16",      MFSQVAE,  "celeba64",   16,  16),
    ("mfsqvae_celeba64_s16_k256",     MFSQVAE,  "celeba64",   16, 256),
    ("mfsqvae_imagenet64_s1_k16",     MFSQVAE,  "imagenet64",  1,  16),
    ("mfsqvae_imagenet64_s1_k256",    MFSQVAE,  "imagenet64",  1, 256),
    ("mfsqvae_imagenet64_s4_k16",     MFSQVAE,  "imagenet64",  4,  16),
    ("mfsqvae_imagenet64_s4_k256",    MFSQVAE,  "imagenet64",  4, 256),
    ("mfsqvae_imagenet64_s16_k16",    MFSQVAE,  "imagenet64", 16,  16),
    ("mfsqvae_imagenet64_s16_k256",   MFSQVAE,  "imagenet64", 16, 256),
)
# fmt: on

TOKENIZERS: Registry[Tokenizer] = Registry("tokenizer")


def _factory(
    name: str, cls: type[Tokenizer], dataset: str, s: int, k: int
) -> Callable[..., Tokenizer]:
    """The factory of one ``VARIANTS`` row: its config, then ``overrides``."""
    _, info, table2 = paper_data(dataset)
    size, dim = info.image_size, table2.dim
    base = dict(
        in_channels=info.channels,
        image_size=size,
        factor=size // math.isqrt(s),
        codebook_size=k,
        dim=dim,
        secondary_dim=dim,
    )

    def factory(**overrides: Any) -> Tokenizer:
        return cls(config_from_dict(cls.config_class, base | overrides, name))

    factory.__doc__ = f"{cls.__name__} on {dataset}, {s}+1 tokens, K={k}."
    return factory


for _row in VARIANTS:
    TOKENIZERS.register(_row[0], _row[1])(_factory(*_row))


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
