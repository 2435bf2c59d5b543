"""An exponential moving average of a model's weights (as in DiT's ``train.py``)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` in eval mode, to hold the averaged weights."""
    ema = copy.deepcopy(model).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * model`` for the parameters; buffers are copied.

    Buffers (BatchNorm statistics, EMA codebooks, usage counts) already are running averages
    or counters of the live model: averaging them again would lag twice. ``decay=0`` copies.
    """
    params = dict(model.named_parameters())
    for name, value in ema.named_parameters():
        value.lerp_(params[name].detach(), 1.0 - decay)
    buffers = dict(model.named_buffers())
    for name, value in ema.named_buffers():
        value.copy_(buffers[name])
