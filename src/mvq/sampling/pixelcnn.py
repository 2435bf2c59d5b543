"""Raster-order sampling from a ``PixelCNNPrior``: one forward per primary position.

The PixelCNN is causal in raster order, so the forward for position ``(i, j)`` only needs rows
``0..i`` of the grid (rows below are cropped away). The secondary token is drawn last from the
head over the finished grid.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mvq.sampling.common import (
    check_sampling_args,
    model_device,
    require_prior,
    sample_in_batches,
    sample_logits,
)


def _sample_batch(prior, labels: Tensor | None, B: int, draw: dict, generator) -> dict[str, Tensor]:
    """One batch: ``{"primary": (B, h, w), "secondary": (B, 1, 1)}``."""
    c = prior.config
    h, w = c.primary_grid
    tokens = torch.zeros(B, h, w, dtype=torch.long, device=model_device(prior))
    for i in range(h):
        for j in range(w):
            features, _ = prior.backbone(tokens[:, : i + 1], labels)  # (B, C, i + 1, w)
            logits = prior.primary_head(features[:, :, i : i + 1, j : j + 1])  # (B, K1, 1, 1)
            tokens[:, i, j] = sample_logits(logits.flatten(1), generator=generator, **draw)
    out = {"primary": tokens}
    if c.has_secondary:
        features, embeddings = prior.backbone(tokens, labels)
        logits = prior.secondary_head(features, embeddings, labels)[:, 0]  # (B, K2)
        out["secondary"] = sample_logits(logits, generator=generator, **draw).view(B, 1, 1)
    return out


def sample_pixelcnn(
    prior,
    n: int,
    *,
    labels: Tensor | int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
) -> dict[str, Tensor]:
    """Sample ``n`` token sets from a ``PixelCNNPrior`` in raster order.

    Arguments and output as ``sample_autoregressive``: ``{"primary": (n, h, w) int64,
    "secondary": (n, 1, 1) int64}`` (no secondary key without a secondary stream).
    """
    require_prior(prior, "PixelCNNPrior", "sample_pixelcnn")
    check_sampling_args(n, temperature, top_k, top_p, batch_size)
    draw = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    batch = lambda lab, size: _sample_batch(prior, lab, size, draw, generator)  # noqa: E731
    return sample_in_batches(prior, n, labels, batch_size, batch)
