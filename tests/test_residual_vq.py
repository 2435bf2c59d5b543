"""Residual VQ (``mvq.quantizers.ResidualVQ``) and the QVAE tokenizers that carry the field's
quantizer families: parity, round trips, bits, bad options."""

from __future__ import annotations

import math

import pytest
import torch

from mvq.quantizers.residual import ResidualVQ
from mvq.tokenizers import QVAE, QVAEConfig, create_tokenizer, list_tokenizers

TINY = {"channels": 8, "res_channels": 4}
FAMILY_PREFIXES = ("lfqvae", "bsqvae", "rvqvae", "simvqvae")


def test_residual_indices_and_codes_equal_vector_quantize_pytorch():
    vqp = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(0)
    theirs = vqp.ResidualVQ(dim=8, num_quantizers=3, codebook_size=16).eval()
    ours = ResidualVQ(16, 8, levels=3).eval()
    for level, layer in zip(ours.levels, theirs.layers, strict=True):
        level.codebook.data.copy_(layer._codebook.embed[0])  # the same frozen codebooks
    z = torch.randn(2, 8, 4, 4)
    q, idx, _ = theirs(z.flatten(2).transpose(1, 2))  # channel-last (B, N, D)
    tokens = ours.encode(z)
    assert tokens.indices.shape == (2, 3, 4, 4)
    assert torch.equal(tokens.indices.flatten(2).transpose(1, 2), idx)
    assert torch.equal(ours(z).quantized.flatten(2).transpose(1, 2), q)


def test_residual_round_trips_and_decode_equals_forward():
    torch.manual_seed(1)
    rvq = ResidualVQ(8, 4, levels=2, in_channels=6).eval()
    z = torch.randn(3, 6, 2, 2)
    tokens = rvq.encode(z)
    assert torch.allclose(rvq.decode(tokens), rvq(z).quantized, atol=1e-6)
    codes = rvq.indices_to_codes(tokens.indices)  # (B, L, h, w, D), one code per level
    assert torch.equal(rvq.codes_to_indices(codes), tokens.indices)
    assert rvq.bits_per_token == 2 * 3


def test_residual_levels_reduce_the_error_and_gradients_reach_the_input():
    torch.manual_seed(2)
    z = torch.randn(64, 4, 1, 1)
    errs = []
    for levels in (1, 2, 4):
        torch.manual_seed(3)
        rvq = ResidualVQ(16, 4, levels=levels, init="kmeans")
        rvq.train()
        rvq(z)  # k-means init of each level on its residual
        rvq.eval()
        errs.append(float((rvq(z).quantized.detach() - z).pow(2).mean()))
    assert errs[0] > errs[1] > errs[2]
    rvq.train()
    zz = z.clone().requires_grad_()
    out = rvq(zz)
    (out.quantized.sum() + out.loss).backward()
    assert zz.grad is not None and zz.grad.abs().sum() > 0


def test_quantizer_dropout_uses_a_prefix_of_the_levels():
    torch.manual_seed(4)
    rvq = ResidualVQ(8, 4, levels=4, quantizer_dropout=0.999).train()
    seen = {int(rvq(torch.randn(8, 4, 2, 2)).logs["levels"]) for _ in range(40)}
    assert seen <= {1, 2, 3, 4} and len(seen) > 1
    rvq.eval()
    assert int(rvq(torch.randn(8, 4, 2, 2)).logs["levels"]) == 4  # never at evaluation


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"levels": 0}, "levels must be an integer >= 1"),
        ({"quantizer_dropout": 1.0}, "quantizer_dropout must be in [0, 1)"),
    ],
)
def test_bad_residual_options_are_one_line_errors(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace(")", r"\)")) as err:
        ResidualVQ(8, 4, **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("prefix", FAMILY_PREFIXES)
def test_every_family_is_registered_at_the_papers_rates(prefix):
    names = [n for n in list_tokenizers() if n.startswith(prefix + "_fmnist_")]
    assert sorted(names) == sorted(
        f"{prefix}_fmnist_s{s}_k{k}" for s in (1, 4, 16) for k in (16, 256)
    )


@pytest.mark.parametrize("name", [f"{p}_fmnist_s4_k16" for p in FAMILY_PREFIXES])
def test_each_family_trains_encodes_and_decodes_in_the_table3_networks(name):
    torch.manual_seed(5)
    tok = create_tokenizer(name, **TINY)
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    out = tok(x)
    out.loss.backward()
    grads = [p.grad for p in tok.encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    tok.eval()
    tokens = tok.encode(x)
    layout = tok.token_layout
    assert tokens.indices.shape == (4, *layout.primary_grid)
    assert tokens.secondary.shape == (4, *layout.secondary_grid)
    recon, q = tok.autoencode(x)
    assert torch.allclose(tok.decode(tokens), recon, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "bits"),
    [
        ("lfqvae_fmnist_s4_k16", 5 * 3),
        ("bsqvae_fmnist_s4_k256", 5 * 7),
        ("rvqvae_fmnist_s4_k16", 2 * 5 * 3),
        ("simvqvae_fmnist_s1_k16", 2 * 3),
    ],
)
def test_bits_per_image_count_every_index_the_decoder_reads(name, bits):
    assert create_tokenizer(name, **TINY).bits_per_image == pytest.approx(bits)


def test_residual_levels_travel_as_rows_of_one_grid():
    tok = create_tokenizer(
        "rvqvae_fmnist_s4_k16", quantizer={"family": "rvq", "levels": 3}, **TINY
    ).eval()
    assert tok.token_layout.primary_grid == (6, 2) and tok.token_layout.secondary_grid == (3, 1)
    assert tok.bits_per_image == pytest.approx(3 * 5 * 3)
    tokens = tok.encode(torch.zeros(1, 1, 28, 28))
    assert tokens.indices.shape == (1, 6, 2)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"quantizer": {"family": "pq"}}, "unknown quantizer family 'pq'"),
        ({"quantizer": {"family": "lfq", "cosine": True}}, "has no option cosine"),
        ({"quantizer": {"family": "lfq"}, "ema": True}, "the lfq quantizer has none"),
        ({"quantizer": {"family": "bsq"}, "codebook_size": 12}, "must be a power of 2"),
        ({"quantizer": {"family": "rvq", "levels": 0}}, "levels must be an integer >= 1"),
    ],
)
def test_bad_quantizer_specs_are_one_line_errors(overrides, fragment):
    with pytest.raises(ValueError) as err:
        QVAE(QVAEConfig(**TINY, **overrides))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_qvae_with_plain_vq_equals_vqvae2_at_the_same_seed():
    """The family field changes nothing else: vq in QVAE is VQ-VAE-2."""
    torch.manual_seed(6)
    ours = QVAE(QVAEConfig(**TINY))
    torch.manual_seed(6)
    ref = create_tokenizer("vqvae2_fmnist_s4_k16", **TINY)
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(ours(x).recon, ref(x).recon)
    assert math.isclose(ours.bits_per_image, ref.bits_per_image)


def test_vq_options_reach_every_codebook_of_vqvae2_and_mvq():
    opts = {"cosine": True, "codebook_dim": 4, "rotation_trick": True}
    vq2 = create_tokenizer("vqvae2_fmnist_s4_k16", vq_options=opts, **TINY)
    mvq = create_tokenizer("mvqvae_fmnist_s4_k16", vq_options=opts, **TINY)
    for q in (vq2.quant_bottom, vq2.quant_top, mvq.quantizer.primary, mvq.quantizer.secondary):
        assert (q.cosine, q.codebook_dim, q.rotation_trick) == (True, 4, True)
    x = torch.rand(2, 1, 28, 28)
    mvq(x).loss.backward()
    with pytest.raises(ValueError, match="vq_options has no foo"):
        create_tokenizer("vqvae2_fmnist_s4_k16", vq_options={"foo": 1})
    with pytest.raises(ValueError, match="the lfq quantizer has none"):
        create_tokenizer("lfqvae_fmnist_s4_k16", vq_options={"cosine": True})
