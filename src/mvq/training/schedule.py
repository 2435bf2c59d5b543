"""The learning-rate schedule: a pure function of the step, so a resumed run needs no state."""

from __future__ import annotations

import math

import torch


def lr_at(
    step: int, total: int, lr: float, schedule: str, warmup: int = 0, min_lr: float = 0.0
) -> float:
    """Learning rate of the update that ends step ``step + 1`` (``step`` steps done before it).

    Linear warm-up over the first ``warmup`` updates (``lr / warmup`` ... ``lr``), then
    ``lr`` ("constant") or a half cosine from ``lr`` to ``min_lr`` at the last update.
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    if schedule != "cosine":
        raise ValueError(f"unknown lr schedule '{schedule}'")
    decay_steps = max(1, total - warmup - 1)  # the last update (step total - 1) gets min_lr
    progress = min(1.0, (step - warmup) / decay_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
