"""The mask codebook (``mask_source="codebook"``): J fixed masks from a seed, the token is the
chosen mask's index, priors model it as one token of vocabulary J; ``"random"`` unchanged."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from mvq.cli import main
from mvq.core.tokens import (
    TokenLayout,
    Tokens,
    layout_overrides,
    mask_bytes_to_index,
    mask_index_to_bytes,
)
from mvq.priors import MaskGITPrior, MaskGITPriorConfig, TransformerPrior, TransformerPriorConfig
from mvq.quantizers import MaskedVectorQuantizer
from mvq.quantizers.masked_vq import draw_mask_codebook
from mvq.sampling import sample_autoregressive, sample_maskgit
from mvq.tokenizers import create_tokenizer, load_tokenizer

TINY = dict(channels=16, res_channels=8)
BOOK = dict(mask_source="codebook", mask_codebook_seed=7)


def codebook_mvq(j: int = 32, **kw) -> MaskedVectorQuantizer:
    torch.manual_seed(0)
    return MaskedVectorQuantizer(4, 8, secondary_dim=8, num_hypotheses=j, **{**BOOK, **kw})


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_the_list_is_the_seeds_across_save_and_load(tmp_path) -> None:
    model = create_tokenizer("mvqvae_fmnist_s4_k16", **TINY, num_hypotheses=16, **BOOK)
    book = model.quantizer.mask_codebook
    assert book.shape == (16, 16) and book.dtype == torch.bool
    assert torch.equal(book, draw_mask_codebook(16, 16, 0.5, 7))
    assert not torch.equal(book, draw_mask_codebook(16, 16, 0.5, 8))  # the seed matters
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())["config"]
    assert config["mask_source"] == "codebook" and config["mask_codebook_seed"] == 7
    loaded = load_tokenizer(tmp_path / "m")
    assert torch.equal(loaded.quantizer.mask_codebook, book)
    x = images(3)
    model.eval()
    assert torch.equal(loaded.encode(x).mask, model.encode(x).mask)

    weights = tmp_path / "m" / "model.safetensors"  # a list that is not the seed's is refused
    state = load_file(weights)
    state["quantizer.mask_codebook"][0] = ~state["quantizer.mask_codebook"][0]
    save_file(state, weights)
    with pytest.raises(ValueError, match="not the 16 masks that seed 7 draws"):
        load_tokenizer(tmp_path / "m")


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("mvqvae_fmnist_s4_k16", BOOK),
        ("mfsqvae_fmnist_s4_k16", BOOK),
        ("mfsqvae_fmnist_s4_k16", {}),
    ],
)
def test_decode_of_encode_equals_forward(name: str, extra: dict) -> None:
    torch.manual_seed(1)
    model = create_tokenizer(name, **TINY, num_hypotheses=16, **extra).eval()
    x = images(4)
    torch.manual_seed(2)  # random masks come from the global RNG; a mask codebook needs none
    out = model(x)
    torch.testing.assert_close(model.decode(out.tokens), out.recon, atol=1e-5, rtol=0)
    torch.manual_seed(2)
    assert torch.equal(model.encode(x).mask, out.tokens.mask)


@pytest.mark.parametrize(
    ("name", "j"),
    [
        ("mvqvae_fmnist_s4_k16", 256),
        ("mvqvae_fmnist_s1_k256", 64),
        ("mfsqvae_fmnist_s4_k16", 256),
        ("mfsqvae_fmnist_s16_k256", 16),
    ],
)
def test_the_token_is_the_index_and_the_rate_counts_log2_j(name: str, j: int) -> None:
    torch.manual_seed(0)
    model = create_tokenizer(name, **TINY, num_hypotheses=j, **BOOK)
    c, layout = model.config, model.token_layout
    assert layout.mask_bits == math.log2(j) and layout.mask_codebook_size == j
    s = int(name.split("_s")[1].split("_")[0])
    assert model.bits_per_image == s * math.log2(c.codebook_size // 2) + math.log2(
        c.codebook_size // 2
    ) + math.log2(j)
    out = model(images(5))
    assert out.tokens.mask.dtype == torch.uint8 and out.tokens.mask.shape == (5, 1)
    index = mask_bytes_to_index(out.tokens.mask, layout.mask_bits)
    assert int(index.min()) >= 0 and int(index.max()) < j
    # the index's bits are the packed bytes, LSB first
    assert torch.equal(mask_index_to_bytes(index, layout.mask_bits), out.tokens.mask)
    assert 0 < float(out.logs["mask_usage"]) <= 1


def test_bits_per_image_of_the_issues_settings() -> None:
    """mvqvae_fmnist_s4_k16 at J = 256: 4·3 + 3 + 8 (D' = 16 bits with random masks)."""
    book = create_tokenizer("mvqvae_fmnist_s4_k16", **TINY, **BOOK)
    assert book.bits_per_image == 23 == 4 * 3 + 3 + 8
    assert create_tokenizer("mvqvae_fmnist_s4_k16", **TINY).bits_per_image == 31
    assert create_tokenizer("mfsqvae_fmnist_s4_k16", **TINY, **BOOK).bits_per_image == 23
    assert create_tokenizer("mfsqvae_fmnist_s4_k16", **TINY).bits_per_image == 31


def brute_force_winners(q: MaskedVectorQuantizer, z: torch.Tensor, z2: torch.Tensor):
    """Winner of every instance over all J listed masks, by the definition: argmin over j of
    mse(e + f(e' * m_j), y), one hypothesis at a time."""
    e = q.primary.decode(q.primary.encode(z).indices)  # (B, D, h, w)
    code = q.norm(q.secondary.decode(q.secondary.encode(z2).indices))  # (B, D', 1, 1)
    errors = torch.stack(
        [
            F.mse_loss(e + q._f(code * m[None, :, None, None].float(), e), z, reduction="none")
            .flatten(1)
            .mean(1)
            for m in q.mask_codebook
        ],
        1,
    )  # (B, J)
    return errors.argmin(1)


@pytest.mark.parametrize("search", ["chunked", "chunked_bf16", "all_in_graph"])
@pytest.mark.parametrize("mode", ["per_instance", "per_code", "shared"])
def test_the_search_picks_the_best_of_the_listed_masks(search: str, mode: str) -> None:
    q = codebook_mvq(32, search=search, mask_mode=mode).eval()
    g = torch.Generator().manual_seed(3)
    z, z2 = torch.randn(9, 4, 2, 2, generator=g), torch.randn(9, 8, 1, 1, generator=g)
    with torch.no_grad():
        out = q(z, z2)
        winners = mask_bytes_to_index(out.tokens.mask, q.mask_bits)
        assert torch.equal(winners, brute_force_winners(q, z, z2))
        torch.testing.assert_close(q.decode(out.tokens), out.quantized, atol=1e-6, rtol=0)


def test_training_searches_the_list_not_fresh_masks() -> None:
    """Every winner is an entry of the list, whatever the global RNG does."""
    q = codebook_mvq(16)
    z, z2 = torch.randn(64, 4, 2, 2), torch.randn(64, 8, 1, 1)
    masks = []
    for seed in range(3):
        torch.manual_seed(seed)
        out = q(z, z2)
        out.loss.backward()
        masks.append(out.tokens.mask)
    assert torch.equal(masks[0], masks[1]) and torch.equal(masks[1], masks[2])
    assert q.f.first.weight.grad is not None


def test_decoding_without_a_mask_draws_uniformly_from_the_list() -> None:
    q = codebook_mvq(16).eval()
    t = q.encode(torch.randn(2000, 4, 2, 2), torch.randn(2000, 8, 1, 1))
    bare = Tokens(t.indices, t.secondary)
    drawn = q.decode(bare, torch.Generator().manual_seed(5))
    index = torch.randint(16, (2000,), generator=torch.Generator().manual_seed(5))
    as_tokens = Tokens(t.indices, t.secondary, mask_index_to_bytes(index, 4))
    assert torch.equal(drawn, q.decode(as_tokens))
    assert torch.bincount(index, minlength=16).min() > 80  # every entry, about 125 times each


def test_random_masks_are_unchanged_and_carry_no_list() -> None:
    """``mask_source="random"`` (the default) gives exactly the committed code's outputs: values
    pinned from the commit before mask codebooks (HEAD 42c4b95) on this seed."""
    torch.manual_seed(0)
    q = MaskedVectorQuantizer(4, 8, num_hypotheses=16)
    z, z2 = torch.randn(5, 4, 2, 2), torch.randn(5, 4, 1, 1)
    out = q(z, z2)
    out.quantized, out.loss = out.quantized.detach(), out.loss.detach()
    assert out.tokens.indices.flatten().tolist() == [
        0,
        4,
        5,
        1,
        0,
        5,
        5,
        5,
        0,
        5,
        7,
        0,
        5,
        6,
        7,
        7,
        5,
        3,
        6,
        0,
    ]
    assert out.tokens.secondary.flatten().tolist() == [6, 1, 7, 0, 6]
    assert out.tokens.mask.flatten().tolist() == [14, 8, 5, 6, 2]
    assert float(out.quantized.double().sum()) == pytest.approx(-3.8597915023565292, abs=1e-5)
    assert float(out.loss) == pytest.approx(4.272984027862549, rel=1e-6)
    q.eval()
    bare = Tokens(out.tokens.indices, out.tokens.secondary)
    generated = q.decode(bare, torch.Generator().manual_seed(5)).detach()
    assert float(generated.double().sum()) == pytest.approx(-4.379224879667163, abs=1e-5)
    assert "mask_codebook" not in q.state_dict() and q.mask_codebook_size == 0

    torch.manual_seed(1)
    model = create_tokenizer("mvqvae_fmnist_s4_k16", **TINY, num_hypotheses=16)
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    out = model(x)
    assert out.tokens.mask.tolist() == [[109, 224], [58, 143], [116, 121]]
    assert float(out.recon.detach().double().sum()) == pytest.approx(1326.8324639573693, rel=1e-6)
    assert model.token_layout.mask_codebook_size == 0 and model.token_layout.mask_bits == 16


def test_layouts_written_before_mask_codebooks_still_load() -> None:
    old = {
        "primary_vocab": 8,
        "primary_grid": [2, 2],
        "secondary_vocab": 8,
        "secondary_grid": [1, 1],
        "mask_bits": 16,
    }
    overrides = layout_overrides(old)
    assert overrides["mask_codebook_size"] == 0 and overrides["mask_bits"] == 16
    prior = TransformerPrior(TransformerPriorConfig(**overrides, model_mask=True))
    assert prior.config.mask_len == 4 and prior.config.mask_vocab == 16  # D'/b tokens of b bits


# -- priors ------------------------------------------------------------------------------------
PRIOR_SIZES = {
    TransformerPrior: dict(
        primary_layers=1,
        primary_heads=2,
        primary_dim=16,
        secondary_layers=1,
        secondary_heads=2,
        secondary_dim=32,
    ),
    MaskGITPrior: dict(layers=2, heads=2, dim=32),
}


def codebook_tokens(j: int, n: int = 64):
    """A tiny MVQVAE with a mask codebook of J masks and its tokens of ``n`` random images."""
    torch.manual_seed(0)
    model = create_tokenizer("mvqvae_fmnist_s4_k16", **TINY, num_hypotheses=j, **BOOK)
    t = model.encode(images(n))
    return model, {"primary": t.indices, "secondary": t.secondary, "mask": t.mask}


@pytest.mark.parametrize("cls", [TransformerPrior, MaskGITPrior])
def test_priors_model_the_index_as_one_token_and_sample_it(cls) -> None:
    model, batch = codebook_tokens(32)  # log2 J = 5 bits: not one 4-bit token, one of vocab 32
    config_cls = TransformerPriorConfig if cls is TransformerPrior else MaskGITPriorConfig
    config = config_cls(**layout_overrides(model.token_layout), model_mask=True, **PRIOR_SIZES[cls])
    assert config.mask_len == 1 and config.mask_vocab == 32 and config.num_tokens == 4 + 1 + 1
    torch.manual_seed(0)
    prior = cls(config)
    opt = torch.optim.Adam(prior.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        torch.manual_seed(1)  # MaskGIT: the same positions hidden every step
        loss, logs = prior.loss(batch)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first and "nll_mask" in logs
    g = torch.Generator().manual_seed(0)
    if cls is TransformerPrior:
        drawn = sample_autoregressive(prior, 40, generator=g)
    else:
        drawn = sample_maskgit(prior, 40, steps=config.num_tokens, generator=g)
    assert drawn["mask"].dtype == torch.uint8 and drawn["mask"].shape == (40, 1)
    index = mask_bytes_to_index(drawn["mask"], 5)
    assert int(index.min()) >= 0 and int(index.max()) < 32
    images_ = model.eval().decode(Tokens(drawn["primary"], drawn["secondary"], drawn["mask"]))
    assert images_.shape == (40, 1, 28, 28)


class Images(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        self.x = images(n, seed)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], i % 10


def test_token_directory_and_cli_prior_carry_the_index(tmp_path: Path, capsys) -> None:
    from mvq.core.token_files import (
        TokenDataset,
        read_token_meta,
        tokenizer_identity,
    )
    from mvq.priors import load_prior
    from mvq.sampling.pipeline import sample_images
    from mvq.tokenizers.apply import encode_dataset

    torch.manual_seed(0)
    model = create_tokenizer("mvqvae_fmnist_s4_k16", **TINY, num_hypotheses=16, **BOOK)
    model.save_pretrained(tmp_path / "tok")
    identity = tokenizer_identity(model, tmp_path / "tok")
    splits = {"train": Images(48, 0), "val": Images(16, 1)}
    encode_dataset(model, splits, tmp_path / "tokens", identity, {"name": "random"}, 10)
    meta = read_token_meta(tmp_path / "tokens")
    assert meta["layout"]["mask_codebook_size"] == 16 and meta["layout"]["mask_bits"] == 4
    assert TokenDataset(tmp_path / "tokens", "train")[0]["mask"].shape == (1,)

    sizes = PRIOR_SIZES[TransformerPrior] | {"model_mask": True}
    cfg = {"model": "transformer_1p1", "model_config": sizes, "train": {"batch_size": 16}}
    (tmp_path / "prior.yaml").write_text(yaml.safe_dump(cfg))
    argv = [
        "train-prior",
        "--tokens",
        str(tmp_path / "tokens"),
        "--config",
        str(tmp_path / "prior.yaml"),
        "--out",
        str(tmp_path / "prior"),
        "--max-steps",
        "3",
    ]
    assert main(argv) == 0
    prior = load_prior(tmp_path / "prior" / "model")
    assert prior.config.mask_codebook_size == 16 and prior.config.mask_len == 1
    tokenizer = load_tokenizer(tmp_path / "tok")
    images_, drawn = sample_images(tokenizer, prior, 6, seed=2)
    assert drawn.mask.shape == (6, 1) and int(mask_bytes_to_index(drawn.mask, 4).max()) < 16
    assert torch.allclose(images_, tokenizer.decode(drawn).clamp(-1, 1))


# -- bad options -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(mask_source="fixed"), "unknown mask_source 'fixed'; choose one of random, codebook"),
        (
            dict(mask_source="codebook", mask_codebook_seed=0, num_hypotheses=24),
            "J a power of 2 >= 2 .* got J=24: pick e.g. 16",
        ),
        (dict(mask_source="codebook"), "needs mask_codebook_seed"),
        (dict(mask_source="codebook", mask_codebook_seed=-1), "needs mask_codebook_seed"),
        (dict(mask_codebook_seed=3), "only used with mask_source='codebook'"),
    ],
)
def test_bad_options_are_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        MaskedVectorQuantizer(4, 8, secondary_dim=8, **{"num_hypotheses": 16, **kwargs})
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=message):
        create_tokenizer("mvqvae_fmnist_s4_k16", **TINY, **{"num_hypotheses": 16, **kwargs})


def test_bad_layouts_and_quantizers_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="mask_codebook_size J=24 needs J a power of 2"):
        TokenLayout(8, (2, 2), 8, mask_bits=5, mask_codebook_size=24)
    with pytest.raises(ValueError, match="mask_bits = log2 J"):
        TokenLayout(8, (2, 2), 8, mask_bits=16, mask_codebook_size=256)
    fsq = create_tokenizer("mfsqvae_fmnist_s4_k16", **TINY).quantizer.primary
    with pytest.raises(ValueError, match="the primary quantizer has 8 codes but codebook_size=16"):
        MaskedVectorQuantizer(16, 16, quantizers=(fsq, fsq))
    with pytest.raises(ValueError, match="leave them out when passing quantizers"):
        MaskedVectorQuantizer(16, 8, quantizers=(fsq, fsq), vq_kwargs={"beta": 0.5})
