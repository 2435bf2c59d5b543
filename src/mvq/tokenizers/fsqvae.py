"""FSQVAE: the same networks with Finite Scalar Quantization on both levels.

Like VQVAE2 (bottom S tokens + top 1 token, decoder takes both concatenated), with each VQ
replaced by an ``FSQ`` whose levels multiply to K/2 (``levels_for_codebook_size``).
FSQ has no codebook loss: the total loss is the reconstruction error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mvq.quantizers import FSQ, QuantizerOutput, Tokens
from mvq.quantizers.fsq import levels_for_codebook_size
from mvq.tokenizers.base import Tokenizer, TokenizerConfig, TokenLayout
from mvq.tokenizers.vqvae2 import top_upsampler


@dataclass
class FSQVAEConfig(TokenizerConfig):
    """FSQVAE config: the shared fields plus FSQ levels.

    Attributes:
        levels: primary FSQ levels; empty -> ``levels_for_codebook_size(K/2)``.
        secondary_levels: secondary FSQ levels; empty -> the same rule.
        bound: FSQ bound variant ("reference" = the FSQ paper's formula).
    """

    levels: tuple[int, ...] = ()
    secondary_levels: tuple[int, ...] = ()
    bound: str = "reference"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.levels = tuple(self.levels) or levels_for_codebook_size(self.half_codebook)
        self.secondary_levels = tuple(self.secondary_levels) or levels_for_codebook_size(
            self.half_codebook
        )


class FSQVAE(Tokenizer):
    """Hierarchical FSQ tokenizer: prod(levels) primary codes per position, one top token."""

    config_class = FSQVAEConfig

    def __init__(self, config: FSQVAEConfig) -> None:
        super().__init__(config)
        c = config
        self.quant_bottom = FSQ(c.levels, in_channels=c.dim, bound=c.bound)
        self.quant_top = FSQ(c.secondary_levels, in_channels=c.secondary_dim, bound=c.bound)
        self.upsample_top = top_upsampler(c.secondary_dim, c.grid)
        self.token_layout = TokenLayout(
            math.prod(c.levels), (c.grid, c.grid), math.prod(c.secondary_levels)
        )

    @property
    def decoder_in_dim(self) -> int:
        return self.config.dim + self.config.secondary_dim

    def quantize(self, y: Tensor, y2: Tensor) -> QuantizerOutput:
        bottom, top = self.quant_bottom(y), self.quant_top(y2)
        latent = torch.cat(
            [bottom.quantized, self.upsample_top(top.quantized)], 1
        )  # (B, D+D', h, w)
        logs = {f"primary_{k}": v for k, v in bottom.logs.items()}
        logs |= {f"secondary_{k}": v for k, v in top.logs.items()}
        logs |= {"usage": bottom.logs["usage"], "y_rms": y.detach().pow(2).mean().sqrt()}
        return QuantizerOutput(
            latent, Tokens(bottom.indices, top.indices), bottom.loss + top.loss, logs
        )

    def decode_latent(self, tokens: Tokens, generator: torch.Generator | None = None) -> Tensor:
        if tokens.secondary is None:
            raise ValueError("FSQVAE tokens need secondary (top) indices")
        top = self.upsample_top(self.quant_top.decode(Tokens(tokens.secondary)))
        return torch.cat([self.quant_bottom.decode(Tokens(tokens.indices)), top], 1)
