"""Numerical contracts of LFQ and BSQ: parity with vector-quantize-pytorch (codes, indices in
their bit order, entropy terms where the definitions coincide), the exact entropy against a
plain (N, 2^d) softmax, the tiled form against the whole one, round trips, decode(encode(z)) ==
forward(z).quantized, gradients, fp32 under bf16 autocast and one-line errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mvq.core.tokens import Tokens
from mvq.quantizers import BSQ, LFQ
from mvq.quantizers.base import codebook_stats
from mvq.quantizers.lfq import code_stats, indices_to_bits, lfq_entropies

vqp = pytest.importorskip("vector_quantize_pytorch")


def normal(*shape: int, std: float = 1.0, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * std


def with_zeros(z: torch.Tensor) -> torch.Tensor:
    """``z`` with every 7th entry exactly 0 (the sign's tie: bit 0 in both libraries)."""
    z = z.clone()
    z.view(-1)[::7] = 0.0
    return z


def reverse_bits(indices: torch.Tensor, d: int) -> torch.Tensor:
    """Indices with bit ``i`` moved to bit ``d-1-i``: vector-quantize-pytorch's order."""
    bits = indices_to_bits(indices, d)  # (..., d), channel i = bit i
    powers = 2 ** torch.arange(d - 1, -1, -1)
    return (bits.long() * powers).sum(-1)


def theirs(d: int, spherical: bool, **kw) -> torch.nn.Module:
    return vqp.LFQ(dim=d, spherical=spherical, **kw)


def naive_entropies(x: torch.Tensor, logit_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The definition, in float64: the (N, 2^d) softmax over all codes, unclamped logs."""
    x = x.double()
    d = x.shape[1]
    codes = indices_to_bits(torch.arange(2**d), d).double() * 2 - 1  # (2^d, d), index order
    log_q = torch.log_softmax(logit_scale * x @ codes.t(), dim=-1)  # (N, 2^d)
    q = log_q.exp()
    sample = -(q * log_q).sum(-1).mean()
    avg = q.mean(0)
    return sample, -torch.xlogy(avg, avg).sum()


# -- parity with vector-quantize-pytorch --------------------------------------------------------
@pytest.mark.parametrize("d", [1, 3, 8, 12])
@pytest.mark.parametrize("cls", [LFQ, BSQ])
def test_codes_and_indices_equal_vqpytorch(cls, d):
    z = with_zeros(normal(4, d, 6, 5))  # (B, d, H, W)
    ours = cls(d).eval()
    ref = theirs(d, spherical=cls is BSQ).eval()  # eval: their output is the codes themselves
    out = ours(z)
    ref_q, ref_idx, _ = ref(z)
    assert torch.equal(out.quantized, ref_q)  # bit for bit, also BSQ's 1/sqrt(d)
    assert torch.equal(out.indices, reverse_bits(ref_idx, d))
    assert torch.equal(reverse_bits(out.indices, d), ref_idx)
    # their indices_to_codes (their order) equals ours (ours)
    ref_codes = ref.indices_to_codes(ref_idx, project_out=False)  # (B, d, H, W)
    assert torch.equal(ours.decode(out.tokens), ref_codes)


@pytest.mark.parametrize("cls, temperature", [(LFQ, 1.0), (LFQ, 0.02), (BSQ, 1.0), (BSQ, 0.7)])
def test_entropy_terms_and_loss_equal_vqpytorch_where_definitions_coincide(cls, temperature):
    """Their logs clamp probabilities at 1e-5 (``log(max(p, 1e-5))``); ours are exact. On
    inputs where every code's probability is above 1e-5 the two definitions coincide."""
    d = 6
    z = normal(2, d, 8, 8, std=0.15 * temperature, seed=1).requires_grad_()  # (B, d, H, W)
    kw = dict(entropy_weight=0.1, commitment_weight=0.25, diversity_gamma=0.7)
    ours = cls(d, temperature=temperature, **kw).train()
    ref = theirs(
        d, cls is BSQ, entropy_loss_weight=0.1, commitment_loss_weight=0.25, diversity_gamma=0.7
    ).train()
    u = z.detach().movedim(1, -1).reshape(-1, d)  # (N, d)
    u = F.normalize(u, dim=-1) if cls is BSQ else u
    scale = 1 / d**0.5 if cls is BSQ else 1.0
    codes = indices_to_bits(torch.arange(2**d), d).float() * 2 * scale - scale
    probs = torch.softmax(2 * u @ codes.t() / temperature, dim=-1)
    assert probs.min() > 1e-5  # the precondition: their clamp does not bite

    out = ours(z)
    (ref_q, _, ref_loss), parts = ref(
        z, inv_temperature=1 / temperature, return_loss_breakdown=True
    )
    tol = dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logs["per_sample_entropy"], parts.per_sample_entropy, **tol)
    torch.testing.assert_close(out.logs["codebook_entropy"], parts.batch_entropy, **tol)
    torch.testing.assert_close(out.logs["commitment"], parts.commitment, **tol)
    torch.testing.assert_close(out.loss, ref_loss, **tol)
    # and the gradients of the whole loss agree
    (grad,) = torch.autograd.grad(out.quantized.square().sum() + out.loss, z)
    (ref_grad,) = torch.autograd.grad(ref_q.square().sum() + ref_loss, z)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)


def test_at_default_temperature_vqpytorch_clamp_lowers_its_entropies():
    """At tau = 0.01 most codes have p < 1e-5: their clamped logs give smaller entropies than
    the definition; ours equals the definition (float64 reference)."""
    d = 8
    z = normal(4, d, 8, 8, std=0.05, seed=2)
    ours, ref = LFQ(d).train(), theirs(d, False).train()
    out = ours(z)
    _, parts = ref(z, return_loss_breakdown=True)  # their default inv_temperature = 100
    sample, book = naive_entropies(z.movedim(1, -1).reshape(-1, d), 2 / 0.01)
    torch.testing.assert_close(
        out.logs["per_sample_entropy"].double(), sample, rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(out.logs["codebook_entropy"].double(), book, rtol=1e-4, atol=1e-5)
    # -p log(max(p, 1e-5)) < -p log p by at most 1e-5/e per code and token
    gap = out.logs["per_sample_entropy"] - parts.per_sample_entropy
    assert 0 < gap < 2**d * 1e-5 / torch.e


# -- the entropy computation ---------------------------------------------------------------
@pytest.mark.parametrize("d", [1, 2, 5, 9])
@pytest.mark.parametrize("logit_scale", [0.5, 20.0])
def test_entropies_equal_the_definition(d, logit_scale):
    x = normal(300, d, seed=d)
    sample, book = lfq_entropies(x, logit_scale)
    ref_sample, ref_book = naive_entropies(x, logit_scale)
    torch.testing.assert_close(sample.double(), ref_sample, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(book.double(), ref_book, rtol=1e-5, atol=1e-5)


def test_group_approximation_is_the_sum_of_group_entropies_and_an_upper_bound():
    x = normal(500, 6, seed=3)
    x[:, 1] = x[:, 0] + 0.1 * x[:, 1]  # channels 0 and 1 dependent: the bound is strict
    exact = lfq_entropies(x, 2.0)[1]
    grouped = lfq_entropies(x, 2.0, group_size=2)[1]
    parts = sum(lfq_entropies(x[:, i : i + 2], 2.0)[1] for i in (0, 2, 4))
    torch.testing.assert_close(grouped, parts)
    assert grouped > exact + 1e-3
    uneven = lfq_entropies(x, 2.0, group_size=4)[1]  # groups of 4 and 2 channels
    torch.testing.assert_close(
        uneven, lfq_entropies(x[:, :4], 2.0)[1] + lfq_entropies(x[:, 4:], 2.0)[1]
    )


def test_tiled_codebook_entropy_equals_the_whole_one():
    """d = 12 forced through the tiled path (tiles of 2^3 x 2^3 codes, checkpointed): the same
    value and the same gradient as P formed whole."""
    x = normal(200, 12, seed=4, std=0.5).requires_grad_()
    whole = lfq_entropies(x, 3.0)[1]
    (g_whole,) = torch.autograd.grad(whole, x)
    tiled = lfq_entropies(x, 3.0, tile_bits=3)[1]
    (g_tiled,) = torch.autograd.grad(tiled, x)
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_tiled, g_whole, rtol=1e-4, atol=1e-7)
    with torch.no_grad():  # the no-grad branch of the tiling
        torch.testing.assert_close(lfq_entropies(x, 3.0, tile_bits=3)[1], whole)


def test_above_16_bits_stats_equal_a_bincount_and_entropy_is_tiled():
    """d = 22: usage/perplexity from unique() equal a 2^22 bincount; the module's entropy goes
    through the tiled path (halves of 2^11 codes) and equals P formed whole."""
    d = 22
    z = normal(2, d, 2, 2, seed=5).requires_grad_()
    out = LFQ(d, temperature=0.5).train()(z)
    ref = codebook_stats(out.indices, 2**d)
    torch.testing.assert_close(out.logs["usage"], ref["usage"])
    torch.testing.assert_close(out.logs["perplexity"], ref["perplexity"])
    torch.testing.assert_close(code_stats(out.indices, d)["usage"], ref["usage"])
    whole = lfq_entropies(z.detach().movedim(1, -1).reshape(-1, d), 2 / 0.5, tile_bits=11)[1]
    torch.testing.assert_close(out.logs["codebook_entropy"], whole)
    out.loss.backward()
    assert torch.isfinite(z.grad).all()


# -- the interface -------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [LFQ, BSQ])
def test_indices_codes_round_trips(cls):
    d = 10
    q = cls(d)
    idx = torch.arange(2**d)
    codes = q.indices_to_codes(idx)  # (2^d, d)
    assert codes.dtype == torch.float32 and codes.shape == (2**d, d)
    assert torch.equal(q.codes_to_indices(codes), idx)
    assert len(torch.unique(codes, dim=0)) == 2**d
    s = 1 / d**0.5 if cls is BSQ else 1.0
    torch.testing.assert_close(codes.abs(), torch.full_like(codes, s), rtol=0, atol=0)
    z = with_zeros(normal(3, d, 5, 4, seed=6))
    out = q(z)
    assert torch.equal(
        q.indices_to_codes(q.codes_to_indices(out.quantized.movedim(1, -1))),
        out.quantized.movedim(1, -1),
    )
    assert q.bits_per_token == d and q.codebook_size == 2**d


@pytest.mark.parametrize("cls", [LFQ, BSQ])
@pytest.mark.parametrize("in_channels", [None, 7])
@pytest.mark.parametrize("train", [True, False])
def test_decode_encode_equals_forward(cls, in_channels, train):
    d = 5
    q = cls(d, in_channels=in_channels).train(train)
    z = normal(2, in_channels or d, 4, 3, seed=7)
    out = q(z)
    tokens = q.encode(z)
    assert torch.equal(tokens.indices, out.indices) and out.indices.shape == (2, 4, 3)
    assert tokens.indices.dtype == torch.int64
    assert torch.equal(q.decode(tokens), out.quantized)
    assert torch.equal(q.decode(tokens.indices), out.quantized)
    assert out.quantized.shape == z.shape


@pytest.mark.parametrize("cls", [LFQ, BSQ])
@pytest.mark.parametrize("d, in_channels", [(1, None), (3, None), (4, 8)])
def test_forward_backward_tiny(cls, d, in_channels):
    q = cls(d, in_channels=in_channels, commitment_weight=0.25).train()
    z = normal(2, in_channels or d, 3, 3, seed=8).requires_grad_()
    out = q(z)
    (out.quantized.square().mean() + out.loss).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    for p in q.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert set(out.logs) >= {
        "usage",
        "perplexity",
        "commitment",
        "per_sample_entropy",
        "codebook_entropy",
    }
    assert 0 < out.logs["usage"] <= 1 and 1 <= out.logs["perplexity"] <= 2**d


def test_straight_through_gradient():
    """Without losses, d quantized / d z is the identity (LFQ) or that of l2-normalisation (BSQ)."""
    g = normal(2, 4, 3, 3, seed=9)
    z = normal(2, 4, 3, 3, seed=10).requires_grad_()
    LFQ(4, entropy_weight=0, commitment_weight=0)(z).quantized.mul(g).sum().backward()
    assert torch.equal(z.grad, g)
    z.grad = None
    BSQ(4, entropy_weight=0)(z).quantized.mul(g).sum().backward()
    z2 = z.detach().requires_grad_()
    F.normalize(z2, dim=1).mul(g).sum().backward()
    torch.testing.assert_close(z.grad, z2.grad)


def test_eval_loss_is_the_commitment_term_only():
    q = LFQ(4).eval()
    out = q(normal(2, 4, 3, 3, seed=11))
    assert "codebook_entropy" not in out.logs
    torch.testing.assert_close(out.loss, 0.25 * out.logs["commitment"])


@pytest.mark.parametrize("cls", [LFQ, BSQ])
def test_fp32_arithmetic_under_bf16_autocast(cls):
    d = 6
    z = normal(2, d, 8, 8, seed=12, std=0.5)
    q = cls(d, temperature=0.5).train()
    ref = q(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z)
    # the same fp32 numbers: autocast reached neither the quantiser nor the entropy's GEMMs
    assert out.quantized.dtype == torch.float32 and out.loss.dtype == torch.float32
    assert torch.equal(out.quantized, ref.quantized) and torch.equal(out.loss, ref.loss)
    # a bf16 input is quantised in fp32: exactly what its fp32 value gives
    half, widened = q(z.bfloat16()), q(z.bfloat16().float())
    assert torch.equal(half.quantized, widened.quantized) and torch.equal(half.loss, widened.loss)
    # with projections, the projections follow autocast and the quantiser stays fp32
    p = cls(d, in_channels=8).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = p(normal(2, 8, 4, 4, seed=13))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)


# -- errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [LFQ, BSQ])
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dim=31), r"dim must be an int in \[1, 30\]"),
        (dict(dim=0), r"dim must be an int in \[1, 30\]"),
        (dict(dim=4.0), r"dim must be an int"),
        (dict(dim=4, entropy_group_size=5), r"entropy_group_size must be an int in \[1, dim=4\]"),
        (dict(dim=4, entropy_group_size=0), r"entropy_group_size"),
        (dict(dim=4, temperature=0.0), r"temperature .* must be finite and > 0"),
        (dict(dim=4, in_channels=0), r"in_channels must be >= 1"),
    ],
)
def test_bad_options_are_one_line_errors(cls, kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        cls(**kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("cls", [LFQ, BSQ])
def test_bad_inputs_are_one_line_errors(cls):
    q = cls(4)
    bad = [
        (ValueError, lambda: q(torch.randn(2, 5, 3, 3)), "channels"),
        (ValueError, lambda: q.indices_to_codes(torch.tensor([16])), r"\[0, 2\^4\)"),
        (ValueError, lambda: q.indices_to_codes(torch.tensor([-1])), r"\[0, 2\^4\)"),
        (TypeError, lambda: q.indices_to_codes(torch.tensor([1.0])), "integer"),
        (ValueError, lambda: q.codes_to_indices(torch.randn(3, 5)), r"\(\.\.\., 4\)"),
        (ValueError, lambda: q.decode(Tokens(torch.tensor([1, 2]))), r"\(B, \*spatial\)"),
    ]
    for exc, call, match in bad:
        with pytest.raises(exc, match=match) as err:
            call()
        assert "\n" not in str(err.value)
