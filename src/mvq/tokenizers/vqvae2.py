"""VQ-VAE-2 baseline of the MVQ paper: hierarchical VQ, bottom S tokens + top 1 token.

The same E, E', D as MVQVAE (paper appendix A.6). The decoder takes the primary (bottom) code
and the top code upsampled to the primary grid, concatenated; MVQ sums ``e + f(e' * m)``
instead. As in MVQVAE, E' sees only the primary encoder's output (Razavi et al.'s top encoder
also sees the image; the paper keeps the networks equal).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mvq.core.tokens import TokenLayout, Tokens
from mvq.quantizers import QuantizerOutput, VectorQuantizer
from mvq.tokenizers.base import Tokenizer, TokenizerConfig


@dataclass
class VQVAE2Config(TokenizerConfig):
    """VQ-VAE-2 config: only the shared fields (see ``TokenizerConfig``)."""


def top_upsampler(dim: int, grid: int) -> nn.Module:
    """Learned 1x1 -> grid x grid upsampling of the top code (identity for a 1x1 grid)."""
    return nn.ConvTranspose2d(dim, dim, grid, stride=grid) if grid > 1 else nn.Identity()


class HierarchicalTokenizer(Tokenizer):
    """Bottom codes on the primary grid + one top code, concatenated for the decoder.

    Subclasses set ``quant_bottom`` / ``quant_top`` (any quantizer of ``mvq.quantizers``).
    """

    quant_bottom: nn.Module
    quant_top: nn.Module

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__(config)
        self.upsample_top = top_upsampler(config.secondary_dim, config.grid)

    @property
    def decoder_in_dim(self) -> int:
        return self.config.dim + self.config.secondary_dim

    def quantize(
        self, y: Tensor, y2: Tensor, generator: torch.Generator | None = None
    ) -> QuantizerOutput:
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
            raise ValueError(f"{type(self).__name__} tokens need secondary (top) indices")
        top = self.upsample_top(self.quant_top.decode(tokens.secondary))
        return torch.cat([self.quant_bottom.decode(tokens.indices), top], 1)


class VQVAE2(HierarchicalTokenizer):
    """Hierarchical VQ tokenizer: K/2 bottom entries on the primary grid, K/2 top entries."""

    config_class = VQVAE2Config

    def __init__(self, config: VQVAE2Config) -> None:
        super().__init__(config)
        c = config
        self.quant_bottom = VectorQuantizer(c.half_codebook, c.dim, **c.vq_kwargs())
        self.quant_top = VectorQuantizer(c.half_codebook, c.secondary_dim, **c.vq_kwargs())
        self.token_layout = TokenLayout(c.half_codebook, (c.grid, c.grid), c.half_codebook)
