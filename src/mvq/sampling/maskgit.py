"""MaskGIT's iterative parallel decoding (after google-research/maskgit).

``sample_maskgit`` starts from an all-``[MASK]`` sequence; at each step it predicts every masked
token, draws it, and re-masks the ``num_masked(t + 1, T, N)`` least confident draws (the
schedules, ``mask_schedule`` and ``num_masked``, are ``mvq.priors.mask_schedules``). Confidence is
the log-probability of the drawn token plus Gumbel noise of scale
``choice_temperature * (1 - (t + 1) / T)`` (annealed to 0 at the last step); tokens fixed at
earlier steps are never re-masked.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mvq.core.tokens import tokens_to_mask
from mvq.priors.mask_schedules import num_masked
from mvq.sampling.common import (
    check_sampling_args,
    model_device,
    require_prior,
    sample_in_batches,
    sampling_logits,
)


def _draw(
    logits: Tensor, temperature: float, top_k: int | None, top_p: float | None, generator
) -> tuple[Tensor, Tensor]:
    """Tokens and their log-probabilities ``(B, L)`` from logits ``(B, L, K)``."""
    B, L, K = logits.shape
    logp = sampling_logits(logits.float(), temperature, top_k, top_p).log_softmax(-1)
    tokens = torch.multinomial(logp.exp().view(B * L, K), 1, generator=generator).view(B, L)
    return tokens, logp.gather(-1, tokens[..., None])[..., 0]


def _gumbel(shape: tuple[int, ...], device: torch.device, generator) -> Tensor:
    """Standard Gumbel noise."""
    u = torch.rand(shape, device=device, generator=generator).clamp_(1e-20, 1.0)
    return -torch.log(-torch.log(u))


def _sample_batch(prior, labels: Tensor | None, B: int, opts: dict, generator) -> dict[str, Tensor]:
    """One batch of MaskGIT decoding -> ``{"primary": (B, h, w), "secondary", "mask"}``."""
    c, device = prior.config, model_device(prior)
    S, S2, N, steps = c.primary_len, c.secondary_len, c.num_tokens, opts["steps"]
    tokens = torch.zeros(B, N, dtype=torch.long, device=device)  # primary, secondary, mask
    unknown = torch.ones(B, N, dtype=torch.bool, device=device)
    streams = (
        (slice(0, S), prior.primary_mask_id),
        (slice(S, S + S2), prior.secondary_mask_id),
        (slice(S + S2, N), prior.mask_stream_mask_id),
    )  # positions, [MASK] id
    for step in range(steps):
        inputs = [
            tokens[:, part].masked_fill(unknown[:, part], i) if part.stop > part.start else None
            for part, i in streams
        ]  # (B, L) per stream, None for an absent one
        logits = prior(inputs[0], inputs[1], labels, inputs[2])  # (B, L, vocab) or None each
        draw = (opts["temperature"], opts["top_k"], opts["top_p"], generator)
        drawn = [_draw(lg, *draw) for lg in logits if lg is not None]
        cand, logp = (torch.cat(t, 1) for t in zip(*drawn, strict=True))  # (B, N) each
        tokens = torch.where(unknown, cand, tokens)
        remask = num_masked(step + 1, steps, N, opts["schedule"])
        if remask == 0:
            break
        noise = opts["choice_temperature"] * (1 - (step + 1) / steps)
        confidence = logp + noise * _gumbel((B, N), device, generator)
        confidence = confidence.masked_fill(~unknown, float("inf"))  # fixed tokens stay fixed
        least = confidence.topk(remask, dim=1, largest=False).indices  # (B, remask)
        unknown = torch.zeros_like(unknown).scatter_(1, least, True)
    out = {"primary": tokens[:, :S].reshape(B, *c.primary_grid)}
    if c.has_secondary:
        out["secondary"] = tokens[:, S : S + S2].reshape(B, *c.secondary_grid)
    if c.model_mask:
        out["mask"] = tokens_to_mask(tokens[:, S + S2 :], c.mask_bits, c.mask_token_width)
    return out


def sample_maskgit(
    prior,
    n: int,
    *,
    labels: Tensor | int | None = None,
    steps: int = 8,
    schedule: str = "cosine",
    temperature: float = 1.0,
    choice_temperature: float = 4.5,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
) -> dict[str, Tensor]:
    """Sample ``n`` token sets from a ``MaskGITPrior`` by iterative parallel decoding.

    Args:
        prior: a ``MaskGITPrior``.
        n: number of samples.
        labels: class labels ``(n,)`` or one int, required iff the prior is class-conditional.
        steps: decoding steps T (1 <= T <= tokens per instance; MaskGIT uses 8-12).
        schedule: mask schedule name (``SCHEDULES``).
        temperature: softmax temperature of the token draws.
        choice_temperature: scale of the Gumbel noise on confidences at step 0 (MaskGIT's
            4.5), annealed linearly to 0; 0 = plain most-confident-first.
        top_k, top_p: optional top-k / nucleus filtering of each draw.
        generator: RNG for reproducible samples.
        batch_size: instances decoded together.

    Returns:
        ``{"primary": (n, h, w) int64, "secondary": (n, h2, w2) int64}`` (no secondary key
        without a secondary stream), and ``"mask"`` ``(n, ceil(D'/8))`` uint8 packed MVQ masks
        when the prior models the mask.
    """
    require_prior(prior, "MaskGITPrior", "sample_maskgit")
    check_sampling_args(n, temperature, top_k, top_p, batch_size)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    num_masked(0, steps, prior.config.num_tokens, schedule)  # checks steps <= N and the name
    if not choice_temperature >= 0:
        raise ValueError(f"choice_temperature must be >= 0, got {choice_temperature!r}")
    opts = dict(steps=steps, schedule=schedule, temperature=temperature, top_k=top_k, top_p=top_p)
    opts["choice_temperature"] = choice_temperature
    batch = lambda lab, size: _sample_batch(prior, lab, size, opts, generator)  # noqa: E731
    return sample_in_batches(prior, n, labels, batch_size, batch)
