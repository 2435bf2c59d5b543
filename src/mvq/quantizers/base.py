"""What every quantizer returns, and the input checks they share.

All quantizers (``VectorQuantizer``, ``MaskedVectorQuantizer``, ``FSQ``) take channel-first
feature maps ``(B, C, *spatial)`` (usually ``(B, C, H, W)``) and return a ``QuantizerOutput``.
``encode`` gives ``Tokens`` (``mvq.core.tokens``, the token contract); ``decode(tokens)`` gives back
exactly the tensor that ``forward`` sends to the decoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from mvq.core.tokens import Tokens


@dataclass
class QuantizerOutput:
    """The result of a quantizer's forward pass.

    Attributes:
        quantized: what the decoder takes, same shape as the (primary) input, with
            straight-through gradients to the encoder(s).
        tokens: the discrete codes (``tokens.indices`` for single-codebook quantizers).
        loss: scalar auxiliary loss to add to the reconstruction loss (0 for FSQ).
        logs: detached scalars for monitoring: ``usage`` (fraction of codes used in the
            batch), ``perplexity`` and quantizer-specific terms.
    """

    quantized: Tensor
    tokens: Tokens
    loss: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)

    @property
    def indices(self) -> Tensor:
        """Primary indices, ``(B, *spatial)``."""
        return self.tokens.indices


def check_feature_map(z: Tensor, channels: int, name: str = "input") -> None:
    """Raise one clear ``ValueError`` unless ``z`` is a finite ``(B, channels, *spatial)`` map."""
    if not isinstance(z, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if z.dim() < 3:
        raise ValueError(
            f"{name} must be a channel-first feature map (B, C, H, W) or (B, C, N); got shape "
            f"{tuple(z.shape)}: add the batch/spatial dimensions (e.g. z[None] or z[..., None])"
        )
    if z.shape[1] != channels:
        raise ValueError(
            f"{name} has {z.shape[1]} channels but the quantizer expects {channels}: "
            f"check the encoder's output channels or the quantizer's in_channels"
        )
    if not z.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {z.dtype}")
    if not bool((z.detach() * 0).sum() == 0):  # NaN/Inf give NaN; ~7x cheaper than isfinite
        raise ValueError(
            f"{name} contains NaN or Inf: the encoder diverged or the data is corrupt; "
            "lower the learning rate or check the input pipeline"
        )


def codebook_stats(indices: Tensor, codebook_size: int) -> dict[str, Tensor]:
    """Usage (fraction of codes hit at least once) and perplexity of ``indices``."""
    counts = torch.bincount(indices.reshape(-1), minlength=codebook_size).float()
    return stats_from_counts(counts)


def stats_from_counts(counts: Tensor) -> dict[str, Tensor]:
    """Usage and perplexity from a code histogram ``(K,)``."""
    probs = counts / counts.sum().clamp_min(1.0)
    perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-10))).sum())
    usage = (counts > 0).float().mean()
    return {"usage": usage, "perplexity": perplexity}


def to_channel_last(z: Tensor) -> Tensor:
    """``(B, C, *S) -> (B, *S, C)``."""
    return z.movedim(1, -1)


def to_channel_first(z: Tensor) -> Tensor:
    """``(B, *S, C) -> (B, C, *S)``."""
    return z.movedim(-1, 1)
