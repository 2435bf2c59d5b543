"""QVAE: the Table 3 networks with any quantizer family, chosen by one config field.

The same hierarchical tokenizer as VQ-VAE-2 and FSQ-VAE (S bottom tokens on the primary grid,
one top token, the decoder reads both concatenated), with the quantizer of both levels built
from ``quantizer = {"family": F, **options}``:

====== ================================= ============================== =====================
family quantizer                         K/2 entries per level become   bits per token
====== ================================= ============================== =====================
vq     ``VectorQuantizer``               K/2 codes                      log2(K/2)
simvq  ``VectorQuantizer(simvq=True)``   K/2 frozen codes × learned map log2(K/2)
rvq    ``ResidualVQ`` (``levels`` = L)   K/2 codes per level            L · log2(K/2)
lfq    ``LFQ``                           d = log2(K/2) sign bits        d
bsq    ``BSQ``                           d = log2(K/2) sign bits        d
fsq    ``FSQ``                           levels multiplying to K/2      log2(K/2)
====== ================================= ============================== =====================

The config's ``beta``, ``ema``, ``init`` and ``dead_code_threshold`` apply to the families
with a codebook (vq, simvq, rvq); the other options of a family go in ``quantizer``. Residual
VQ's ``(B, L, h, w)`` indices travel as a ``(B, L·h, w)`` grid (level-major rows), so priors
model them as one grid of L·h·w tokens (and its top token as ``L × 1``).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mvq.core.tokens import TokenLayout, Tokens
from mvq.quantizers import FSQ, QuantizerOutput, VectorQuantizer
from mvq.quantizers.fsq import levels_for_codebook_size
from mvq.quantizers.residual import ResidualVQ
from mvq.tokenizers.base import TokenizerConfig, refuse_codebook_options
from mvq.tokenizers.vqvae2 import HierarchicalTokenizer

FAMILIES = ("vq", "simvq", "rvq", "lfq", "bsq", "fsq")
CODEBOOK_FAMILIES = ("vq", "simvq", "rvq")  # the ones the config's VQ fields apply to


def _family_class(family: str) -> type[nn.Module]:
    import mvq.quantizers as q

    classes = {
        "vq": VectorQuantizer,
        "simvq": VectorQuantizer,
        "rvq": ResidualVQ,
        "fsq": FSQ,
        "lfq": getattr(q, "LFQ", None),
        "bsq": getattr(q, "BSQ", None),
    }
    cls = classes[family]
    if cls is None:
        raise ValueError(f"quantizer family '{family}' is not available in this mvq")
    return cls


def _accepted(cls: type[nn.Module]) -> set[str]:
    params = inspect.signature(cls.__init__).parameters
    accepted = {n for n, p in params.items() if n != "self" and p.kind != p.VAR_KEYWORD}
    if cls is ResidualVQ:  # its **vq_options are VectorQuantizer's
        accepted |= _accepted(VectorQuantizer)
    return accepted


def check_quantizer_spec(spec: dict[str, Any], entries: int) -> dict[str, Any]:
    """A checked copy of ``spec``: a known family, options its class accepts, and entries
    that the family can make (LFQ/BSQ: a power of 2). Problems are one-line ``ValueError``s."""
    if not isinstance(spec, dict) or "family" not in spec:
        raise ValueError(
            f"quantizer must be a mapping with a 'family' ({', '.join(FAMILIES)}), got {spec!r}"
        )
    family = spec["family"]
    if family not in FAMILIES:
        raise ValueError(
            f"unknown quantizer family '{family}'; choose one of {', '.join(FAMILIES)}"
        )
    options = {k: v for k, v in spec.items() if k != "family"}
    reserved = {"codebook_size", "dim", "in_channels"} | (
        {"beta", "ema", "init", "dead_code_threshold"} if family in CODEBOOK_FAMILIES else set()
    )
    accepted = _accepted(_family_class(family)) - reserved - {"simvq"}
    if family == "rvq":
        accepted.add("levels")
    if family == "fsq":
        accepted -= {"levels"}  # the levels follow from K/2
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(
            f"quantizer family '{family}' has no option {', '.join(unknown)}; it accepts "
            f"{', '.join(sorted(accepted)) or 'none'} (beta, ema, init and dead_code_threshold "
            "are the config's own fields)"
        )
    if family in ("lfq", "bsq") and entries & (entries - 1):
        raise ValueError(
            f"{family} codes are sign bits: K/2 = {entries} must be a power of 2 (pick K = 16 "
            "or K = 256)"
        )
    return {"family": family, **options}


@dataclass
class QVAEConfig(TokenizerConfig):
    """QVAE config: the shared fields plus the quantizer of both levels.

    Attributes:
        quantizer: ``{"family": F, **options}``, F one of ``FAMILIES`` (see the module
            docstring); options are the family's constructor keywords (e.g. ``levels`` and
            ``quantizer_dropout`` for rvq, ``entropy_weight`` for lfq, ``cosine`` for vq).
    """

    quantizer: dict = field(default_factory=lambda: {"family": "vq"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.quantizer = check_quantizer_spec(self.quantizer, self.half_codebook)
        if self.family not in CODEBOOK_FAMILIES:
            refuse_codebook_options(self, f"the {self.family} quantizer")

    @property
    def family(self) -> str:
        return self.quantizer["family"]


def build_quantizer(config: QVAEConfig, dim: int) -> nn.Module:
    """The quantizer of one level: K/2 entries (per level for rvq) on ``dim`` channels."""
    family, n = config.family, config.half_codebook
    options = {k: v for k, v in config.quantizer.items() if k != "family"}
    if family in CODEBOOK_FAMILIES:
        options = config.vq_kwargs() | options
    if family == "vq":
        return VectorQuantizer(n, dim, **options)
    if family == "simvq":
        return VectorQuantizer(n, dim, simvq=True, **options)
    if family == "rvq":
        return ResidualVQ(n, dim, **options)
    if family == "fsq":
        return FSQ(levels_for_codebook_size(n), in_channels=dim, **options)
    return _family_class(family)(int(math.log2(n)), in_channels=dim, **options)


class QVAE(HierarchicalTokenizer):
    """Hierarchical tokenizer whose two levels use the config's quantizer family."""

    config_class = QVAEConfig

    def __init__(self, config: QVAEConfig) -> None:
        super().__init__(config)
        c = config
        self.quant_bottom = build_quantizer(c, c.dim)
        self.quant_top = build_quantizer(c, c.secondary_dim)
        depth = self.depth
        self.token_layout = TokenLayout(
            self.quant_bottom.codebook_size,
            (depth * c.grid, c.grid),
            self.quant_top.codebook_size,
            (depth, 1),
        )

    @property
    def depth(self) -> int:
        """Indices per position: L for residual VQ, else 1."""
        return getattr(self.quant_bottom, "num_levels", 1)

    def quantize(
        self, y: Tensor, y2: Tensor, generator: torch.Generator | None = None
    ) -> QuantizerOutput:
        out = super().quantize(y, y2, generator)
        if self.depth == 1:
            return out
        t = out.tokens  # (B, L, h, w) and (B, L, 1, 1) -> grids of (L·h, w) and (L, 1)
        tokens = Tokens(t.indices.flatten(1, 2), t.secondary.flatten(1, 2))
        return QuantizerOutput(out.quantized, tokens, out.loss, out.logs)

    def decode_latent(self, tokens: Tokens, generator: torch.Generator | None = None) -> Tensor:
        if self.depth > 1:
            g, depth = self.config.grid, self.depth
            if tokens.secondary is None:
                raise ValueError(f"{type(self).__name__} tokens need secondary (top) indices")
            tokens = Tokens(
                tokens.indices.unflatten(1, (depth, g)), tokens.secondary.unflatten(1, (depth, 1))
            )
        return super().decode_latent(tokens, generator)


@dataclass
class LFQVAEConfig(QVAEConfig):
    """``QVAEConfig`` whose quantizer defaults to LFQ (lookup-free quantization)."""

    quantizer: dict = field(default_factory=lambda: {"family": "lfq"})


@dataclass
class BSQVAEConfig(QVAEConfig):
    """``QVAEConfig`` whose quantizer defaults to BSQ (binary spherical quantization)."""

    quantizer: dict = field(default_factory=lambda: {"family": "bsq"})


@dataclass
class RVQVAEConfig(QVAEConfig):
    """``QVAEConfig`` whose quantizer defaults to residual VQ (2 levels, else ``levels``)."""

    quantizer: dict = field(default_factory=lambda: {"family": "rvq"})


@dataclass
class SimVQVAEConfig(QVAEConfig):
    """``QVAEConfig`` whose quantizer defaults to SimVQ codebooks."""

    quantizer: dict = field(default_factory=lambda: {"family": "simvq"})


class LFQVAE(QVAE):
    """QVAE with lookup-free quantization on both levels (d = log2(K/2) bits per token)."""

    config_class = LFQVAEConfig


class BSQVAE(QVAE):
    """QVAE with binary spherical quantization on both levels (d = log2(K/2) bits per token)."""

    config_class = BSQVAEConfig


class RVQVAE(QVAE):
    """QVAE with residual VQ on both levels (L levels of K/2 codes; tokens as L·h rows)."""

    config_class = RVQVAEConfig


class SimVQVAE(QVAE):
    """QVAE with SimVQ codebooks (a frozen random codebook times a learned map)."""

    config_class = SimVQVAEConfig
