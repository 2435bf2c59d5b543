"""The VQGAN objective: adaptive weight, hinge loss, disc_start, detached fakes."""

import pytest
import torch
from torch import nn

from mvq.losses import PatchDiscriminator, VQGANLoss, VQGANLossConfig, adaptive_weight, hinge_d_loss


class FakeLPIPS(nn.Module):
    """A differentiable stand-in with LPIPS's call signature: mean squared feature distance."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        assert a.shape[1] == 3 and b.shape[1] == 3
        return (self.conv(a) - self.conv(b)).pow(2).mean((1, 2, 3), keepdim=True)


def tiny_generator() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))


@pytest.mark.parametrize("size,patches", [(28, 1), (32, 2), (64, 6)])
def test_patch_discriminator_shapes(size: int, patches: int) -> None:
    d = PatchDiscriminator(3, channels=8, layers=3)
    assert d(torch.randn(2, 3, size, size)).shape == (2, 1, patches, patches)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 64, 1]  # doubling, capped at 8x
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]


def test_hinge_loss_values() -> None:
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = [0, 0.5, 2] -> 2.5/3; relu(1 + fake) = [0, 1, 2] -> 1
    assert torch.isclose(hinge_d_loss(real, fake), torch.tensor(0.5 * (2.5 / 3 + 1.0)))


def test_adaptive_weight_is_the_ratio_of_gradient_norms() -> None:
    g = tiny_generator()
    x = torch.randn(2, 1, 8, 8)
    out = g(x)
    nll, adv = out.abs().mean(), -(3.0 * out).pow(2).mean()
    last = g[2].weight
    (g1,) = torch.autograd.grad(nll, last, retain_graph=True)
    (g2,) = torch.autograd.grad(adv, last, retain_graph=True)
    expected = g1.norm() / (g2.norm() + 1e-4)
    weight = adaptive_weight(nll, adv, last)
    assert torch.isclose(weight, expected) and not weight.requires_grad
    assert last.grad is None  # autograd.grad writes no .grad
    tiny = adaptive_weight(nll, 1e-12 * out.sum(), last)
    assert tiny == 1e4  # clamped


def make_loss(disc_start: int = 3, perceptual: bool = True) -> VQGANLoss:
    torch.manual_seed(1)
    cfg = VQGANLossConfig(
        perceptual="lpips" if perceptual else "none", disc_start=disc_start, disc_channels=8
    )
    return VQGANLoss(cfg, 1, FakeLPIPS() if perceptual else None)


def test_no_adversarial_term_before_disc_start() -> None:
    loss_fn, g = make_loss(disc_start=3), tiny_generator()
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    calls = []
    loss_fn.discriminator.register_forward_hook(lambda *a: calls.append(1))
    for step in range(3):
        loss, logs = loss_fn.generator_loss(x, g(x), torch.tensor(0.1), g[2].weight, step)
        nll, _ = loss_fn.nll(x, g(x))
        assert torch.isclose(loss, nll + 0.1) and "g_loss" not in logs
        d_loss, d_logs = loss_fn.discriminator_loss(x, g(x), step)
        assert d_loss.item() == 0.0 and d_logs == {}
    assert not calls  # the discriminator does not run before disc_start
    loss, logs = loss_fn.generator_loss(x, g(x), torch.tensor(0.1), g[2].weight, 3)
    assert calls and "g_loss" in logs and "d_weight" in logs
    expected = logs["nll"] + 0.1 + logs["d_weight"] * logs["g_loss"]
    assert torch.isclose(loss.detach(), expected)


def test_discriminator_sees_detached_fakes() -> None:
    loss_fn, g = make_loss(disc_start=0), tiny_generator()
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    d_loss, logs = loss_fn.discriminator_loss(x, g(x), step=0)
    d_loss.backward()
    assert all(p.grad is None for p in g.parameters())  # no gradient reaches the generator
    assert all(p.grad is not None for p in loss_fn.discriminator.parameters())
    assert set(logs) == {"d_loss", "logits_real", "logits_fake"}


def test_gray_images_reach_lpips_as_rgb_and_lpips_is_frozen() -> None:
    loss_fn = make_loss()
    loss_fn.train()
    assert not loss_fn.perceptual.training
    assert not any(k.startswith("perceptual") for k in loss_fn.state_dict())  # not checkpointed
    assert all(not p.requires_grad for p in loss_fn.perceptual.parameters())
    x = torch.rand(2, 1, 28, 28)
    nll, logs = loss_fn.nll(x, x.flip(-1))
    assert "lpips" in logs and logs["lpips"] > 0 and torch.isclose(nll, logs["l1"] + logs["lpips"])


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="'lpips' or 'none'"):
        VQGANLossConfig(perceptual="vgg")
    with pytest.raises(ValueError, match="takes no perceptual module"):
        VQGANLoss(VQGANLossConfig(perceptual="none"), 1, FakeLPIPS())
    with pytest.raises(ValueError, match=">= 0"):
        VQGANLossConfig(disc_start=-1)
