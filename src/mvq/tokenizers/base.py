"""What the three tokenizers share: the config fields, the Table 3 networks, the loss.

A tokenizer maps images ``(B, C, H, W)`` in [-1, 1] to tokens (``mvq.core.tokens.Tokens``): S
primary indices on an ``h x w`` grid, one secondary index, and (MVQ only) a D'-bit mask; its
``token_layout`` (``mvq.core.tokens.TokenLayout``) says their shape.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from mvq.core.pixels import uint8_to_float
from mvq.core.pretrained import PretrainedMixin
from mvq.core.tokens import TokenLayout, Tokens
from mvq.nets import Decoder, PrimaryEncoder, SecondaryEncoder, primary_grid
from mvq.quantizers import QuantizerOutput
from mvq.quantizers.fsq import levels_for_codebook_size

VQ_OPTIONS = ("cosine", "codebook_dim", "rotation_trick", "simvq", "decay", "kmeans_iters")


@dataclass
class TokenizerConfig:
    """Fields every tokenizer has. Defaults: Fashion-MNIST, 4+1 tokens, K = 16 (Table 2/3).

    Attributes:
        in_channels: image channels.
        image_size: H = W of the images.
        factor: downsampling factor F; the primary grid is ``image_size / F``.
        codebook_size: K, the paper's total: K/2 primary + K/2 secondary entries.
        dim: primary code dimension D.
        secondary_dim: secondary code dimension D'.
        channels, res_channels, num_res_blocks: Table 3 widths (128, 64, 2).
        beta: commitment weight.
        ema, init, dead_code_threshold: codebook options of ``VectorQuantizer``.
        vq_options: more ``VectorQuantizer`` options for every codebook (``VQ_OPTIONS``:
            cosine codes, a low-dimensional lookup, the rotation trick, SimVQ, the EMA decay,
            k-means iterations), e.g. ``{"cosine": True, "codebook_dim": 8}``.
    """

    in_channels: int = 1
    image_size: int = 28
    factor: int = 14
    codebook_size: int = 16
    dim: int = 16
    secondary_dim: int = 16
    channels: int = 128
    res_channels: int = 64
    num_res_blocks: int = 2
    beta: float = 0.25
    ema: bool = False
    init: str = "random"
    dead_code_threshold: float = 0.0
    vq_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        primary_grid(self.image_size, self.factor)  # unsupported (size, F) -> clear error
        unknown = sorted(set(self.vq_options) - set(VQ_OPTIONS))
        if unknown:
            raise ValueError(
                f"vq_options has no {', '.join(unknown)}; it takes {', '.join(VQ_OPTIONS)} "
                "(beta, ema, init and dead_code_threshold are fields of their own)"
            )
        if self.codebook_size < 2 or self.codebook_size % 2:
            raise ValueError(
                f"codebook_size K={self.codebook_size} must be even and >= 2: "
                "it is split into K/2 primary and K/2 secondary entries"
            )

    @property
    def grid(self) -> int:
        """Side of the primary grid."""
        return primary_grid(self.image_size, self.factor)

    @property
    def half_codebook(self) -> int:
        """Entries per codebook (K/2)."""
        return self.codebook_size // 2

    def vq_kwargs(self) -> dict:
        """Options forwarded to each ``VectorQuantizer``."""
        return {
            "beta": self.beta,
            "ema": self.ema,
            "init": self.init,
            "dead_code_threshold": self.dead_code_threshold,
            **self.vq_options,
        }


def in_order(
    dataset: Dataset, batch_size: int, generator: torch.Generator | None = None
) -> DataLoader:
    """``dataset`` in order, ``batch_size`` items a batch. A loader draws a base seed when it
    starts: from ``generator`` when that is a CPU generator (else from the global RNG), so the
    masks drawn after it on the CPU are those the global RNG, seeded alike, drew before
    generators were passed (token directories stay byte-identical)."""
    cpu = generator is not None and generator.device.type == "cpu"
    return DataLoader(dataset, batch_size=batch_size, generator=generator if cpu else None)


@torch.no_grad()
def encode_images(
    tokenizer: Tokenizer,
    images: Tensor | Iterable[Tensor],
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> Tokens:
    """Tokens (on the CPU) of images ``(N, C, H, W)``, or of an iterable of such batches, in
    [-1, 1] or uint8 (mapped by ``mvq.core.pixels``): ``batch_size`` rows at a time, in eval mode,
    on the tokenizer's device; MVQ's candidate masks come from ``generator`` (on that device).
    The one way mvq turns images into tokens."""
    device = next(tokenizer.parameters()).device
    batches = [images] if isinstance(images, Tensor) else images
    tokenizer.eval()
    parts = []
    for batch in batches:
        for x in batch.split(batch_size):  # (b, C, H, W)
            x = uint8_to_float(x) if x.dtype == torch.uint8 else x
            parts.append(tokenizer.encode(x.to(device), generator).to("cpu"))
    return Tokens.cat(parts)


CODEBOOK_FIELDS = ("ema", "init", "dead_code_threshold", "vq_options")  # VectorQuantizer's


def refuse_codebook_options(config: TokenizerConfig, what: str) -> None:
    """One-line ``ValueError`` when a tokenizer without VQ codebooks (``what``: "Masked FSQ",
    "the lfq quantizer", ...) is given codebook options: refused, not silently ignored."""
    defaults = TokenizerConfig()
    changed = [n for n in CODEBOOK_FIELDS if getattr(config, n) != getattr(defaults, n)]
    if changed:
        raise ValueError(
            f"{', '.join(changed)} apply to VQ codebooks; {what} has none: leave them at their "
            "defaults"
        )


@dataclass
class FSQLevels:
    """The FSQ fields of a config (FSQVAE, Masked FSQ); ``resolve_levels`` fills empty ones.

    Attributes:
        levels: primary FSQ levels; empty -> ``levels_for_codebook_size(K/2)``.
        secondary_levels: secondary FSQ levels; empty -> the same rule.
        bound: FSQ bound variant ("reference" = the FSQ paper's formula).
    """

    levels: tuple[int, ...] = ()
    secondary_levels: tuple[int, ...] = ()
    bound: str = "reference"

    def resolve_levels(self, entries: int) -> None:
        """Empty levels become ``levels_for_codebook_size(entries)``."""
        self.levels = tuple(self.levels) or levels_for_codebook_size(entries)
        self.secondary_levels = tuple(self.secondary_levels) or levels_for_codebook_size(entries)


@dataclass
class TokenizerOutput:
    """``forward`` result: reconstruction, tokens, total loss and detached logs."""

    recon: Tensor
    tokens: Tokens
    loss: Tensor
    logs: dict[str, Tensor]


class Tokenizer(nn.Module, PretrainedMixin):
    """Base: builds E, E' and D from the config; subclasses add the quantizer.

    Subclasses implement ``quantize(y, y2, generator) -> QuantizerOutput`` (its ``quantized``
    is the decoder input), ``decode_latent(tokens, generator) -> decoder input`` and set
    ``self.token_layout`` (a ``TokenLayout``); ``decoder_in_dim`` when the decoder takes more
    than D channels.

    Randomness is passed, not global: ``encode``, ``forward`` and ``decode`` take an optional
    ``torch.Generator`` on the model's device (MVQ's mask search and the masks ``decode``
    draws; None: the global RNG, as in training). The other tokenizers draw nothing.
    """

    config: TokenizerConfig
    token_layout: TokenLayout

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.config = c = config
        widths = dict(
            channels=c.channels, res_channels=c.res_channels, num_res_blocks=c.num_res_blocks
        )
        self.encoder = PrimaryEncoder(c.in_channels, c.image_size, c.factor, c.dim, **widths)
        self.secondary_encoder = SecondaryEncoder(
            c.dim, c.image_size, c.factor, c.secondary_dim, **widths
        )
        self.decoder = Decoder(self.decoder_in_dim, c.in_channels, c.image_size, c.factor, **widths)

    @property
    def decoder_in_dim(self) -> int:
        return self.config.dim

    def check_images(self, x: Tensor) -> None:
        """One clear error for images of the wrong shape or with NaN."""
        c = self.config
        want = (c.in_channels, c.image_size, c.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"{type(self).__name__} expects images (B, {want[0]}, {want[1]}, {want[2]}), "
                f"got {tuple(x.shape)}: resize the data or build the tokenizer for this size"
            )

    def autoencode(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, QuantizerOutput]:
        """Encode, quantise and decode ``(B, C, H, W)``: the reconstruction and the quantizer's
        output (tokens, codebook loss, logs)."""
        self.check_images(x)
        y = self.encoder(x)  # (B, D, h, w)
        q = self.quantize(y, self.secondary_encoder(y), generator)
        return self.decoder(q.quantized), q  # (B, C, H, W)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> TokenizerOutput:
        """Encode, quantise and decode a batch ``(B, C, H, W)``; ``loss`` = rec + quantizer."""
        recon, q = self.autoencode(x, generator)
        rec = F.mse_loss(recon, x)
        logs = {"rec": rec.detach(), "quant_loss": q.loss.detach(), **q.logs}
        return TokenizerOutput(recon, q.tokens, rec + q.loss, logs)

    def loss(self, batch: tuple[Tensor, Tensor] | Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Training objective on an ``(images, labels)`` batch (the trainer's contract)."""
        x = batch[0] if isinstance(batch, tuple | list) else batch
        out = self(x)
        return out.loss, out.logs

    @torch.no_grad()
    def encode(self, x: Tensor, generator: torch.Generator | None = None) -> Tokens:
        """Images ``(B, C, H, W)`` -> tokens (eval-mode statistics; no codebook updates);
        ``generator`` draws MVQ's candidate masks (None: the global RNG)."""
        self.check_images(x)
        was_training = self.training
        self.eval()
        try:
            y = self.encoder(x)  # (B, D, h, w); no decoder pass: only the tokens are wanted
            return self.quantize(y, self.secondary_encoder(y), generator).tokens
        finally:
            self.train(was_training)

    def decode(self, tokens: Tokens, generator: torch.Generator | None = None) -> Tensor:
        """Tokens -> images ``(B, C, H, W)`` (MVQ draws a random mask when none is given)."""
        return self.decoder(self.decode_latent(tokens, generator))

    @property
    def bits_per_image(self) -> float:
        """Rate of the discrete description (SPEC "Rate"), in bits per image."""
        t = self.token_layout
        bits = math.prod(t.primary_grid) * math.log2(t.primary_vocab)
        return bits + math.prod(t.secondary_grid) * math.log2(t.secondary_vocab) + t.mask_bits
