"""Training objectives beyond a tokenizer's own reconstruction loss."""

from mvq.losses.vqgan import (
    PatchDiscriminator,
    VQGANLoss,
    VQGANLossConfig,
    adaptive_weight,
    hinge_d_loss,
)

__all__ = ["PatchDiscriminator", "VQGANLoss", "VQGANLossConfig", "adaptive_weight", "hinge_d_loss"]
