"""VQGAN, MVQGAN and FSQGAN: the VQVAE2 / MVQVAE / FSQVAE networks trained with the VQGAN
objective (paper §4.3, Table 1; ``mvq.losses.vqgan``).

The generator is the tokenizer itself: ``encode``, ``decode``, ``token_layout`` and ``forward``
are those of its base class, so evaluation, priors and sampling use a GAN tokenizer unchanged.
What it adds is the training objective and the discriminator (``gan_loss.discriminator``):

- ``optimizer_groups()`` -> ``{"model": generator params, "discriminator": its params}``, one
  Adam each (the trainer's two-optimizer path; Table 2's betas (0.5, 0.9) for both);
- ``loss(batch, step, "model")``: L1 + LPIPS + codebook loss + adaptive-weighted hinge
  generator loss from batch ``step`` = ``disc_start`` on; it keeps the detached reconstruction
  for ``loss(batch, step, "discriminator")``, the hinge loss of the discriminator;
- ``loss(batch)`` (validation): L1 + LPIPS + codebook loss, no adversarial term, so validation
  losses compare across ``disc_start``.

Saving: ``save_pretrained`` writes the generator only (``pretrained_exclude``): the discriminator
is a training device, as large as the tokenizer, and nobody decodes with it. Training
checkpoints hold it (it is part of ``state_dict``), so a resumed run continues it exactly; to go
on training a saved GAN tokenizer adversarially, resume its run directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from mvq.losses.vqgan import VQGANLoss, VQGANLossConfig
from mvq.tokenizers.fsqvae import FSQVAE, FSQVAEConfig
from mvq.tokenizers.mvqvae import MVQVAE, MVQVAEConfig
from mvq.tokenizers.vqvae2 import VQVAE2, VQVAE2Config

DISCRIMINATOR = "discriminator"


@dataclass
class VQGANConfig(VQGANLossConfig, VQVAE2Config):
    """VQVAE2's fields (``TokenizerConfig``) plus the VQGAN objective's (``VQGANLossConfig``)."""

    def __post_init__(self) -> None:
        VQVAE2Config.__post_init__(self)
        VQGANLossConfig.__post_init__(self)


@dataclass
class MVQGANConfig(VQGANLossConfig, MVQVAEConfig):
    """MVQVAE's fields plus the VQGAN objective's; J = 2048 masks per pass (paper §4.3)."""

    num_hypotheses: int = 2048

    def __post_init__(self) -> None:
        MVQVAEConfig.__post_init__(self)
        VQGANLossConfig.__post_init__(self)


@dataclass
class FSQGANConfig(VQGANLossConfig, FSQVAEConfig):
    """FSQVAE's fields plus the VQGAN objective's (FSQ has no codebook loss)."""

    def __post_init__(self) -> None:
        FSQVAEConfig.__post_init__(self)
        VQGANLossConfig.__post_init__(self)


def _images(batch: tuple[Tensor, Tensor] | list[Tensor] | Tensor) -> Tensor:
    """The images of an ``(images, labels)`` batch, or the batch itself."""
    return batch[0] if isinstance(batch, tuple | list) else batch


class GANObjective:
    """Mixin for a ``Tokenizer``: the VQGAN objective and its discriminator (see module doc).

    Put it first in the bases: its ``loss`` replaces the tokenizer's MSE objective.
    """

    pretrained_exclude: ClassVar[tuple[str, ...]] = ("gan_loss.",)
    gan_loss: VQGANLoss
    decoder: nn.Module

    def _init_gan(self) -> None:
        """Build the loss module (it owns the discriminator; LPIPS is built on first use)."""
        self.gan_loss = VQGANLoss(self.config, self.config.in_channels)  # type: ignore[attr-defined]
        self._fake: Tensor | None = None  # the last generator pass's reconstruction, detached

    @property
    def last_layer(self) -> Tensor:
        """The decoder's last layer weight: where the adaptive weight compares gradients."""
        return self.decoder.up[-1].weight

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters per optimizer, in update order: generator first, then discriminator."""
        generator = [
            p
            for n, p in self.named_parameters()  # type: ignore[attr-defined]
            if not n.startswith("gan_loss.") and p.requires_grad
        ]
        return {"model": generator, DISCRIMINATOR: list(self.gan_loss.discriminator.parameters())}

    def loss(
        self, batch: Any, step: int | None = None, name: str = "model"
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of optimizer ``name`` at batch ``step`` (see module doc); ``step=None``:
        the validation objective (reconstruction and codebook terms only)."""
        x = _images(batch)
        if name == DISCRIMINATOR:
            if self._fake is None or step is None:
                raise RuntimeError("the discriminator's loss needs the generator's pass first")
            fake, self._fake = self._fake, None
            return self.gan_loss.discriminator_loss(x, fake, step)
        recon, q = self.autoencode(x)  # type: ignore[attr-defined]
        logs = {"mse": (recon - x).pow(2).mean().detach(), **q.logs}
        if step is None:
            nll, nll_logs = self.gan_loss.nll(x, recon)
            return nll + q.loss, logs | nll_logs | {"codebook_loss": q.loss.detach()}
        self._fake = recon.detach()
        loss, gen_logs = self.gan_loss.generator_loss(x, recon, q.loss, self.last_layer, step)
        return loss, logs | gen_logs


class VQGAN(GANObjective, VQVAE2):
    """VQ-VAE-2's hierarchical VQ tokenizer trained with the VQGAN objective (Table 1's VQGAN)."""

    config_class = VQGANConfig

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__(config)
        self._init_gan()


class MVQGAN(GANObjective, MVQVAE):
    """MVQVAE trained with the VQGAN objective (Table 1's MVQGAN, J = 2048)."""

    config_class = MVQGANConfig

    def __init__(self, config: MVQGANConfig) -> None:
        super().__init__(config)
        self._init_gan()


class FSQGAN(GANObjective, FSQVAE):
    """FSQVAE trained with the VQGAN objective."""

    config_class = FSQGANConfig

    def __init__(self, config: FSQGANConfig) -> None:
        super().__init__(config)
        self._init_gan()
