"""Masked FSQ (MFSQVAE): ``e + f(e' * m)`` with FSQ codes for e and e', MVQVAE's MH-Dropout."""

import math

import pytest
import torch

from mvq.core.tokens import Tokens
from mvq.quantizers import FSQ, MaskedVectorQuantizer
from mvq.quantizers.fsq import levels_for_codebook_size
from mvq.tokenizers import MFSQVAE, MVQVAE, create_tokenizer, list_tokenizers, load_tokenizer

TINY = dict(channels=16, res_channels=8, num_hypotheses=16)


def test_registered_for_every_data_set_s_and_k() -> None:
    names = [n for n in list_tokenizers() if n.startswith("mfsqvae_")]
    assert len(names) == 4 * 3 * 2
    assert "mfsqvae_fmnist_s4_k16" in names and "mfsqvae_imagenet64_s16_k256" in names


@pytest.mark.parametrize("k", [16, 256])
def test_fsq_codes_for_both_levels_and_the_rate(k: int) -> None:
    model = create_tokenizer(f"mfsqvae_fmnist_s4_k{k}", **TINY)
    q = model.quantizer
    assert isinstance(model, MFSQVAE) and isinstance(model, MVQVAE)
    assert isinstance(q.primary, FSQ) and isinstance(q.secondary, FSQ)
    assert q.primary.levels == q.secondary.levels == levels_for_codebook_size(k // 2)
    assert model.token_layout.primary_vocab == model.token_layout.secondary_vocab == k // 2
    assert model.bits_per_image == 4 * math.log2(k // 2) + math.log2(k // 2) + 16
    assert not any("codebook" in n for n in model.state_dict())  # no VQ tables


def test_forward_backward_encode_decode() -> None:
    torch.manual_seed(0)
    model = create_tokenizer("mfsqvae_fmnist_s4_k16", **TINY)
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    out = model(x)
    assert out.recon.shape == x.shape and torch.isfinite(out.loss)
    assert out.tokens.indices.shape == (6, 2, 2) and out.tokens.secondary.shape == (6, 1, 1)
    assert out.tokens.mask.shape == (6, 2) and float(out.logs["quant_loss"]) > 0  # the mhd term
    out.loss.backward()
    q = model.quantizer
    parts = {
        "encoder": model.encoder,
        "secondary encoder": model.secondary_encoder,
        "f": q.f,
        "primary FSQ": q.primary,
        "secondary FSQ": q.secondary,
    }
    for name, module in parts.items():
        grads = [p.grad for p in module.parameters()]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name
    model.eval()
    torch.manual_seed(3)
    tokens = model.encode(x)
    torch.manual_seed(3)
    recon = model(x).recon
    torch.testing.assert_close(model.decode(tokens), recon, atol=1e-5, rtol=0)
    # the decoder input is FSQ's grid code plus f of the masked, projected secondary FSQ code
    e, code = q.primary.decode(tokens.indices), q.secondary.decode(tokens.secondary)
    m = q.mask_patterns(tokens.mask)[..., None, None].float()  # (B, D', 1, 1)
    torch.testing.assert_close(model.decode_latent(tokens), e + q.f(code * m), atol=1e-6, rtol=0)
    generated = model.decode(Tokens(tokens.indices, tokens.secondary), torch.Generator())
    assert generated.shape == x.shape


def test_the_masked_quantizer_accepts_fsq_codebooks() -> None:
    """The same search and tokens as with VQ codebooks: winner = the argmin over the J masks."""
    torch.manual_seed(0)
    fsq = (FSQ((8,), in_channels=4), FSQ((8,), in_channels=4))
    q = MaskedVectorQuantizer(4, 8, num_hypotheses=16, quantizers=fsq, search="all_in_graph")
    z, z2 = torch.randn(5, 4, 2, 2), torch.randn(5, 4, 1, 1)
    torch.manual_seed(1)
    reference = q(z, z2)
    q.search = "chunked"
    torch.manual_seed(1)
    fast = q(z, z2)
    assert torch.equal(fast.tokens.mask, reference.tokens.mask)
    torch.testing.assert_close(fast.quantized, reference.quantized, atol=1e-6, rtol=1e-5)
    assert torch.equal(fast.tokens.indices, fsq[0].encode(z).indices)
    torch.testing.assert_close(q.eval().decode(fast.tokens), fast.quantized, atol=1e-6, rtol=0)


def test_save_load_round_trip(tmp_path) -> None:
    torch.manual_seed(2)
    model = create_tokenizer("mfsqvae_fmnist_s1_k256", **TINY, levels=(8, 4, 4))
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    model(x)
    model.save_pretrained(tmp_path / "m")
    loaded = load_tokenizer(tmp_path / "m")
    assert type(loaded) is MFSQVAE and loaded.config == model.config
    assert loaded.config.levels == (8, 4, 4) and loaded.token_layout.primary_vocab == 128
    model.eval()
    tokens = model.encode(x)
    assert torch.equal(loaded.decode(tokens), model.decode(tokens))


def test_vq_options_are_refused() -> None:
    with pytest.raises(ValueError, match="ema, init apply to VQ codebooks; Masked FSQ has none"):
        create_tokenizer("mfsqvae_fmnist_s4_k16", ema=True, init="kmeans")
