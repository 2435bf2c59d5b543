"""Numerical contracts of FSQ: the paper's formula bit for bit, exact index round trips,
straight-through gradients, fp32 under bf16, parity with vector-quantize-pytorch, clear errors."""

from __future__ import annotations

import math

import pytest
import torch

from mvq.core.tokens import Tokens
from mvq.quantizers.base import codebook_stats
from mvq.quantizers.fsq import (
    FSQ,
    RECOMMENDED_LEVELS,
    levels_for_codebook_size,
)

MIXES = [(3, 4, 6, 7), (5,), (16, 9, 4)]  # odd/even mixes beyond the paper's sets
ALL_SETS = list(RECOMMENDED_LEVELS.values()) + MIXES
BOUNDS = ["reference", "vqpytorch", "symmetric"]


def reference_fsq(z: torch.Tensor, levels: tuple[int, ...], eps: float = 1e-3) -> torch.Tensor:
    """A plain port of the paper's JAX listing (Mentzer et al. 2024, App. A.1) in z's dtype.

    The constants are computed in fp32 (as JAX does from int levels and a Python eps), then
    cast to z's dtype so that a bf16 ``z`` shows what bf16 arithmetic would do.
    """
    lv = torch.tensor(levels, dtype=torch.int32)
    half_l = (lv - 1).float() * torch.tensor(1 - eps, dtype=torch.float32) / 2
    offset = torch.where(lv % 2 == 1, 0.0, 0.5).float()
    shift = torch.tan(offset / half_l)
    half_l, offset, shift = (c.to(z.dtype) for c in (half_l, offset, shift))
    bounded = torch.tanh(z + shift) * half_l - offset
    zhat = bounded + (torch.round(bounded) - bounded).detach()  # round_ste
    half_width = lv // 2
    return zhat / half_width


def symmetric_fsq(z: torch.Tensor, levels: tuple[int, ...]) -> torch.Tensor:
    """arXiv 2411.19842 §3.2: k = floor((L-1)(tanh z + 1)/2 + 1/2), code = (2k - (L-1))/(L-1)."""
    lm1 = torch.tensor(levels, dtype=torch.float32) - 1
    bracket = lm1 * (torch.tanh(z) + 1) / 2 + 0.5
    k = bracket + (bracket.floor() - bracket).detach()  # floor_ste
    return (2 * k - lm1) / lm1


def normal(*shape: int, std: float = 2.0, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * std


def near_bin_edges(levels: tuple[int, ...], ulps: int = 40) -> torch.Tensor:
    """``(n, d)`` fp32 inputs packed around every bin edge of every channel: consecutive fp32
    values within ``ulps`` of the edge, where a one-ulp change of a constant moves the bin."""
    columns = []
    for n in levels:
        half_l = (n - 1) * (1 - 1e-3) / 2
        offset = 0.5 if n % 2 == 0 else 0.0
        shift = math.tan(offset / half_l)
        edges = [(k + 0.5 + offset) / half_l for k in range(-(n // 2), n - n // 2 - 1)]
        z = torch.tensor([math.atanh(e) - shift for e in edges], dtype=torch.float32)
        steps = torch.arange(-ulps, ulps + 1, dtype=torch.float32)
        ulp = torch.nextafter(z, torch.full_like(z, math.inf)) - z
        columns.append((z[:, None] + steps * ulp[:, None]).flatten())
    rows = max(len(c) for c in columns)
    return torch.stack([c.repeat(rows // len(c) + 1)[:rows] for c in columns], -1)


@pytest.mark.parametrize("levels", ALL_SETS)
def test_quantize_equals_paper_formula_bit_for_bit(levels):
    z = torch.cat([normal(100_000, len(levels)), near_bin_edges(levels)])
    codes = FSQ(levels).quantize(z)
    assert codes.dtype == torch.float32
    assert torch.equal(codes, reference_fsq(z, levels))
    # the same holds for channel-first and strided memory layouts (different fast paths)
    z_cf = z.T.contiguous().T
    assert torch.equal(FSQ(levels).quantize(z_cf), codes)
    assert torch.equal(FSQ(levels).quantize(z[::3]), codes[::3])


def test_quantize_known_values():
    """Hand-checked: 0 -> code 0; saturation -> the grid's ends, asymmetric for even L."""
    fsq = FSQ((8, 5, 3))
    z = torch.tensor([[0.0, 0.0, 0.0], [30.0, 30.0, 30.0], [-30.0, -30.0, -30.0]])
    expected = torch.tensor([[0.0, 0.0, 0.0], [0.75, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    assert torch.equal(fsq.quantize(z), expected)


@pytest.mark.parametrize("bound", BOUNDS)
@pytest.mark.parametrize("levels", list(RECOMMENDED_LEVELS.values()))
def test_indices_round_trip_every_code(levels, bound):
    fsq = FSQ(levels, bound=bound)
    indices = torch.arange(fsq.codebook_size)
    codes = fsq.implicit_codebook  # (K, d)
    assert codes.shape == (math.prod(levels), len(levels))
    assert torch.equal(fsq.codes_to_indices(codes), indices)
    assert torch.unique(codes, dim=0).shape[0] == fsq.codebook_size  # no collisions
    assert codes.abs().max() <= 1


@pytest.mark.parametrize("levels", ALL_SETS)
def test_indices_follow_the_spec_formula(levels):
    """index = sum_i (code_i·(L_i//2) + L_i//2)·basis_i, first channel least significant."""
    fsq = FSQ(levels)
    codes = fsq.quantize(normal(10_000, len(levels)))
    half = torch.tensor(levels) // 2
    basis = torch.tensor([math.prod(levels[:i]) for i in range(len(levels))])
    expected = ((codes * half + half).round().long() * basis).sum(-1)
    assert torch.equal(fsq.codes_to_indices(codes), expected)
    assert torch.equal(fsq.indices_to_codes(expected), codes)


def test_first_channel_is_least_significant():
    fsq = FSQ((8, 5, 5, 5))
    assert fsq.indices_to_codes(torch.tensor(1)).tolist() == [-0.75, -1, -1, -1]
    assert fsq.indices_to_codes(torch.tensor(8)).tolist() == [-1, -0.5, -1, -1]
    assert fsq.indices_to_codes(torch.tensor(999)).tolist() == [0.75, 1, 1, 1]


def test_batch_uses_whole_codebook_and_indices_match_codes():
    fsq = FSQ((8, 5, 5, 5))
    z = normal(2, 4, 50_000)  # (B, d, N) channel-first
    out = fsq(z)
    assert out.indices.min() == 0 and out.indices.max() == fsq.codebook_size - 1
    assert out.logs["usage"] == 1.0
    assert torch.equal(out.indices, fsq.codes_to_indices(out.quantized.movedim(1, -1)))


def test_large_codebook_uses_exact_integer_indices():
    fsq = FSQ((1000, 999, 997))  # ~1e9 codes: beyond fp32's exact integers
    idx = torch.randint(0, fsq.codebook_size, (4096,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(fsq.codes_to_indices(fsq.indices_to_codes(idx)), idx)
    out = fsq(normal(2, 3, 500))
    assert torch.equal(fsq.indices_to_codes(out.indices), out.quantized.movedim(1, -1))


def test_logs_of_a_large_codebook_match_codebook_stats():
    fsq = FSQ((128, 128, 128))  # 2^21 codes: logs from the used codes, no 2^21 histogram
    out = fsq(normal(4, 3, 1000, std=0.3))
    expected = codebook_stats(out.indices, fsq.codebook_size)
    assert out.logs["usage"] == expected["usage"] > 0
    torch.testing.assert_close(out.logs["perplexity"], expected["perplexity"], rtol=1e-5, atol=0)


@pytest.mark.parametrize("bound", BOUNDS)
def test_straight_through_gradient_is_the_bounds_derivative(bound):
    levels = (8, 5, 6, 3)
    z = normal(1000, 4).requires_grad_()
    w = normal(1000, 4, std=1.0, seed=1)
    (FSQ(levels, bound=bound).quantize(z) * w).sum().backward()
    ref_z = z.detach().clone().requires_grad_()
    port = symmetric_fsq if bound == "symmetric" else reference_fsq
    if bound == "vqpytorch":
        vqp = pytest.importorskip("vector_quantize_pytorch")
        port = lambda x, lv: vqp.FSQ(list(lv)).quantize(x)  # noqa: E731
    (port(ref_z, levels) * w).sum().backward()
    torch.testing.assert_close(z.grad, ref_z.grad, rtol=1e-6, atol=1e-7)
    assert (z.grad != 0).all()  # flows through tanh everywhere, not only inside a bin


def test_bf16_input_is_quantised_in_fp32():
    levels = (8, 5, 5, 5)
    fsq = FSQ(levels)
    z16 = normal(100_000, 4).bfloat16()
    codes = fsq.quantize(z16)
    assert codes.dtype == torch.float32
    assert torch.equal(codes, fsq.quantize(z16.float()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fsq.quantize(z16), codes)
        assert torch.equal(fsq(z16.T[None]).indices, fsq(z16.float().T[None]).indices)
    # the formula evaluated in bf16 lands in other bins: what fp32 protects against
    bf16_codes = reference_fsq(z16, levels).float()
    assert (bf16_codes != codes).any(-1).float().mean() > 1e-3


def test_dtype_cast_of_module_keeps_fp32_constants():
    z = normal(10_000, 4)
    assert torch.equal(
        FSQ((8, 5, 5, 5)).to(torch.bfloat16).quantize(z), reference_fsq(z, (8, 5, 5, 5))
    )
    assert torch.equal(FSQ((8, 5, 5, 5)).double().quantize(z), reference_fsq(z, (8, 5, 5, 5)))


@pytest.mark.parametrize("levels", list(RECOMMENDED_LEVELS.values()) + [(3, 4, 6, 7)])
def test_vqpytorch_variant_matches_vector_quantize_pytorch(levels):
    vqp = pytest.importorskip("vector_quantize_pytorch")
    z = normal(8, 4096, len(levels))  # (B, N, d) channel-last, as theirs takes it
    theirs_q, theirs_idx = vqp.FSQ(list(levels))(z)
    ours = FSQ(levels, bound="vqpytorch")(z.movedim(-1, 1))
    assert torch.equal(ours.quantized.movedim(1, -1), theirs_q)
    assert torch.equal(ours.indices, theirs_idx.long())
    # theirs (1+eps, atanh) differs from the paper's formula by one level near bin edges:
    # on these seeded inputs 0.63% (3, 4, 6, 7) to 1.37% (8, 8, 8, 5, 5, 5) of the tokens
    reference = FSQ(levels)(z.movedim(-1, 1)).indices
    differ = (reference != ours.indices).float().mean().item()
    assert 0.005 < differ < 0.015, differ


@pytest.mark.parametrize("levels", [(8, 5, 5, 5), (4, 4), (2, 2, 2)])
def test_symmetric_variant_is_symmetric_and_matches_preserve_symmetry(levels):
    fsq = FSQ(levels, bound="symmetric")
    for channel, n in enumerate(levels):
        grid = fsq.implicit_codebook[:, channel].unique()
        assert len(grid) == n and torch.equal(grid, -grid.flip(0))
    z = normal(100_000, len(levels))
    codes = fsq.quantize(z)
    assert torch.equal(codes, symmetric_fsq(z, levels))
    assert (fsq.quantize(-z) == -codes).all(-1).float().mean() > 0.9999
    assert torch.equal(fsq.indices_to_codes(fsq.codes_to_indices(codes)), codes)
    # same levels as vector-quantize-pytorch's preserve_symmetry (its codes may be 1 ulp off)
    vqp = pytest.importorskip("vector_quantize_pytorch")
    theirs = vqp.FSQ(list(levels), preserve_symmetry=True)
    their_codes = theirs.quantize(z)
    assert torch.equal(fsq.codes_to_indices(codes), fsq.codes_to_indices(their_codes))
    torch.testing.assert_close(codes, their_codes, rtol=0, atol=2.4e-7)  # 2 ulp of 1.0


def test_reference_grid_is_asymmetric_for_even_levels():
    grid = FSQ((8,)).implicit_codebook[:, 0]
    assert grid.tolist() == [-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75]


@pytest.mark.parametrize("bound", BOUNDS)
@pytest.mark.parametrize("shape", [(2, 16, 5, 6), (3, 16, 7)])
def test_module_with_projection(shape, bound, device):
    torch.manual_seed(0)
    fsq = FSQ((8, 5, 5, 5), in_channels=16, bound=bound).to(device)
    z = normal(*shape).to(device).requires_grad_()
    out = fsq(z)
    assert out.quantized.shape == shape
    assert out.indices.shape == (shape[0], *shape[2:]) and out.indices.dtype == torch.int64
    assert out.loss.shape == () and out.loss == 0
    assert set(out.logs) == {"usage", "perplexity"}
    out.quantized.square().mean().backward()
    assert z.grad.abs().sum() > 0 and fsq.project_in.weight.grad.abs().sum() > 0
    fsq.eval()
    with torch.no_grad():
        tokens = fsq.encode(z)
        assert torch.equal(tokens.indices, out.indices)
        assert torch.equal(fsq.decode(tokens), fsq(z).quantized)
        assert torch.equal(fsq.decode(tokens.indices), fsq(z).quantized)
    assert set(fsq.state_dict()) == {
        f"project_{p}.{w}" for p in ("in", "out") for w in ("weight", "bias")
    }


def test_module_without_projection_is_the_channel_first_quantize():
    fsq = FSQ((7, 5, 5, 5, 5))
    assert list(fsq.parameters()) == [] and fsq.state_dict() == {}
    z = normal(2, 5, 6, 7)
    out = fsq(z)
    assert torch.equal(out.quantized, fsq.quantize(z.movedim(1, -1)).movedim(-1, 1))
    assert torch.equal(fsq.decode(fsq.encode(z)), out.quantized)


def test_levels_for_codebook_size():
    for n, levels in RECOMMENDED_LEVELS.items():
        assert levels_for_codebook_size(n) == levels
    expected = {8: (8,), 16: (16,), 128: (16, 8), 512: (8, 8, 8), 2**11: (16, 16, 8)}
    expected |= {240: (8, 6, 5), 1000: (8, 5, 5, 5), 4375: (7, 5, 5, 5, 5), 2**16: None}
    for n, levels in expected.items():
        got = levels_for_codebook_size(n, exact=n in RECOMMENDED_LEVELS)
        assert math.prod(got) == n and (levels is None or got == levels), (n, got)
        assert got == tuple(sorted(got, reverse=True)) and min(got) >= 3
    with pytest.raises(ValueError, match="cannot be matched exactly"):
        levels_for_codebook_size(2 * 1009)
    with pytest.raises(ValueError, match="must be an int"):
        levels_for_codebook_size(2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(levels=()), "non-empty sequence"),
        (dict(levels="855"), "non-empty sequence"),
        (dict(levels=(8.0, 5)), "must be ints"),
        (dict(levels=(8, 1)), ">= 2"),
        (dict(levels=(8, 2)), "level 2 breaks the 'reference' FSQ bound.*bound='symmetric'"),
        (dict(levels=(8, 2), bound="vqpytorch"), "level 2 breaks"),
        (dict(levels=(2000,)), "above 1000"),
        (dict(levels=(8, 5), bound="refrence"), "did you mean 'reference'.*symmetric"),
        (dict(levels=(8, 5), in_channels=0), "in_channels"),
    ],
)
def test_invalid_construction_raises_one_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FSQ(**kwargs)


def test_bad_inputs_raise_one_clear_error():
    fsq = FSQ((8, 5, 5, 5), in_channels=16)
    with pytest.raises(ValueError, match="channel-first feature map"):
        fsq(torch.randn(4, 16))
    with pytest.raises(ValueError, match="has 8 channels but the quantizer expects 16"):
        fsq(torch.randn(2, 8, 4, 4))
    with pytest.raises(ValueError, match="NaN or Inf"):
        fsq(torch.full((2, 16, 4, 4), float("nan")))
    with pytest.raises(ValueError, match=r"must be channel-last \(\.\.\., 4\)"):
        fsq.quantize(torch.randn(10, 5))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1000\).*\[0, 1000\]"):
        fsq.decode(Tokens(torch.tensor([[0, 1000]])))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1000\).*\[-1, 3\]"):
        fsq.indices_to_codes(torch.tensor([-1, 3]))
    with pytest.raises(TypeError, match="integer tensor"):
        fsq.indices_to_codes(torch.tensor([0.0]))
    with pytest.raises(ValueError, match="outside the FSQ grid"):
        fsq.codes_to_indices(torch.tensor([[2.0, 0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"\(B, \*spatial\)"):
        fsq.decode(Tokens(torch.tensor([3])))
