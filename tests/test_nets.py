"""Contracts of Table 3's networks: exact shapes, clear errors, f's fast path and independence."""

import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mvq.nets import (
    SUPPORTED,
    Decoder,
    MHNetwork,
    PrimaryEncoder,
    SameConv2d,
    SecondaryEncoder,
    center_tap,
    down_plan,
    primary_grid,
    table3_kernels,
    up_plan,
)
from mvq.nets import table3 as table3_module

PAIRS = [(size, f) for size, factors in SUPPORTED.items() for f in factors]
TINY = dict(channels=16, res_channels=8)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("size,factor", PAIRS)
def test_exact_shapes(size: int, factor: int) -> None:
    torch.manual_seed(0)
    grid = size // factor
    assert primary_grid(size, factor) == grid and grid in (1, 2, 4)
    enc = PrimaryEncoder(3, size, factor, dim=6, **TINY)
    enc2 = SecondaryEncoder(6, size, factor, dim=5, **TINY)
    dec = Decoder(6, 3, size, factor, **TINY)
    f = MHNetwork(5, 6, grid, table3_kernels(factor)["f"], **TINY)
    y = enc(torch.randn(2, 3, size, size))
    assert y.shape == (2, 6, grid, grid)
    s = enc2(y)
    assert s.shape == (2, 5, 1, 1)
    r = f(s)
    assert r.shape == (2, 6, grid, grid)
    assert dec(y + r).shape == (2, 3, size, size)


@pytest.mark.parametrize("size,factor", [(30, 14), (28, 8), (64, 7), (32, 28)])
def test_unsupported_pair_raises(size: int, factor: int) -> None:
    message = f"image size {size} with F={factor} is not supported; supported (size: F): 28: 7"
    for build in (
        lambda: PrimaryEncoder(3, size, factor, 4, **TINY),
        lambda: SecondaryEncoder(4, size, factor, 4, **TINY),
        lambda: Decoder(4, 3, size, factor, **TINY),
        lambda: primary_grid(size, factor),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            build()


def test_table3_columns() -> None:
    assert table3_kernels(7) == table3_kernels(8)
    assert table3_kernels(8)["f"] == (2, 2, 4) and table3_kernels(28)["f"] == (2, 1)
    assert table3_kernels(64)["secondary_encoder"] == (3, 1)
    with pytest.raises(ValueError, match="no column for F=12"):
        table3_kernels(12)


def test_wrong_input_size_raises() -> None:
    enc = PrimaryEncoder(1, 28, 14, 4, **TINY)
    with pytest.raises(ValueError, match=r"expects \(B, 1, 28, 28\), got \(2, 1, 32, 32\)"):
        enc(torch.randn(2, 1, 32, 32))


@pytest.mark.parametrize("kernel", [1, 2, 3, 4])
def test_same_conv_matches_pytorch_same_padding(kernel: int) -> None:
    torch.manual_seed(0)
    conv = SameConv2d(3, 4, kernel)
    for size in (1, 5):
        x = torch.randn(2, 3, size, size)
        with warnings.catch_warnings():  # PyTorch warns about the padded copy for even kernels
            warnings.filterwarnings("ignore", message="Using padding='same'")
            ref = F.conv2d(x, conv.weight, conv.bias, padding="same")
        torch.testing.assert_close(conv(x), ref)
    x = torch.randn(2, 3, 1, 1)
    tap = F.linear(x.flatten(1), center_tap(conv), conv.bias)
    torch.testing.assert_close(conv(x).flatten(1), tap)


@pytest.mark.parametrize("kernels,grid", [((2, 1), 2), ((2, 2, 4), 4), ((2, 1), 1)])
def test_mh_fast_path_equals_conv_path(kernels: tuple[int, ...], grid: int) -> None:
    torch.manual_seed(0)
    f = MHNetwork(6, 5, grid, kernels, **TINY)
    for p in f.parameters():  # non-trivial norm affines and biases
        nn.init.normal_(p, std=0.5)
    c = torch.randn(4, 6, 1, 1)
    outs, grads = [], []
    for path in (f.forward_fast, f.forward_conv):
        x = c.clone().requires_grad_(True)
        out = path(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append([x.grad] + [p.grad.clone() for p in f.parameters()])
        f.zero_grad()
    assert outs[0].shape == (4, 5, grid, grid)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    for g_fast, g_conv in zip(*grads, strict=True):
        torch.testing.assert_close(g_fast, g_conv, atol=1e-5, rtol=1e-5)


def test_mh_forward_dispatch_and_first_layer() -> None:
    f = MHNetwork(6, 5, 2, **TINY)
    assert isinstance(f.first, nn.Conv2d)
    seen = []
    f.first.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    c = torch.randn(3, 6, 1, 1)
    f.forward_conv(c)  # the fast path uses f.first's weights without calling it
    assert torch.equal(seen[0], c)  # first layer sees the masked code itself
    torch.testing.assert_close(f(c), f.forward_fast(c))
    assert f(torch.randn(3, 6, 2, 2)).shape == (3, 5, 4, 4)  # conv path on larger inputs


def test_normalisation_layers() -> None:
    f = MHNetwork(6, 5, 4, (2, 2, 4), **TINY)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in f.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in f.modules())
    for net in (
        PrimaryEncoder(3, 32, 8, 4, **TINY),
        SecondaryEncoder(4, 32, 8, 4, **TINY),
        Decoder(4, 3, 32, 8, **TINY),
    ):
        assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())


@pytest.mark.parametrize("path", ["forward_fast", "forward_conv"])
def test_mh_outputs_are_per_sample(path: str) -> None:
    torch.manual_seed(0)
    f = MHNetwork(6, 5, 4, (2, 2, 4), **TINY).train()
    c = torch.randn(3, 6, 1, 1)
    out = getattr(f, path)(c)
    c2 = c.clone()
    c2[0] = 10 * torch.randn(6, 1, 1)
    out2 = getattr(f, path)(c2)
    assert not torch.allclose(out[0], out2[0])
    torch.testing.assert_close(out[1:], out2[1:], atol=1e-6, rtol=0)


def test_plans() -> None:
    assert up_plan(1, 28, (2, 3, 4, 4)) == [(2, 2, 0, 1), (3, 2, 0, 0), (4, 2, 1, 0), (4, 2, 1, 0)]
    assert down_plan(28, 1, (4, 4, 4, 4, 3))[2] == (4, 2, 2)  # 7 -> 4 needs padding 2
    with pytest.raises(ValueError, match="take 28x28 to 7x7"):
        down_plan(28, 4, (4, 3))


def test_docstring_tables_are_real() -> None:
    doc = table3_module.__doc__
    fmt = lambda plan: " ".join(f"{k}/{s}/{'s' if s == 1 else p}" for k, s, p in plan)  # noqa: E731
    for size, factor in PAIRS:
        grid, k = size // factor, table3_kernels(factor)
        ups = " ".join("/".join(map(str, t)) for t in up_plan(grid, size, k["decoder"][1:]))
        rows = {
            "E": fmt(down_plan(size, grid, k["encoder"])),
            "E'": fmt(down_plan(grid, 1, k["secondary_encoder"])),
            "D": f"{k['decoder'][0]}/1/s; {ups}",
        }
        for net, layers in rows.items():
            assert f"\n{size:<4}  {factor:<2}  {grid:<4}  {net:<3}  {layers}\n" in doc
    for size, factor, dim, colour in [(28, 14, 16, 1), (32, 8, 96, 3), (64, 16, 256, 3)]:
        counts = [
            _params(PrimaryEncoder(colour, size, factor, dim)),
            _params(SecondaryEncoder(dim, size, factor, dim)),
            _params(Decoder(dim, colour, size, factor)),
            _params(MHNetwork(dim, dim, size // factor, table3_kernels(factor)["f"])),
        ]
        row = f"{size:<4}  {factor:<2}  {dim:<3}  " + "  ".join(f"{n:<9,}" for n in counts)
        assert row.rstrip() + "\n" in doc
