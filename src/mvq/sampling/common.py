"""Helpers every sampler shares: argument checks, logit filtering, categorical draws, labels."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

import mvq.priors


def check_sampling_args(
    n: int,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    batch_size: int = 64,
) -> None:
    """Raise one clear ``ValueError`` for an invalid sampling argument."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n (number of samples) must be a positive integer, got {n!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if (
        not (isinstance(temperature, (int, float)) and math.isfinite(temperature))
        or temperature <= 0
    ):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set logits outside the top-k / nucleus (top-p) set to ``-inf``; ``(..., K)`` -> same.

    ``top_k`` keeps the k largest (ties at the k-th value are kept); ``top_p`` keeps the
    smallest set of largest-probability tokens whose total probability reaches ``top_p``.
    At least one token always survives.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # probability mass ranked above each token
        drop_sorted = before >= top_p  # the top token has before = 0 < top_p: always kept
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sampling_logits(
    logits: Tensor, temperature: float, top_k: int | None, top_p: float | None
) -> Tensor:
    """Temperature-scaled, filtered logits: the distribution a sampler draws from."""
    if temperature != 1.0:
        logits = logits / temperature
    if top_k is None and top_p is None:
        return logits
    return filter_logits(logits, top_k, top_p)


def sample_logits(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one token per row of ``(B, K)`` logits -> ``(B,)`` int64."""
    probs = sampling_logits(logits.float(), temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def prepare_labels(
    labels: Tensor | int | None, num_classes: int, n: int, device: torch.device
) -> Tensor | None:
    """``(n,)`` int64 labels on ``device`` (an int is repeated); checked against the prior."""
    if num_classes == 0:
        if labels is not None:
            raise ValueError("labels were given but the prior is unconditional (num_classes=0)")
        return None
    if labels is None:
        raise ValueError(
            f"the prior is class-conditional ({num_classes} classes): pass labels=<int or (n,) "
            "tensor of class indices>"
        )
    if isinstance(labels, int) and not isinstance(labels, bool):
        labels = torch.full((n,), labels, dtype=torch.long)
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an int or an integer tensor, got {labels!r:.80}")
    if tuple(labels.shape) != (n,):
        raise ValueError(f"labels must have shape ({n},) for n={n}, got {tuple(labels.shape)}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"class label {hi if hi >= num_classes else lo} is out of range for a prior with "
            f"{num_classes} classes (labels must be in [0, {num_classes}))"
        )
    return labels.to(device=device, dtype=torch.long)


def require_prior(prior: object, class_name: str, sampler: str) -> None:
    """Raise a clear ``TypeError`` unless ``prior`` is a ``mvq.priors.<class_name>``."""
    cls = getattr(mvq.priors, class_name)
    if not isinstance(prior, cls):
        raise TypeError(f"{sampler} needs a {class_name}, got {type(prior).__name__}")


def chunks(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """``(start, size)`` of consecutive batches covering ``n`` items."""
    for start in range(0, n, batch_size):
        yield start, min(batch_size, n - start)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run with ``model.eval()`` and ``torch.inference_mode``, restoring the training flag."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter."""
    return next(model.parameters()).device


def gather_samples(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Concatenate per-batch sample dicts along the batch; the result is a normal tensor."""
    return {key: torch.cat([p[key] for p in parts]).clone() for key in parts[0]}


def sample_in_batches(
    prior: nn.Module,
    n: int,
    labels: Tensor | int | None,
    batch_size: int,
    sample_batch: Callable[[Tensor | None, int], dict[str, Tensor]],
) -> dict[str, Tensor]:
    """The loop every sampler shares: check labels, then ``sample_batch(labels, size)`` over
    consecutive batches in eval/inference mode, concatenated."""
    labels = prepare_labels(labels, prior.config.num_classes, n, model_device(prior))
    parts = []
    with eval_mode(prior):
        for start, size in chunks(n, batch_size):
            parts.append(
                sample_batch(None if labels is None else labels[start : start + size], size)
            )
    return gather_samples(parts)
