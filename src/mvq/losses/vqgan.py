"""The VQGAN objective (Esser et al. 2021, taming-transformers): L1 + LPIPS reconstruction, a
hinge PatchGAN discriminator and the adaptive weight on the decoder's last layer.

The generator (tokenizer) minimises::

    nll    = |x - x_hat| + perceptual_weight * LPIPS(x, x_hat)          (mean over pixels)
    g_loss = -mean D(x_hat)
    loss   = nll + lambda * disc_weight * disc_factor * g_loss + codebook_loss

with ``lambda = ||grad_last nll|| / (||grad_last g_loss|| + 1e-4)`` clamped to [0, 1e4] and
detached, gradients taken on the decoder's last layer weight, and ``disc_factor = 0`` before
``disc_start`` batches (no discriminator forward for the generator then). The discriminator
minimises the hinge loss ``0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))`` on detached
reconstructions. The codebook term is the VQ-VAE form (paper eq. 2), computed by the quantizer:
taming's ``legacy=True`` applies beta to the wrong term and is not reproduced.

``VQGANLoss`` owns the discriminator (as taming's loss module does). The perceptual network is
frozen and kept outside the module tree: its weights come from the lpips package and the VGG16
file (``mvq.losses.perceptual.build_lpips``), not from checkpoints or saved models. It is built
on first use (or passed in), so a model that is only encoded or decoded never needs the file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PatchDiscriminator(nn.Module):
    """pix2pix's NLayerDiscriminator: a map of real/fake logits over overlapping patches.

    4x4 stride-2 conv + LeakyReLU(0.2), ``layers - 1`` stride-2 blocks and one stride-1 block
    doubling the channels (capped at 8x) with BatchNorm, then a stride-1 conv to one channel.
    Weights N(0, 0.02), BatchNorm scales N(1, 0.02). ``(B, C, H, W) -> (B, 1, h, w)``.
    """

    def __init__(self, in_channels: int, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        if layers < 1 or channels < 1:
            raise ValueError(
                f"discriminator needs layers >= 1 and channels >= 1, got {layers}, {channels}"
            )
        seq: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < layers else 1
            seq += [
                nn.Conv2d(channels * prev, channels * mult, 4, stride, 1, bias=False),
                nn.BatchNorm2d(channels * mult),
                nn.LeakyReLU(0.2, True),
            ]
        seq.append(nn.Conv2d(channels * mult, 1, 4, 1, 1))
        self.net = nn.Sequential(*seq)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Patch logits ``(B, 1, h, w)`` of images ``(B, C, H, W)``."""
        return self.net(x)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """``0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))``."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(nll: Tensor, g_loss: Tensor, last_layer: Tensor) -> Tensor:
    """``||grad nll|| / (||grad g_loss|| + 1e-4)`` on ``last_layer``, clamped to [0, 1e4],
    detached. Uses ``autograd.grad`` (no ``.grad`` is written, so DDP's hooks do not fire)."""
    (g_nll,) = torch.autograd.grad(nll, last_layer, retain_graph=True)
    (g_adv,) = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    return (g_nll.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, 1e4).detach()


@dataclass
class VQGANLossConfig:
    """Weights and discriminator of the VQGAN objective (taming's defaults where they exist).

    Attributes:
        perceptual: ``"lpips"`` (VGG LPIPS, the paper's recipe) or ``"none"`` (L1 only: not the
            paper's recipe; recorded in the run's config and evaluation).
        perceptual_weight: weight of the LPIPS term.
        disc_start: batches before the discriminator and the adversarial term start.
        disc_weight: scale of the adaptive weight (0.8 in taming's configs).
        disc_channels, disc_layers: PatchGAN width and depth.
    """

    perceptual: str = "lpips"
    perceptual_weight: float = 1.0
    disc_start: int = 10_000
    disc_weight: float = 0.8
    disc_channels: int = 64
    disc_layers: int = 3

    def __post_init__(self) -> None:
        if self.perceptual not in ("lpips", "none"):
            raise ValueError(f"perceptual must be 'lpips' or 'none', got {self.perceptual!r}")
        if self.disc_start < 0 or self.disc_weight < 0 or self.perceptual_weight < 0:
            raise ValueError("disc_start, disc_weight and perceptual_weight must be >= 0")


class VQGANLoss(nn.Module):
    """Owns the discriminator; gives the generator's and the discriminator's losses.

    Args:
        config: the weights (``VQGANLossConfig``).
        in_channels: image channels.
        perceptual: a module ``(x, x_hat) -> (B, 1, 1, 1)`` distances on 3-channel images in
            [-1, 1] (``lpips.LPIPS``), frozen; required iff ``config.perceptual == "lpips"``.
    """

    def __init__(
        self, config: VQGANLossConfig, in_channels: int, perceptual: nn.Module | None = None
    ) -> None:
        super().__init__()
        if perceptual is not None and config.perceptual == "none":
            raise ValueError("perceptual='none' takes no perceptual module")
        self.config = config
        self.discriminator = PatchDiscriminator(
            in_channels, config.disc_channels, config.disc_layers
        )
        self._perceptual: tuple[nn.Module, ...] = ()  # a tuple: not a submodule (see above)
        if perceptual is not None:
            self._perceptual = (perceptual.eval().requires_grad_(False),)

    @property
    def perceptual(self) -> nn.Module | None:
        """The frozen LPIPS network (None before it is built, or with ``perceptual="none"``)."""
        return self._perceptual[0] if self._perceptual else None

    def set_perceptual(self, net: nn.Module) -> None:
        """Use ``net`` (frozen here) as the perceptual network, e.g. LPIPS from own weights."""
        if self.config.perceptual == "none":
            raise ValueError("perceptual='none' takes no perceptual module")
        self._perceptual = (net.eval().requires_grad_(False),)

    def perceptual_network(self, device: torch.device | None = None) -> nn.Module | None:
        """LPIPS on ``device``, built with ``build_lpips`` on first call; None for "none".

        Raises:
            WeightsUnavailable: the VGG16 file is not on disk and cannot be downloaded.
        """
        if self.config.perceptual == "none":
            return None
        if not self._perceptual:
            from mvq.losses.perceptual import build_lpips

            self._perceptual = (build_lpips(),)
        net = self._perceptual[0]
        return net if device is None else net.to(device)

    def nll(self, x: Tensor, recon: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Mean L1 + weighted LPIPS, and its parts as logs."""
        l1 = (x - recon).abs().mean()
        logs = {"l1": l1.detach()}
        net = self.perceptual_network(x.device)
        if net is None:
            return l1, logs
        rgb = lambda t: t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t  # noqa: E731
        p = net(rgb(x).contiguous(), rgb(recon).contiguous()).mean()
        logs["lpips"] = p.detach()
        return l1 + self.config.perceptual_weight * p, logs

    def generator_loss(
        self, x: Tensor, recon: Tensor, codebook_loss: Tensor, last_layer: Tensor, step: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The tokenizer's loss at batch ``step`` (counted in batches, from 0)."""
        nll, logs = self.nll(x, recon)
        loss = nll + codebook_loss
        logs |= {"nll": nll.detach(), "codebook_loss": codebook_loss.detach()}
        if step < self.config.disc_start:  # no adversarial gradient before disc_start
            return loss, logs
        g_loss = -self.discriminator(recon).mean()
        weight = adaptive_weight(nll, g_loss, last_layer) if self.training else torch.ones(())
        weight = weight * self.config.disc_weight
        logs |= {"g_loss": g_loss.detach(), "d_weight": weight}
        return loss + weight * g_loss, logs

    def discriminator_loss(
        self, x: Tensor, recon: Tensor, step: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Hinge loss of the discriminator on real ``x`` and detached ``recon``; zero (and no
        discriminator forward) before ``disc_start``."""
        if step < self.config.disc_start:
            zero = sum(p.sum() * 0.0 for p in self.discriminator.parameters())
            return zero, {}
        logits_real = self.discriminator(x.detach())
        logits_fake = self.discriminator(recon.detach())
        loss = hinge_d_loss(logits_real, logits_fake)
        logs = {
            "d_loss": loss.detach(),
            "logits_real": logits_real.detach().mean(),
            "logits_fake": logits_fake.detach().mean(),
        }
        return loss, logs
