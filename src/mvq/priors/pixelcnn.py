"""Gated PixelCNN prior over the primary grid, with a secondary head (VQ-VAE-2 style).

The primary grid is modelled in raster order by a gated PixelCNN (van den Oord et al. 2016)
without the blind spot: a vertical stack sees the rows above, a horizontal stack the pixels to
the left in the same row plus the vertical stack, and every layer computes
``tanh(W_f * x + V_f c) * sigmoid(W_g * x + V_g c)`` with a class-conditional bias ``V c``.
Causality comes from shifts and one-sided padding instead of masked kernels: the inputs of the
first layer are the token embeddings shifted one row down (vertical) and one column right
(horizontal); every convolution then only reaches up (vertical) or left (horizontal).

The secondary token (MVQ and VQ-VAE-2 have ``S' = 1``) is predicted by a small head from the
PixelCNN's last features plus each position's own token embedding (the features at a position
only see earlier tokens; adding the token itself makes the pool cover the whole grid), with a
learned position embedding, pooled over the grid. The MVQ paper pairs a PixelCNN with
VQ-VAE-2/MVQVAE and conditions the secondary codes on the primary sequence; with a 1-token
secondary a pooled summary of the whole primary grid is that conditioning. Larger secondary
grids need ``TransformerPrior`` or ``MaskGITPrior``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvq.core.pretrained import PretrainedMixin
from mvq.priors.common import PRIORS, PriorLayout, check_batch, nll_logs, refuse_mask_model


def down_shift(x: Tensor) -> Tensor:
    """Shift ``(B, C, H, W)`` one row down (row 0 becomes zeros)."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def right_shift(x: Tensor) -> Tensor:
    """Shift ``(B, C, H, W)`` one column right (column 0 becomes zeros)."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


def gate(x: Tensor) -> Tensor:
    """Gated activation ``tanh(a) * sigmoid(b)`` of the two halves of ``(B, 2C, H, W)``."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One gated PixelCNN layer with vertical and horizontal stacks."""

    def __init__(self, dim: int, kernel_size: int, num_classes: int = 0) -> None:
        super().__init__()
        self.pad = p = kernel_size // 2
        self.v_conv = nn.Conv2d(dim, 2 * dim, (p + 1, kernel_size))  # rows i-p..i
        self.h_conv = nn.Conv2d(dim, 2 * dim, (1, p + 1))  # columns j-p..j of row i
        self.v_to_h = nn.Conv2d(2 * dim, 2 * dim, 1)
        self.h_out = nn.Conv2d(dim, dim, 1)
        self.class_bias = nn.Embedding(num_classes, 2 * dim) if num_classes else None

    def forward(self, v: Tensor, h: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(v, h)`` each ``(B, C, H, W)`` -> the next layer's ``(v, h)``."""
        p = self.pad
        v_pre = self.v_conv(F.pad(v, (p, p, p, 0)))  # (B, 2C, H, W)
        # v at row i only sees tokens of rows < i, so feeding it to row i keeps causality
        h_pre = self.h_conv(F.pad(h, (p, 0, 0, 0))) + self.v_to_h(v_pre)  # (B, 2C, H, W)
        if self.class_bias is not None and labels is not None:
            bias = self.class_bias(labels)[:, :, None, None]  # (B, 2C, 1, 1)
            v_pre, h_pre = v_pre + bias, h_pre + bias
        return gate(v_pre), h + self.h_out(gate(h_pre))


@dataclass
class PixelCNNPriorConfig(PriorLayout):
    """Token layout (see ``PriorLayout``; secondary grid 1x1 or none) and PixelCNN sizes."""

    dim: int = 64
    layers: int = 8
    kernel_size: int = 5
    head_dim: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.has_secondary and self.secondary_len != 1:
            raise ValueError(
                f"PixelCNNPrior models one secondary token, got secondary_grid "
                f"{self.secondary_grid}: use TransformerPrior or MaskGITPrior for larger grids"
            )
        if self.kernel_size < 3 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 3, got {self.kernel_size}")


class PixelCNNPrior(nn.Module, PretrainedMixin):
    """Gated PixelCNN over the primary grid + pooled head for the secondary token."""

    config_class = PixelCNNPriorConfig

    def __init__(self, config: PixelCNNPriorConfig) -> None:
        super().__init__()
        self.config = c = config
        refuse_mask_model(c, "PixelCNNPrior")
        cond = c.num_classes
        self.embed = nn.Embedding(c.primary_vocab, c.dim)
        self.layers = nn.ModuleList(GatedLayer(c.dim, c.kernel_size, cond) for _ in range(c.layers))
        self.out = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(c.dim, c.head_dim, 1),
            nn.ReLU(),
            nn.Conv2d(c.head_dim, c.primary_vocab, 1),
        )
        if c.has_secondary:
            self.sec_in = nn.Conv2d(c.dim, c.dim, 1)
            self.sec_pos = nn.Parameter(torch.randn(c.dim, *c.primary_grid) * 0.02)
            self.sec_conv = nn.Conv2d(c.dim, c.head_dim, 1)
            self.sec_class = nn.Embedding(cond, c.head_dim) if cond else None
            self.sec_out = nn.Linear(c.head_dim, c.secondary_vocab)

    def backbone(self, primary: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """Causal features and token embeddings, each ``(B, C, h, w)``, of ``(B, h, w)`` tokens.

        The features at ``(i, j)`` depend only on tokens before ``(i, j)`` in raster order, so
        rows below ``i`` may be cropped away when only row ``i`` is needed.
        """
        e = self.embed(primary).permute(0, 3, 1, 2)  # (B, h, w, C) -> (B, C, h, w)
        v, h = down_shift(e), right_shift(e)
        for layer in self.layers:
            v, h = layer(v, h, labels)
        return h, e

    def primary_head(self, features: Tensor) -> Tensor:
        """Logits ``(B, K1, h, w)`` from backbone features ``(B, C, h, w)``."""
        return self.out(features)

    def secondary_head(self, features: Tensor, embeddings: Tensor, labels: Tensor | None) -> Tensor:
        """Secondary logits ``(B, 1, K2)`` from the full grid's features and embeddings."""
        z = features + self.sec_in(embeddings) + self.sec_pos  # (B, C, h, w), sees every token
        z = self.sec_conv(F.relu(z)).mean((2, 3))  # (B, head_dim)
        if self.sec_class is not None and labels is not None:
            z = z + self.sec_class(labels)
        return self.sec_out(F.relu(z))[:, None]  # (B, 1, K2)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """Logits: primary ``(B, S, K1)`` in raster order, secondary ``(B, 1, K2)`` or None."""
        primary, _, labels, _ = check_batch(batch, self.config)
        features, emb = self.backbone(primary, labels)
        logits_p = self.primary_head(features).flatten(2).transpose(1, 2)  # (B, S, K1)
        if not self.config.has_secondary:
            return logits_p, None
        return logits_p, self.secondary_head(features, emb, labels)

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Mean cross-entropy in nats per token over all primary and secondary tokens."""
        logits_p, logits_s = self(batch)
        B = logits_p.shape[0]
        target = batch["primary"].reshape(B, -1).long()
        ce_p = F.cross_entropy(logits_p.transpose(1, 2), target, reduction="none")  # (B, S)
        ce_s = None
        if logits_s is not None:
            target = batch["secondary"].reshape(B, -1).long()
            ce_s = F.cross_entropy(logits_s.transpose(1, 2), target, reduction="none")  # (B, 1)
        return nll_logs(ce_p, ce_s)


def _pixelcnn(size: tuple[int, int, int], **overrides) -> PixelCNNPrior:
    """A ``PixelCNNPrior`` of (dim, layers, head_dim) ``size`` over 4x4 + 1 tokens with
    K = 128 + 128; ``overrides`` may change any field, sizes included."""
    values = dict(primary_grid=(4, 4), dim=size[0], layers=size[1], head_dim=size[2])
    return PixelCNNPrior(PixelCNNPriorConfig(**{**values, **overrides}))


@PRIORS.register("pixelcnn_small", PixelCNNPrior)
def pixelcnn_small(**overrides) -> PixelCNNPrior:
    """64 channels, 6 gated layers, kernel 5, head 256."""
    return _pixelcnn((64, 6, 256), **overrides)


@PRIORS.register("pixelcnn_base", PixelCNNPrior)
def pixelcnn_base(**overrides) -> PixelCNNPrior:
    """128 channels, 12 gated layers, kernel 5, head 512."""
    return _pixelcnn((128, 12, 512), **overrides)
