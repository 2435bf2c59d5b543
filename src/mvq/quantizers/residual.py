"""Residual vector quantization (Zeghidour et al. 2021, SoundStream; Lee et al. 2022, RQ-VAE).

L levels of VQ, each on what the levels before it left over::

    r_0 = y,    q_l = Q_l(r_l),    r_{l+1} = r_l - q_l,    ŷ = Σ_{l<L} q_l

so L indices of log2 K bits each describe one position: ``bits_per_token = L · log2 K``.
Every level is a ``VectorQuantizer`` with the same options (EMA, k-means init, dead-code
restart, cosine codes, a low-dimensional lookup, the rotation trick, SimVQ: whatever
``VectorQuantizer`` accepts), so each level keeps its own codebook, statistics and restarts,
all synchronised across DDP ranks as a single ``VectorQuantizer`` is.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from mvq.core.tokens import Tokens
from mvq.quantizers.base import (
    QuantizerOutput,
    check_feature_map,
    to_channel_first,
    to_channel_last,
)
from mvq.quantizers.vq import ChannelProjection, VectorQuantizer, _broadcast_


class ResidualVQ(nn.Module):
    """L levels of ``VectorQuantizer`` on the residual, for channel-first feature maps.

    Args:
        codebook_size: entries K of each level's codebook.
        dim: code dimension D of every level.
        levels: L, the number of levels (>= 1).
        in_channels: channels C of the input; when != D, one linear projection in and one out
            (shared by the levels, as in SoundStream).
        quantizer_dropout: in training, the probability that a batch uses only its first
            ``n ~ U{1..L}`` levels (SoundStream's quantizer dropout: one model that decodes at
            every rate); the same ``n`` on every DDP rank. 0 disables it.
        **vq_options: keyword options of every level's ``VectorQuantizer`` (``beta``, ``ema``,
            ``decay``, ``init``, ``kmeans_iters``, ``dead_code_threshold`` and the codebook
            options ``VectorQuantizer`` offers).

    Shapes: ``forward(z)`` takes ``(B, C, *S)`` and returns ``quantized`` of the same shape
    and ``tokens.indices`` of shape ``(B, L, *S)`` (level-major).
    """

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        levels: int = 2,
        in_channels: int | None = None,
        quantizer_dropout: float = 0.0,
        **vq_options: Any,
    ) -> None:
        super().__init__()
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ValueError(f"levels must be an integer >= 1, got {levels!r}: use 1 for plain VQ")
        if not 0.0 <= quantizer_dropout < 1.0:
            raise ValueError(f"quantizer_dropout must be in [0, 1), got {quantizer_dropout}")
        self.codebook_size, self.dim, self.num_levels = codebook_size, dim, levels
        self.in_channels = in_channels or dim
        self.quantizer_dropout = quantizer_dropout
        self.project_in = ChannelProjection(self.in_channels, dim)
        self.project_out = ChannelProjection(dim, self.in_channels)
        self.levels = nn.ModuleList(
            VectorQuantizer(codebook_size, dim, **vq_options) for _ in range(levels)
        )

    @property
    def bits_per_token(self) -> float:
        """Bits per position: L · log2 K."""
        return self.num_levels * math.log2(self.codebook_size)

    def _active_levels(self) -> int:
        """Levels used by this training batch (all of them outside quantizer dropout)."""
        if not (self.training and self.quantizer_dropout > 0):
            return self.num_levels
        draw = torch.rand(()) < self.quantizer_dropout
        n = torch.randint(1, self.num_levels + 1, ()) if draw else torch.tensor(self.num_levels)
        return int(_broadcast_(n.reshape(1))[0])  # one n for every rank: EMA all-reduces match

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantise ``z`` ``(B, C, *S)`` level by level; in training each level updates its own
        statistics. Levels dropped by quantizer dropout give index 0 and no loss."""
        check_feature_map(z, self.in_channels)
        residual = to_channel_first(self.project_in(to_channel_last(z)))  # (B, D, *S)
        active = self._active_levels()
        total = torch.zeros_like(residual)
        loss = residual.new_zeros((), dtype=torch.float32)
        indices, logs = [], {}
        for i, level in enumerate(self.levels):
            if i >= active:
                indices.append(torch.zeros_like(indices[0]))
                continue
            out = level(residual)
            total = total + out.quantized  # each level's straight-through reaches y
            residual = residual - out.quantized.detach()
            loss = loss + out.loss
            indices.append(out.indices)
            logs |= {f"level{i}_{k}": v for k, v in out.logs.items()}
        used = [logs[f"level{i}_usage"] for i in range(active)]
        perplexity = [logs[f"level{i}_perplexity"] for i in range(active)]
        logs["usage"] = torch.stack(used).mean()
        logs["perplexity"] = torch.stack(perplexity).mean()
        logs["levels"] = torch.tensor(float(active))
        quantized = to_channel_first(self.project_out(to_channel_last(total)))
        return QuantizerOutput(quantized, Tokens(torch.stack(indices, 1)), loss, logs)

    @torch.no_grad()
    def encode(self, z: Tensor) -> Tokens:
        """Indices ``(B, C, *S) -> (B, L, *S)``, greedily level by level; no statistics change."""
        check_feature_map(z, self.in_channels)
        residual = self.project_in(to_channel_last(z)).float()  # (B, *S, D)
        return Tokens(self._residual_indices(residual))

    def _residual_indices(self, residual: Tensor) -> Tensor:
        """Greedy residual search on channel-last ``(B, *S, D)`` -> ``(B, L, *S)``."""
        indices = []
        for level in self.levels:
            idx = level.encode(to_channel_first(residual)).indices  # (B, *S)
            residual = residual - level.indices_to_codes(idx).float()
            indices.append(idx)
        return torch.stack(indices, 1)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Each level's code, channel-last: ``(B, L, *S) -> (B, L, *S, D)`` (their sum over L is
        what the decoder reads, before the output projection)."""
        self.check_indices(indices)
        codes = [level.indices_to_codes(indices[:, i]) for i, level in enumerate(self.levels)]
        return torch.stack(codes, 1)

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """Per-level codes ``(B, L, *S, D)`` -> indices ``(B, L, *S)``: each level's nearest
        entry, the inverse of ``indices_to_codes``. (A sum of codes has no unique split.)"""
        if codes.dim() < 3 or codes.shape[1] != self.num_levels:
            raise ValueError(
                f"residual VQ codes must be per level, (B, L={self.num_levels}, *S, D); got "
                f"{tuple(codes.shape)}"
            )
        return torch.stack(
            [
                level.encode(to_channel_first(codes[:, i].float())).indices
                for i, level in enumerate(self.levels)
            ],
            1,
        )

    def decode(self, tokens: Tokens | Tensor) -> Tensor:
        """What ``forward`` gives the decoder for these indices: ``(B, L, *S) -> (B, C, *S)``."""
        indices = tokens.indices if isinstance(tokens, Tokens) else tokens
        total = self.indices_to_codes(indices).sum(1)  # (B, *S, D)
        return to_channel_first(self.project_out(total))

    def check_indices(self, indices: Tensor) -> None:
        """Raise a clear error for indices of the wrong rank, type or range."""
        if indices.dim() < 2 or indices.shape[1] != self.num_levels:
            raise ValueError(
                f"residual VQ indices must be (B, L={self.num_levels}, *S), got shape "
                f"{tuple(indices.shape)}: they come from a quantizer with other levels"
            )
        for level in self.levels[:1]:
            level.check_indices(indices)

    def extra_repr(self) -> str:
        return (
            f"codebook_size={self.codebook_size}, dim={self.dim}, levels={self.num_levels}, "
            f"quantizer_dropout={self.quantizer_dropout}"
        )
