"""Ancestral sampling from a ``TransformerPrior``: cached batched sampler and a naive baseline.

``sample_autoregressive`` runs whole batches through the key/value cache: one decoder step per
primary token (``(B, 1)`` in, ``(B, K1)`` out), then the secondary decoder reads the start token
and all sampled primary tokens in one parallel forward (its prefix), and steps once per further
secondary token. ``sample_autoregressive_naive`` is the textbook loop the benchmark compares
against: the whole prefix recomputed at every step, no cache; one instance at a time unless
given a ``batch_size``, so that the benchmark can time caching and batching apart.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mvq.core.tokens import tokens_to_mask
from mvq.sampling.common import (
    check_sampling_args,
    require_prior,
    sample_in_batches,
    sample_logits,
)


def _sample_primary(prior, start: Tensor, draw: dict, generator) -> Tensor:
    """``(B, S)`` primary tokens in raster order, one cached step per token."""
    net, S = prior.primary, prior.config.primary_len
    B = start.shape[0]
    cache = net.new_cache(B)
    out = torch.empty(B, S, dtype=torch.long, device=start.device)
    idx = start  # (B, 1)
    for t in range(S):
        logits = net(idx, cache, pos=t, last_only=True)[:, 0]  # (B, K1)
        out[:, t] = sample_logits(logits, generator=generator, **draw)
        idx = out[:, t : t + 1]
    return out


def _sample_secondary(
    prior, start: Tensor, primary: Tensor, draw: dict, generator
) -> tuple[Tensor, Tensor | None]:
    """``(B, S')`` secondary tokens and ``(B, M)`` mask tokens (None unless the prior models
    the mask), given the start token ``(B, 1)`` and the primary tokens ``(B, S)``."""
    net, c = prior.secondary, prior.config
    B, S = primary.shape
    S2, M, K2 = c.secondary_len, c.mask_len, c.secondary_vocab
    cache = net.new_cache(B)
    out = torch.empty(B, S2 + M, dtype=torch.long, device=primary.device)
    logits = net(torch.cat([start, primary], 1), cache, pos=0, last_only=True)[:, 0]
    for j in range(S2 + M):  # logits (B, K2 + 2**b): secondary values, then mask values
        out[:, j] = sample_logits(
            logits[:, K2:] if j >= S2 else logits[:, :K2], generator=generator, **draw
        )
        if j + 1 < S2 + M:  # input ids: secondary after the primary ones, mask values after
            idx = out[:, j : j + 1] + c.primary_vocab + (K2 if j >= S2 else 0)
            logits = net(idx, cache, pos=S + 1 + j, last_only=True)[:, 0]
    return out[:, :S2], (out[:, S2:] if M else None)


def _sample_batch(prior, labels: Tensor | None, B: int, draw: dict, generator) -> dict[str, Tensor]:
    """One batch of cached ancestral sampling."""
    c = prior.config
    primary = _sample_primary(prior, prior.start_tokens(labels, B, "primary"), draw, generator)
    out = {"primary": primary.view(B, *c.primary_grid)}
    if c.has_secondary:
        start = prior.start_tokens(labels, B, "secondary")
        secondary, mask = _sample_secondary(prior, start, primary, draw, generator)
        out["secondary"] = secondary.view(B, *c.secondary_grid)
        if mask is not None:
            out["mask"] = tokens_to_mask(mask, c.mask_bits, c.mask_token_width)
    return out


def sample_autoregressive(
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
    """Sample ``n`` token sets from a ``TransformerPrior`` with the key/value cache.

    Args:
        prior: a ``TransformerPrior``.
        n: number of samples.
        labels: class labels ``(n,)`` or one int, required iff the prior is class-conditional.
        temperature: softmax temperature (> 0).
        top_k, top_p: optional top-k / nucleus filtering.
        generator: RNG for reproducible samples (same seed and batch_size -> same tokens).
        batch_size: instances sampled together.

    Returns:
        ``{"primary": (n, h, w) int64, "secondary": (n, h2, w2) int64}`` (no secondary key
        without a secondary stream), and ``"mask"`` ``(n, ceil(D'/8))`` uint8 packed MVQ masks
        when the prior models the mask.
    """
    require_prior(prior, "TransformerPrior", "sample_autoregressive")
    check_sampling_args(n, temperature, top_k, top_p, batch_size)
    draw = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    batch = lambda lab, size: _sample_batch(prior, lab, size, draw, generator)  # noqa: E731
    return sample_in_batches(prior, n, labels, batch_size, batch)


def _uncached_batch(
    prior, labels: Tensor | None, B: int, draw: dict, generator
) -> dict[str, Tensor]:
    """``B`` instances, recomputing the whole prefix at every step (no cache)."""
    c = prior.config
    seq = prior.start_tokens(labels, B, "primary")  # (B, 1)
    for _ in range(c.primary_len):
        logits = prior.primary(seq)[:, -1]  # full forward over the prefix, (B, K1)
        seq = torch.cat([seq, sample_logits(logits, generator=generator, **draw)[:, None]], 1)
    out = {"primary": seq[:, 1:].reshape(B, *c.primary_grid)}
    if c.has_secondary:
        S2, K2 = c.secondary_len, c.secondary_vocab
        seq = torch.cat([prior.start_tokens(labels, B, "secondary"), seq[:, 1:]], 1)
        for j in range(S2 + c.mask_len):
            logits = prior.secondary(seq)[:, -1]  # (B, K2 + 2**b)
            logits = logits[:, K2:] if j >= S2 else logits[:, :K2]
            token = sample_logits(logits, generator=generator, **draw) + c.primary_vocab
            seq = torch.cat([seq, token[:, None] + (K2 if j >= S2 else 0)], 1)
        drawn = seq[:, 1 + c.primary_len :] - c.primary_vocab  # (B, S' + M)
        out["secondary"] = drawn[:, :S2].reshape(B, *c.secondary_grid)
        if c.mask_len:
            mask = drawn[:, S2:] - K2
            out["mask"] = tokens_to_mask(mask, c.mask_bits, c.mask_token_width)
    return out


def sample_autoregressive_naive(
    prior,
    n: int,
    *,
    labels: Tensor | int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 1,
) -> dict[str, Tensor]:
    """The benchmark baseline: like ``sample_autoregressive`` but without a cache (every step
    recomputes the full prefix), by default one instance at a time. Same arguments and output;
    with the same ``batch_size`` and seed it makes the same random draws as the cached sampler,
    so the same tokens up to the float rounding of the logits."""
    require_prior(prior, "TransformerPrior", "sample_autoregressive_naive")
    check_sampling_args(n, temperature, top_k, top_p, batch_size)
    draw = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    batch = lambda lab, size: _uncached_batch(prior, lab, size, draw, generator)  # noqa: E731
    return sample_in_batches(prior, n, labels, batch_size, batch)
