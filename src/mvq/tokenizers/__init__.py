"""Tokenizers (VQVAE2, MVQVAE, FSQVAE and their GAN-trained VQGAN, MVQGAN, FSQGAN; QVAE with
the field's other quantizer families: LFQVAE, BSQVAE, RVQVAE, SimVQVAE; MFSQVAE, Masked FSQ)
and their registry of the paper's settings (``mvq.tokenizers.variants``, one literal row per
name).

Variant names read ``<arch>_<dataset>_s<S>_k<K>``: e.g. ``mvqvae_fmnist_s4_k16`` is MVQVAE on
Fashion-MNIST with 4 + 1 tokens and K = 16 codebook entries (8 primary + 8 secondary);
``mvqgan_fmnist_s4_k16`` the same networks trained with the VQGAN objective.

Imports ``mvq.core`` (``TokenLayout`` is re-exported here; saved models; the registry; token
files for ``mvq.tokenizers.apply``, the jobs that apply a trained tokenizer to data),
``mvq.quantizers``, ``mvq.nets``, ``mvq.losses`` (the GAN objective) and ``mvq.data``; never the
priors or samplers.
"""

from mvq.core.tokens import TokenLayout
from mvq.tokenizers.base import Tokenizer, TokenizerConfig, TokenizerOutput, encode_images
from mvq.tokenizers.fsqvae import FSQVAE, FSQVAEConfig
from mvq.tokenizers.gan import FSQGAN, MVQGAN, VQGAN, FSQGANConfig, MVQGANConfig, VQGANConfig
from mvq.tokenizers.mvqvae import MFSQVAE, MVQVAE, MFSQVAEConfig, MVQVAEConfig
from mvq.tokenizers.qvae import (
    BSQVAE,
    LFQVAE,
    QVAE,
    RVQVAE,
    BSQVAEConfig,
    LFQVAEConfig,
    QVAEConfig,
    RVQVAEConfig,
    SimVQVAE,
    SimVQVAEConfig,
)
from mvq.tokenizers.variants import (
    ARCHITECTURES,
    TOKENIZERS,
    VARIANTS,
    create_tokenizer,
    list_tokenizers,
    load_tokenizer,
)
from mvq.tokenizers.vqvae2 import VQVAE2, VQVAE2Config

__all__ = [
    "ARCHITECTURES",
    "BSQVAE",
    "BSQVAEConfig",
    "LFQVAE",
    "LFQVAEConfig",
    "MFSQVAE",
    "MFSQVAEConfig",
    "QVAE",
    "QVAEConfig",
    "RVQVAE",
    "RVQVAEConfig",
    "SimVQVAE",
    "SimVQVAEConfig",
    "FSQGAN",
    "FSQVAE",
    "MVQGAN",
    "MVQVAE",
    "TOKENIZERS",
    "VARIANTS",
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
    "encode_images",
    "list_tokenizers",
    "load_tokenizer",
]
