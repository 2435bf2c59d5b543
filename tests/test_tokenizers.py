"""Tokenizer contracts: every variant builds, encode/decode round trips, save/load, rate."""

import math

import pytest
import torch

from mvq.core.pretrained import CheckpointError
from mvq.core.tokens import Tokens
from mvq.tokenizers import (
    MVQVAE,
    VQVAE2,
    create_tokenizer,
    list_tokenizers,
    load_tokenizer,
)

TINY = dict(channels=16, res_channels=8)


@pytest.mark.parametrize("name", [n for n in list_tokenizers() if "_k16" in n])
def test_every_registered_variant_runs_forward(name: str) -> None:
    torch.manual_seed(0)
    extra = {"num_hypotheses": 4} if name.startswith("mvqvae") else {}
    model = create_tokenizer(name, **TINY, **extra)
    c = model.config
    x = torch.rand(2, c.in_channels, c.image_size, c.image_size) * 2 - 1
    out = model(x)
    assert out.recon.shape == x.shape
    layout = model.token_layout  # (grid, grid) and (1, 1); residual VQ stacks its levels
    depth = getattr(model, "depth", 1)
    assert out.tokens.indices.shape == (2, *layout.primary_grid) == (2, depth * c.grid, c.grid)
    assert out.tokens.secondary.shape == (2, *layout.secondary_grid) == (2, depth, 1)
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize(
    "name", ["vqvae2_fmnist_s4_k16", "mvqvae_fmnist_s4_k16", "fsqvae_fmnist_s4_k16"]
)
def test_decode_of_encode_equals_forward(name: str, device) -> None:
    torch.manual_seed(1)
    model = create_tokenizer(name, **TINY).eval().to(device)
    x = (torch.rand(3, 1, 28, 28) * 2 - 1).to(device)
    out = model(x)
    assert torch.allclose(model.decode(out.tokens), out.recon, atol=1e-5)
    torch.manual_seed(2)  # MVQ's masks come from the global RNG (that of x's device)
    tokens = model.encode(x)
    torch.manual_seed(2)
    assert torch.allclose(model.decode(tokens), model(x).recon, atol=1e-5)


@pytest.mark.parametrize(
    "name", ["vqvae2_cifar10_s16_k256", "mvqvae_fmnist_s1_k16", "fsqvae_fmnist_s4_k256"]
)
def test_save_load_round_trip(name: str, tmp_path) -> None:
    torch.manual_seed(2)
    model = create_tokenizer(name, **TINY)
    c = model.config
    x = torch.rand(2, c.in_channels, c.image_size, c.image_size) * 2 - 1
    model(x)  # move BatchNorm statistics away from their initial values
    model.save_pretrained(tmp_path / "m")
    loaded = load_tokenizer(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    model.eval(), loaded.eval()
    tokens = model.encode(x)
    tokens = Tokens(tokens.indices, tokens.secondary, tokens.mask)
    assert torch.allclose(model.decode(tokens), loaded.decode(tokens))


def test_bits_per_image_follow_the_rate_rule() -> None:
    # MVQ: S*log2(K/2) + log2(K/2) + D'; VQ-VAE-2: the same without the mask bits
    mvq = create_tokenizer("mvqvae_fmnist_s4_k16", **TINY)
    vq = create_tokenizer("vqvae2_fmnist_s4_k16", **TINY)
    assert mvq.bits_per_image == 4 * 3 + 3 + 16
    assert vq.bits_per_image == 4 * 3 + 3
    fsq = create_tokenizer("fsqvae_fmnist_s16_k256", **TINY)
    layout = fsq.token_layout
    assert fsq.bits_per_image == pytest.approx(
        16 * math.log2(layout.primary_vocab) + math.log2(layout.secondary_vocab)
    )
    assert layout.primary_vocab == 128  # levels chosen to match K/2 exactly


def test_mvqvae_and_vqvae2_share_their_networks() -> None:
    mvq, vq = create_tokenizer("mvqvae_fmnist_s4_k16"), create_tokenizer("vqvae2_fmnist_s4_k16")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(mvq.encoder) == count(vq.encoder)
    assert count(mvq.secondary_encoder) == count(vq.secondary_encoder)
    assert isinstance(mvq, MVQVAE) and isinstance(vq, VQVAE2)


def test_bad_inputs_and_checkpoints(tmp_path) -> None:
    with pytest.raises(ValueError, match="image size 30 with F=14 is not supported"):
        create_tokenizer("mvqvae_fmnist_s4_k16", image_size=30)
    with pytest.raises(CheckpointError, match="unknown key 'num_hypothesis'.*num_hypotheses"):
        create_tokenizer("mvqvae_fmnist_s4_k16", num_hypothesis=4)
    with pytest.raises(KeyError, match="did you mean 'mvqvae_fmnist_s4_k16'"):
        create_tokenizer("mvqvae_fmnist_s4_k61")
    model = create_tokenizer("vqvae2_fmnist_s4_k16", **TINY)
    with pytest.raises(ValueError, match=r"expects images \(B, 1, 28, 28\)"):
        model(torch.zeros(2, 3, 32, 32))
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_tokenizer(tmp_path / "m")
    other = create_tokenizer("vqvae2_fmnist_s4_k16", **TINY, dim=8)
    other.save_pretrained(tmp_path / "o")
    cfg = (tmp_path / "o" / "config.json").read_text().replace('"dim": 8', '"dim": 16')
    (tmp_path / "o" / "config.json").write_text(cfg)
    with pytest.raises(CheckpointError, match="do not match"):
        load_tokenizer(tmp_path / "o")
    with pytest.raises(CheckpointError, match="not a saved model"):
        load_tokenizer(tmp_path / "nothing")


def test_encodings_are_bit_identical_to_the_seeded_global_rng() -> None:
    """Generators passed, not the global RNG re-seeded: the tokens (and a token directory's
    bytes) are those the code wrote before generators (HEAD 509a612, ``torch.manual_seed``)."""
    import hashlib
    import tempfile
    from pathlib import Path

    from torch.utils.data import TensorDataset

    from mvq.tokenizers.apply import encode_dataset

    torch.manual_seed(1)
    model = create_tokenizer("mvqvae_fmnist_s4_k16", **TINY, num_hypotheses=16)
    x = torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(3)) * 2 - 1
    g = torch.Generator().manual_seed(0)
    masks = torch.cat([model.encode(x[i : i + 4], generator=g).mask for i in range(0, 10, 4)])
    assert masks.flatten().tolist() == [
        183,
        130,
        29,
        198,
        180,
        212,
        158,
        197,
        247,
        198,
        151,
        223,
        131,
        150,
        136,
        212,
        243,
        210,
        191,
        199,
    ]
    out = model.eval()(x[:4], generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.tokens.mask, masks[:4])
    with tempfile.TemporaryDirectory() as tmp:
        splits = {
            "train": TensorDataset(x, torch.arange(10) % 3),
            "val": TensorDataset(x[:3], torch.zeros(3, dtype=torch.long)),
        }
        state = torch.get_rng_state()
        d = encode_dataset(model, splits, Path(tmp) / "tok", {"class": "x"}, {"name": "t"}, 3, 5)
        digest = {f.name: hashlib.sha256(f.read_bytes()).hexdigest()[:16] for f in d.iterdir()}
    assert digest == {
        "meta.json": "dc464d4e3b05e1c9",
        "train.safetensors": "18da5832390530af",
        "val.safetensors": "5b4dc29f71f63ae2",
    }
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was neither seeded nor used
