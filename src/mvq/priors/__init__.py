"""Token priors: autoregressive transformer, gated PixelCNN and MaskGIT.

Every prior is an ``nn.Module`` with a typed config (a ``PriorLayout`` plus sizes), a
``loss(batch) -> (loss, logs)`` for the trainer, and ``save_pretrained`` / ``from_pretrained``.
Samplers live in ``mvq.sampling``, which imports this package; ``mvq.priors`` never imports
``mvq.sampling``. Imports ``mvq.core`` (the token contract: ``layout_overrides`` is re-exported
here; saved models; the registry); owns MaskGIT's mask schedules (``mask_schedules``).
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from mvq.core.pretrained import CheckpointError, read_pretrained_meta, resolve_pretrained
from mvq.core.tokens import layout_overrides
from mvq.priors.common import PRIORS, PriorLayout, check_batch, check_labels
from mvq.priors.maskgit import MaskGITPrior, MaskGITPriorConfig
from mvq.priors.pixelcnn import PixelCNNPrior, PixelCNNPriorConfig
from mvq.priors.transformer import KVCache, TransformerPrior, TransformerPriorConfig

# class name -> class, for load_prior: the classes the registered priors build
PRIOR_CLASSES: dict[str, type] = {cls.__name__: cls for cls in PRIORS.classes()}


def create_prior(name: str, **overrides: Any) -> nn.Module:
    """Build the registered prior ``name`` (e.g. ``"transformer_4p1"``); overrides set fields."""
    return PRIORS.create(name, **overrides)


def list_priors() -> list[str]:
    """Names accepted by ``create_prior``."""
    return PRIORS.names()


def load_prior(directory: str | os.PathLike, **overrides: Any) -> nn.Module:
    """Load any prior saved with ``save_pretrained``, dispatching on the class in config.json;
    ``directory`` may also be a run directory or a Hugging Face Hub id ``org/name[@revision]``."""
    directory = resolve_pretrained(directory)
    name = read_pretrained_meta(directory)["class"]
    if name not in PRIOR_CLASSES:
        raise CheckpointError(
            f"{directory} holds a {name}, which is not a prior (priors: {sorted(PRIOR_CLASSES)})"
        )
    return PRIOR_CLASSES[name].from_pretrained(directory, **overrides)


__all__ = [
    "PRIORS",
    "PRIOR_CLASSES",
    "KVCache",
    "MaskGITPrior",
    "MaskGITPriorConfig",
    "PixelCNNPrior",
    "PixelCNNPriorConfig",
    "PriorLayout",
    "TransformerPrior",
    "TransformerPriorConfig",
    "check_batch",
    "check_labels",
    "create_prior",
    "layout_overrides",
    "list_priors",
    "load_prior",
]
