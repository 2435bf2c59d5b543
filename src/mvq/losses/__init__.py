"""Training objectives beyond a tokenizer's own reconstruction loss.

Imports ``mvq.metrics`` (LPIPS and its weights) only.
"""

from mvq.losses.vqgan import (
    PatchDiscriminator,
    VQGANLoss,
    VQGANLossConfig,
    adaptive_weight,
    hinge_d_loss,
)

__all__ = ["PatchDiscriminator", "VQGANLoss", "VQGANLossConfig", "adaptive_weight", "hinge_d_loss"]
