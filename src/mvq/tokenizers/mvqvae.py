"""MVQVAE: VQ-VAE-2's networks with Masked Vector Quantization (paper §4.1), and MFSQVAE.

The decoder takes ``e + f(e' * m)``: primary code plus the MH network applied to the masked
secondary code, the mask chosen by MH-Dropout over J samples. f is Table 3's "Decoder 2".
``mask_source="codebook"`` searches a fixed list of J masks instead and makes the token the
chosen mask's index (log2 J bits; see ``MaskedVectorQuantizer``).

MFSQVAE (Masked FSQ, not in the paper) is the same with FSQ codes for e and e': each codebook
an ``FSQ`` whose levels multiply to K/2 (``levels_for_codebook_size``, as FSQVAE), projected
to D and D' channels; f and MH-Dropout exactly as MVQVAE's.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from mvq.core.tokens import TokenLayout, Tokens
from mvq.nets import MHNetwork, table3_kernels
from mvq.quantizers import FSQ, MaskedVectorQuantizer, MHDropoutConfig, QuantizerOutput
from mvq.tokenizers.base import FSQLevels, Tokenizer, TokenizerConfig, refuse_codebook_options


@dataclass
class MVQVAEConfig(TokenizerConfig):
    """MVQVAE config: the shared fields plus MH-Dropout's, flat as they are saved in
    ``config.json`` and set from run configs (``model_config.num_hypotheses=64``); they mean what
    ``MHDropoutConfig``'s fields of the same names mean, and ``mh_dropout`` hands them to the
    quantizer as one object."""

    num_hypotheses: int = 256
    mask_prob: float = 0.5
    mask_mode: str = "per_instance"
    normalize_secondary: bool = False
    search: str = "chunked"
    search_chunk: int | None = None
    compile_search: bool = False
    mask_source: str = "random"
    mask_codebook_seed: int | None = None

    @property
    def mh_dropout(self) -> MHDropoutConfig:
        """This config's MH-Dropout fields as the ``MHDropoutConfig`` the quantizer takes."""
        return MHDropoutConfig(**{f.name: getattr(self, f.name) for f in fields(MHDropoutConfig)})


class MVQVAE(Tokenizer):
    """Tokenizer with a ``MaskedVectorQuantizer``: S primary tokens, 1 secondary, and the mask
    (D' bits, or a log2 J-bit index with a mask codebook)."""

    config_class = MVQVAEConfig

    def __init__(self, config: MVQVAEConfig) -> None:
        super().__init__(config)
        c = config
        f = MHNetwork(
            c.secondary_dim,
            c.dim,
            c.grid,
            table3_kernels(c.factor)["f"],
            channels=c.channels,
            res_channels=c.res_channels,
            num_res_blocks=c.num_res_blocks,
        )
        quantizers = self.build_codebooks()
        self.quantizer = MaskedVectorQuantizer(
            dim=c.dim,
            codebook_size=c.half_codebook if quantizers is None else quantizers[0].codebook_size,
            secondary_dim=c.secondary_dim,
            secondary_codebook_size=None if quantizers is None else quantizers[1].codebook_size,
            f=f,
            mh=c.mh_dropout,
            vq_kwargs=c.vq_kwargs() if quantizers is None else None,
            quantizers=quantizers,
        )
        q = self.quantizer
        self.token_layout = TokenLayout(
            q.primary.codebook_size,
            (c.grid, c.grid),
            q.secondary.codebook_size,
            mask_bits=q.mask_bits,
            mask_codebook_size=q.mask_codebook_size,
        )

    def build_codebooks(self) -> tuple[nn.Module, nn.Module] | None:
        """The (primary, secondary) quantizers; None: the masked quantizer's own VQs."""
        return None

    def quantize(
        self, y: Tensor, y2: Tensor, generator: torch.Generator | None = None
    ) -> QuantizerOutput:
        # fp32 with autocast off, as VQ and FSQ do inside: bf16 scores pick other winners.
        with torch.autocast(y.device.type, enabled=False):
            return self.quantizer(y.float(), y2.float(), generator)

    def decode_latent(self, tokens: Tokens, generator: torch.Generator | None = None) -> Tensor:
        return self.quantizer.decode(tokens, generator)


@dataclass
class MFSQVAEConfig(FSQLevels, MVQVAEConfig):  # FSQLevels first: its fields come last
    """MFSQVAE config: MVQVAE's fields plus FSQ levels (``FSQLevels``, as ``FSQVAEConfig``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.resolve_levels(self.half_codebook)
        refuse_codebook_options(self, "Masked FSQ")


class MFSQVAE(MVQVAE):
    """Masked FSQ: ``e + f(e' ⊙ m)`` with FSQ codes for e and e' (prod(levels) entries each)
    and MVQVAE's f and MH-Dropout."""

    config_class = MFSQVAEConfig

    def build_codebooks(self) -> tuple[nn.Module, nn.Module]:
        c = self.config
        return (
            FSQ(c.levels, in_channels=c.dim, bound=c.bound),
            FSQ(c.secondary_levels, in_channels=c.secondary_dim, bound=c.bound),
        )
