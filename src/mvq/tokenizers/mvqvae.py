"""MVQVAE: VQ-VAE-2's networks with Masked Vector Quantization (paper §4.1).

The decoder takes ``e + f(e' * m)``: primary code plus the MH network applied to the masked
secondary code, the mask chosen by MH-Dropout over J samples. f is Table 3's "Decoder 2".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mvq.nets import MHNetwork, table3_kernels
from mvq.quantizers import MaskedVectorQuantizer, QuantizerOutput
from mvq.tokenizers.base import Tokenizer, TokenizerConfig
from mvq.tokens import TokenLayout, Tokens


@dataclass
class MVQVAEConfig(TokenizerConfig):
    """MVQVAE config: the shared fields plus MH-Dropout's.

    Attributes:
        num_hypotheses: J masks per instance per pass (Fig. 5 sweeps 16-2048).
        mask_prob: Bernoulli probability of a mask bit (0.5).
        mask_mode: "per_instance" (authors' code), "per_code" or "shared" (see
            ``MaskedVectorQuantizer``).
        normalize_secondary: GroupNorm on e' before masking (off: SPEC's stable setting).
        search: "chunked" (no-grad search, winner recomputed), "chunked_bf16" (its first
            pass's matrix products in bf16: faster on CPUs with AMX and on GPUs, same winners)
            or "all_in_graph" (the authors' formulation; same gradients, memory grows with J).
        search_chunk: rows of f per chunk of the no-grad search (None: 4096, or 8192 with
            ``compile_search``).
        compile_search: ``torch.compile`` the search's first pass (same winners; the first
            step compiles for seconds and needs a C++ compiler on CPUs).
    """

    num_hypotheses: int = 256
    mask_prob: float = 0.5
    mask_mode: str = "per_instance"
    normalize_secondary: bool = False
    search: str = "chunked"
    search_chunk: int | None = None
    compile_search: bool = False


class MVQVAE(Tokenizer):
    """Tokenizer with a ``MaskedVectorQuantizer``: S primary tokens, 1 secondary, D' mask bits."""

    config_class = MVQVAEConfig

    def __init__(self, config: MVQVAEConfig) -> None:
        super().__init__(config)
        c = config
        f = MHNetwork(
            c.secondary_dim, c.dim, c.grid, table3_kernels(c.factor)["f"],
            channels=c.channels, res_channels=c.res_channels, num_res_blocks=c.num_res_blocks,
        )  # fmt: skip
        self.quantizer = MaskedVectorQuantizer(
            dim=c.dim,
            codebook_size=c.half_codebook,
            secondary_dim=c.secondary_dim,
            f=f,
            num_hypotheses=c.num_hypotheses,
            mask_prob=c.mask_prob,
            mask_mode=c.mask_mode,
            search=c.search,
            search_chunk=c.search_chunk,
            compile_search=c.compile_search,
            normalize_secondary=c.normalize_secondary,
            vq_kwargs=c.vq_kwargs(),
        )
        self.token_layout = TokenLayout(
            c.half_codebook, (c.grid, c.grid), c.half_codebook, mask_bits=c.secondary_dim
        )

    def quantize(self, y: Tensor, y2: Tensor) -> QuantizerOutput:
        # fp32 with autocast off, as VQ and FSQ do inside: bf16 scores pick other winners.
        with torch.autocast(y.device.type, enabled=False):
            return self.quantizer(y.float(), y2.float())

    def decode_latent(self, tokens: Tokens, generator: torch.Generator | None = None) -> Tensor:
        return self.quantizer.decode(tokens, generator)
