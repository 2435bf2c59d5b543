"""Numerical contracts of VectorQuantizer."""

import pytest
import torch
import torch.nn.functional as F

from mvq.core.tokens import Tokens
from mvq.quantizers import VectorQuantizer


def test_straight_through_gradient_is_identity(device) -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 4).to(device)
    z = torch.randn(2, 4, 3, 3).to(device).requires_grad_()
    w = torch.randn(2, 4, 3, 3).to(device)
    out = vq(z)
    (out.quantized * w).sum().backward()
    assert torch.allclose(z.grad, w)
    assert torch.equal(out.quantized.movedim(1, -1), vq.codebook.detach()[out.indices])
    # q + (y - sg[y]): each code gets the sum of the gradients of the positions it quantises
    rows = w.movedim(1, -1).reshape(-1, 4)  # (B * h * w, D)
    expected = torch.zeros_like(vq.codebook).index_add_(0, out.indices.flatten(), rows)
    torch.testing.assert_close(vq.codebook.grad, expected, rtol=1e-6, atol=1e-6)


def test_loss_matches_hand_computation() -> None:
    torch.manual_seed(1)
    vq = VectorQuantizer(8, 3, beta=0.25)
    z = torch.randn(5, 3, 2, requires_grad=True)
    out = vq(z)
    y = z.detach().movedim(1, -1).reshape(-1, 3)
    d = torch.cdist(y, vq.codebook.detach())
    q = vq.codebook.detach()[d.argmin(1)]
    assert torch.equal(out.indices.reshape(-1), d.argmin(1))
    expected = ((q - y) ** 2).mean() * 1.25
    assert torch.allclose(out.loss, expected, atol=1e-6)
    out.loss.backward()
    # encoder side gets only beta * d/dy ||y - sg[e]||^2; codebook gets only d/de ||sg[y] - e||^2
    grad_y = 0.25 * 2 * (y - q) / y.numel()
    assert torch.allclose(z.grad.movedim(1, -1).reshape(-1, 3), grad_y, atol=1e-7)
    grad_cb = torch.zeros_like(vq.codebook).index_add_(0, d.argmin(1), 2 * (q - y) / y.numel())
    assert torch.allclose(vq.codebook.grad, grad_cb, atol=1e-7)


def test_encode_decode_round_trip_equals_forward(device) -> None:
    torch.manual_seed(2)
    vq = VectorQuantizer(32, 8, in_channels=6).eval().to(device)
    z = torch.randn(3, 6, 4, 4).to(device)
    tokens = vq.encode(z)
    assert tokens.indices.shape == (3, 4, 4) and tokens.indices.device == z.device
    assert torch.allclose(vq.decode(tokens), vq(z).quantized, atol=1e-6)
    codes = vq.indices_to_codes(tokens.indices)  # (B, h, w, D)
    assert torch.equal(codes, vq.codebook[tokens.indices])
    # quantising the codebook vectors themselves gives back their own indices
    plain = VectorQuantizer(32, 8).eval().to(device)
    assert torch.equal(
        plain.encode(plain.indices_to_codes(tokens.indices).movedim(-1, 1)).indices, tokens.indices
    )


def test_distances_in_fp32_under_autocast() -> None:
    torch.manual_seed(3)
    vq = VectorQuantizer(64, 8, in_channels=8)
    z = torch.randn(4, 8, 5, 5)
    ref = vq.encode(z).indices
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vq(z)
    assert torch.equal(out.indices, ref)


def test_usage_and_perplexity_logged() -> None:
    vq = VectorQuantizer(4, 2)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0], [10, 0], [0, 10], [10, 10]]))
    z = torch.tensor([[0.1, 0.0], [9.9, 0.1], [0.2, 0.1], [0.0, 0.0]]).T[None]  # (1, 2, 4)
    logs = vq(z).logs
    assert logs["usage"] == pytest.approx(0.5)
    p = torch.tensor([0.75, 0.25])
    assert logs["perplexity"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-5)


@pytest.mark.parametrize("ema", [False, True])
def test_dead_code_restart_revives_unused_codes(ema: bool) -> None:
    torch.manual_seed(4)
    vq = VectorQuantizer(16, 2, ema=ema, dead_code_threshold=0.5, decay=0.8)
    with torch.no_grad():
        vq.codebook.fill_(100.0)  # every code far from the data: one code wins everything
        vq.codebook[0] = 0.0
        if ema:
            vq.ema_sum.copy_(vq.codebook)
    opt = torch.optim.SGD([p for p in vq.parameters() if p.requires_grad] or [torch.zeros(1)], 0.1)
    for _ in range(30):
        out = vq(torch.randn(64, 2, 1))
        opt.zero_grad()
        out.loss.backward() if out.loss.requires_grad else None
        opt.step()
    vq.eval()
    assert vq(torch.randn(512, 2, 1)).logs["usage"] > 0.9


def test_ema_moves_codes_to_cluster_means() -> None:
    torch.manual_seed(5)
    vq = VectorQuantizer(2, 1, ema=True, decay=0.5)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[-1.0], [1.0]]))
        vq.ema_sum.copy_(vq.codebook)
    data = torch.cat([torch.full((50,), -3.0), torch.full((50,), 5.0)])[None, None]  # (1,1,100)
    for _ in range(40):
        vq(data)
    assert torch.allclose(vq.codebook.squeeze(), torch.tensor([-3.0, 5.0]), atol=1e-3)


@pytest.mark.parametrize("init", ["data", "kmeans"])
def test_data_initialisation_uses_first_batch(init: str) -> None:
    torch.manual_seed(6)
    vq = VectorQuantizer(4, 2, init=init)
    centres = torch.tensor([[5.0, 5], [-5, 5], [5, -5], [-5, -5]])
    x = (centres.repeat(50, 1) + 0.01 * torch.randn(200, 2)).T[None]  # (1, 2, 200)
    vq(x)
    assert bool(vq.initialized)
    nearest = torch.cdist(vq.codebook.detach(), centres).min(1).values
    # data init copies points (noise 0.01 per axis: measured <= 0.026 from a centre); k-means
    # averages ~50 of them (measured <= 0.0024)
    assert (nearest < (0.05 if init == "data" else 0.005)).all(), nearest
    if init == "kmeans":  # k-means finds all four clusters
        assert len(set(torch.cdist(vq.codebook.detach(), centres).argmin(1).tolist())) == 4


def test_bad_inputs_raise_one_clear_error() -> None:
    vq = VectorQuantizer(8, 4)
    with pytest.raises(ValueError, match="channel-first feature map"):
        vq(torch.randn(4, 4))
    with pytest.raises(ValueError, match="has 3 channels but the quantizer expects 4"):
        vq(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="NaN or Inf"):
        vq(torch.full((1, 4, 2), float("nan")))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 8\)"):
        vq.decode(Tokens(torch.tensor([[9]])))
    with pytest.raises(ValueError, match="unknown init"):
        VectorQuantizer(8, 4, init="zeros")


def test_codebook_loss_form_is_not_taming_legacy() -> None:
    """beta weighs the commitment (encoder) term, not the codebook term."""
    vq = VectorQuantizer(1, 1, beta=0.25)
    with torch.no_grad():
        vq.codebook.fill_(0.0)
    z = torch.ones(1, 1, 1, requires_grad=True)
    vq(z).loss.backward()
    assert z.grad.item() == pytest.approx(0.25 * 2 * 1.0)
    assert vq.codebook.grad.item() == pytest.approx(F.mse_loss(torch.zeros(1), torch.ones(1)) * -2)
