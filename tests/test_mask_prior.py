"""Priors that model MVQ's mask bits as extra tokens (``model_mask=True``): the transformer
prior and MaskGIT."""

import json

import pytest
import torch
from test_pipeline import make_tokens, prior_config

from mvq.cli import main
from mvq.core.tokens import mask_to_tokens, pack_masks, tokens_to_mask, unpack_masks
from mvq.priors import (
    MaskGITPrior,
    MaskGITPriorConfig,
    PixelCNNPriorConfig,
    TransformerPrior,
    TransformerPriorConfig,
    create_prior,
)
from mvq.sampling import sample_autoregressive, sample_autoregressive_naive, sample_maskgit

SIZES = dict(
    primary_layers=1,
    primary_heads=2,
    primary_dim=16,
    secondary_layers=2,
    secondary_heads=2,
    secondary_dim=32,
)


def mask_prior(mask_bits: int = 16, token_bits: int = 4, **kw) -> TransformerPrior:
    layout = dict(
        primary_vocab=8,
        primary_grid=(2, 2),
        secondary_vocab=8,
        mask_bits=mask_bits,
        model_mask=True,
        mask_token_bits=token_bits,
    )
    return TransformerPrior(TransformerPriorConfig(**{**layout, **SIZES, **kw}))


def maskgit_mask_prior(mask_bits: int = 16, token_bits: int = 4) -> MaskGITPrior:
    layout = dict(
        primary_vocab=8,
        primary_grid=(2, 2),
        secondary_vocab=8,
        mask_bits=mask_bits,
        model_mask=True,
        mask_token_bits=token_bits,
    )
    return MaskGITPrior(MaskGITPriorConfig(**layout, layers=2, heads=2, dim=32))


def random_batch(
    prior: TransformerPrior | MaskGITPrior, n: int = 6, seed: int = 0
) -> dict[str, torch.Tensor]:
    c, g = prior.config, torch.Generator().manual_seed(seed)
    bits = torch.rand(n, c.mask_bits, generator=g) < 0.5
    return {
        "primary": torch.randint(0, c.primary_vocab, (n, *c.primary_grid), generator=g),
        "secondary": torch.randint(0, c.secondary_vocab, (n, 1, 1), generator=g),
        "mask": pack_masks(bits),
    }


@pytest.mark.parametrize("mask_bits,token_bits", [(16, 4), (10, 4), (16, 3), (7, 1), (16, 8)])
def test_mask_tokens_round_trip(mask_bits: int, token_bits: int) -> None:
    bits = torch.rand(50, mask_bits, generator=torch.Generator().manual_seed(1)) < 0.5
    tokens = mask_to_tokens(pack_masks(bits), mask_bits, token_bits)
    assert tokens.shape == (50, -(-mask_bits // token_bits))
    assert int(tokens.max()) < 2**token_bits
    assert torch.equal(unpack_masks(tokens_to_mask(tokens, mask_bits, token_bits), mask_bits), bits)


def test_mask_token_holds_consecutive_bits_lsb_first() -> None:
    bits = torch.zeros(1, 16, dtype=torch.bool)
    bits[0, [0, 2, 5, 15]] = True  # token 0: bits 0, 2 -> 5; token 1: bit 1 -> 2; token 3: 8
    assert mask_to_tokens(pack_masks(bits), 16, 4).tolist() == [[5, 2, 0, 8]]


def test_logit_shapes_and_loss_logs() -> None:
    torch.manual_seed(0)
    prior = mask_prior().eval()
    batch = random_batch(prior)
    logits_p, logits_s, logits_m = prior(batch)
    assert logits_p.shape == (6, 4, 8) and logits_s.shape == (6, 1, 8)
    assert logits_m.shape == (6, 4, 16)  # 16 bits as 4 tokens of 4 bits
    loss, logs = prior.loss(batch)
    assert torch.isclose(loss, logs["nll"])
    per_image = (4 * logs["nll_primary"] + logs["nll_secondary"] + 4 * logs["nll_mask"]) / 0.6931
    assert torch.isclose(logs["bits_per_image"], per_image, rtol=1e-4)
    assert torch.isclose(logs["mask_bits_per_image"], 4 * logs["nll_mask"] / 0.693147, rtol=1e-4)


def test_mask_logits_depend_on_exactly_the_earlier_tokens() -> None:
    torch.manual_seed(0)
    prior = mask_prior().eval()
    batch = random_batch(prior, 1)
    c = prior.config
    base = prior(batch)[2]  # (1, M, 16)
    for k in range(c.mask_len):
        tokens = mask_to_tokens(batch["mask"], c.mask_bits, c.mask_token_bits)
        tokens[0, k] = (tokens[0, k] + 1) % 16
        changed = prior({**batch, "mask": tokens_to_mask(tokens, c.mask_bits, 4)})[2]
        same = (changed - base).abs().amax(-1)[0] < 1e-6  # (M,)
        assert same[: k + 1].all() and not same[k + 1 :].any()  # causal over the mask tokens
    other = {**batch, "secondary": (batch["secondary"] + 1) % 8}
    assert not torch.allclose(prior(other)[2], base)  # the mask is conditioned on the codes


def test_cached_sampler_equals_naive_and_returns_packed_masks() -> None:
    torch.manual_seed(0)
    prior = mask_prior(mask_bits=10)
    seeded = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    fast = sample_autoregressive(prior, 5, generator=seeded(), batch_size=1)
    naive = sample_autoregressive_naive(prior, 5, generator=seeded())
    assert fast["mask"].dtype == torch.uint8 and fast["mask"].shape == (5, 2)
    assert sorted(fast) == ["mask", "primary", "secondary"]
    assert all(torch.equal(fast[k], naive[k]) for k in fast)


def train_pairing(prior, steps: int) -> tuple[torch.Tensor, dict]:
    """Train ``prior`` on tokens where each secondary code comes with one fixed mask; returns
    the code-to-mask table ``(K2, D')`` and the last step's logs."""
    table = torch.rand(8, 16, generator=torch.Generator().manual_seed(3)) < 0.5  # (K2, D')
    opt = torch.optim.Adam(prior.parameters(), lr=3e-3)
    for step in range(steps):
        batch = random_batch(prior, 64, seed=step)
        batch["mask"] = pack_masks(table[batch["secondary"].view(-1)])
        loss, logs = prior.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return table, logs


def test_prior_learns_a_mask_that_depends_on_the_secondary_code() -> None:
    """Each secondary code comes with one fixed mask: the prior must learn the pairing."""
    torch.manual_seed(0)
    prior = mask_prior()
    table, logs = train_pairing(prior, 150)
    assert logs["nll_mask"] < 0.1  # uniform would be log(16) = 2.77 nats
    drawn = sample_autoregressive(prior, 32, temperature=1e-3, generator=torch.Generator())
    expected = pack_masks(table[drawn["secondary"].view(-1)])
    assert torch.equal(drawn["mask"], expected)


def test_bad_configs_and_batches() -> None:
    with pytest.raises(ValueError, match="no MVQ mask"):
        TransformerPriorConfig(model_mask=True, mask_bits=0)
    with pytest.raises(ValueError, match="does not model the MVQ mask"):
        create_prior("pixelcnn_small", mask_bits=16, model_mask=True)
    assert not PixelCNNPriorConfig(mask_bits=16).model_mask  # the mask is ignored by default
    prior = mask_prior()
    batch = random_batch(prior)
    with pytest.raises(ValueError, match="has no 'mask'"):
        prior.loss({k: v for k, v in batch.items() if k != "mask"})
    with pytest.raises(ValueError, match="packed mask bytes of shape"):
        prior.loss({**batch, "mask": batch["mask"][:, :1]})


def test_maskgit_mask_stream_shapes_and_loss_logs() -> None:
    torch.manual_seed(0)
    prior = maskgit_mask_prior(mask_bits=10).eval()  # 10 bits: 3 tokens of 4 bits
    batch = random_batch(prior)
    assert prior.config.num_tokens == 4 + 1 + 3 and prior.mask_stream_mask_id == 16
    tokens = mask_to_tokens(batch["mask"], 10, 4)
    logits_p, logits_s, logits_m = prior(
        batch["primary"].view(6, -1), batch["secondary"].view(6, -1), None, tokens
    )
    assert (
        logits_p.shape == (6, 4, 8) and logits_s.shape == (6, 1, 8) and logits_m.shape == (6, 3, 16)
    )
    torch.manual_seed(1)
    loss, logs = prior.loss(batch)
    assert {"nll_primary", "nll_secondary", "nll_mask"} <= set(logs)
    masked = torch.manual_seed(1) and prior.random_mask(6, torch.device("cpu"))  # the loss's masks
    parts = masked.float().split([4, 1, 3], 1)
    per_stream = sum(
        logs[f"nll_{n}"] * p.sum()
        for n, p in zip(("primary", "secondary", "mask"), parts, strict=True)
    )
    assert torch.isclose(loss, per_stream / masked.sum(), rtol=1e-5)
    other = prior(
        batch["primary"].view(6, -1), batch["secondary"].view(6, -1), None, (tokens + 1) % 16
    )
    assert not torch.allclose(other[0], logits_p)  # the codes see the mask tokens (bidirectional)


def test_maskgit_learns_the_mask_of_each_secondary_code_and_samples_it() -> None:
    """Each secondary code comes with one fixed mask: MaskGIT must learn the pairing, in
    whichever order its decoding fixes the positions."""
    torch.manual_seed(0)
    prior = maskgit_mask_prior()
    table, _ = train_pairing(prior, 300)
    # one token per step: tokens drawn in the same step are independent given the rest (MaskGIT's
    # parallel decoding), so only a fully sequential decode must reproduce the pairing exactly
    steps = prior.config.num_tokens
    drawn = sample_maskgit(
        prior.eval(), 32, steps=steps, temperature=1e-3, generator=torch.Generator()
    )
    assert sorted(drawn) == ["mask", "primary", "secondary"]
    assert drawn["mask"].dtype == torch.uint8 and drawn["mask"].shape == (32, 2)
    assert torch.equal(drawn["mask"], pack_masks(table[drawn["secondary"].view(-1)]))


def train_mask_prior(tmp_path, steps: int, name: str = "transformer_1p1"):
    """An MVQVAE's tokenizer folder, its tokens and a mask-aware prior trained ``steps`` steps
    with ``mvq train-prior`` (returns the tokenizer folder and the prior's run folder)."""
    tok, tokens = make_tokens(tmp_path, "mvqvae")
    run = tmp_path / "prior"
    cfg = prior_config(tmp_path, name, model_mask=True)
    argv = [
        "train-prior",
        "--tokens",
        str(tokens),
        "--config",
        str(cfg),
        "--out",
        str(run),
        "--max-steps",
        str(steps),
    ]
    assert main(argv) == 0
    return tok, run, cfg


@pytest.mark.parametrize("name", ["transformer_1p1", "maskgit_small"])
def test_train_prior_with_mask_and_sample_uses_it(tmp_path, capsys, name) -> None:
    from mvq.priors import load_prior
    from mvq.sampling.pipeline import sample_images
    from mvq.tokenizers import load_tokenizer

    tok, run, cfg = train_mask_prior(tmp_path, steps=4, name=name)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 4 and "bits_per_image" in summary
    prior = load_prior(run / "model")
    assert prior.config.model_mask and prior.config.mask_bits == 16 and prior.config.mask_len == 4
    tokenizer = load_tokenizer(tok)
    images, drawn = sample_images(tokenizer, prior, 6, seed=2)
    assert drawn.mask is not None and drawn.mask.shape == (6, 2)
    assert torch.allclose(images, tokenizer.decode(drawn).clamp(-1, 1))  # the sampled mask decodes

    vq_tok, vq_tokens = make_tokens(tmp_path, "vqvae2")
    argv = [
        "train-prior",
        "--tokens",
        str(vq_tokens),
        "--config",
        str(cfg),
        "--out",
        str(tmp_path / "vq_prior"),
        "--max-steps",
        "2",
    ]
    assert main(argv) == 2
    assert "no MVQ mask" in capsys.readouterr().err


def test_eval_prior_nll_of_a_mask_prior(tmp_path, capsys) -> None:
    """``mvq eval --prior``'s NLL feeds a mask-aware prior the tokens' masks (packed uint8):
    it equals the prior's own loss on the same tokens."""
    from mvq.eval.forms import encode_codes, prior_nll
    from mvq.priors import load_prior
    from mvq.tokenizers import load_tokenizer

    tok, run, _ = train_mask_prior(tmp_path, steps=2)
    tokenizer, prior = load_tokenizer(tok), load_prior(run / "model")
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    codes = encode_codes(tokenizer, images, 4, seed=0)
    assert codes["mask"].dtype == torch.uint8 and codes["mask"].shape == (6, 2)
    labels = torch.zeros(6, dtype=torch.long)
    got = prior_nll(prior, codes, labels, batch_size=6)
    batch = {k: v if k == "mask" else v.long() for k, v in codes.items()} | {"label": labels}
    _, logs = prior.eval().loss(batch)
    assert got["prior_nll_nats_per_token"] == pytest.approx(float(logs["nll"]), rel=1e-5)
