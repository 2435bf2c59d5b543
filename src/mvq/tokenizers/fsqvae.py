"""FSQVAE: the same networks with Finite Scalar Quantization on both levels.

Like VQVAE2 (bottom S tokens + top 1 token, decoder takes both concatenated), with each VQ
replaced by an ``FSQ`` whose levels multiply to K/2 (``levels_for_codebook_size``).
FSQ has no codebook loss: the total loss is the reconstruction error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mvq.core.tokens import TokenLayout
from mvq.quantizers import FSQ
from mvq.tokenizers.base import FSQLevels, TokenizerConfig
from mvq.tokenizers.vqvae2 import HierarchicalTokenizer


@dataclass
class FSQVAEConfig(FSQLevels, TokenizerConfig):  # FSQLevels first: its fields come last
    """FSQVAE config: the shared fields plus FSQ levels (``FSQLevels``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.resolve_levels(self.half_codebook)


class FSQVAE(HierarchicalTokenizer):
    """Hierarchical FSQ tokenizer: prod(levels) primary codes per position, one top token."""

    config_class = FSQVAEConfig

    def __init__(self, config: FSQVAEConfig) -> None:
        super().__init__(config)
        c = config
        self.quant_bottom = FSQ(c.levels, in_channels=c.dim, bound=c.bound)
        self.quant_top = FSQ(c.secondary_levels, in_channels=c.secondary_dim, bound=c.bound)
        self.token_layout = TokenLayout(
            math.prod(c.levels), (c.grid, c.grid), math.prod(c.secondary_levels)
        )
