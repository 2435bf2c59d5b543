"""The token contract: one layout from tokenizer to prior, in memory and on disk."""

import json
from dataclasses import asdict, fields

import pytest
import torch

from mvq.core.tokens import LAYOUT_FIELDS, TokenLayout, Tokens, layout_overrides
from mvq.priors import PriorLayout, create_prior
from mvq.tokenizers import create_tokenizer


def test_a_prior_layout_is_the_tokenizers_layout_plus_its_own_fields() -> None:
    tokenizer = create_tokenizer("mvqvae_fmnist_s4_k16", channels=16, res_channels=8)
    layout = tokenizer.token_layout
    on_disk = json.loads(json.dumps(asdict(layout)))  # as meta.json / a token file store it
    assert layout_overrides(on_disk) == layout_overrides(layout)
    prior = create_prior("transformer_4p1", **layout_overrides(on_disk))
    assert isinstance(prior.config, TokenLayout)
    assert {n: getattr(prior.config, n) for n in LAYOUT_FIELDS} == asdict(layout)
    assert prior.config.num_tokens == layout.num_tokens == 4 + 1
    assert [f.name for f in fields(TokenLayout)] == list(LAYOUT_FIELDS)
    assert issubclass(PriorLayout, TokenLayout)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(primary_vocab=0, primary_grid=(2, 2), secondary_vocab=8), "vocabularies"),
        (dict(primary_vocab=8, primary_grid=(2,), secondary_vocab=8), "primary_grid"),
        (dict(primary_vocab=8, primary_grid=(2, 2), secondary_vocab=8, mask_bits=-1), "mask_bits"),
    ],
)
def test_a_bad_layout_is_one_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TokenLayout(**kwargs)


def test_a_model_mask_needs_mask_bits() -> None:
    with pytest.raises(ValueError, match="model_mask=True"):
        PriorLayout(model_mask=True)


def test_tokens_and_the_prior_batch_convert_both_ways() -> None:
    """``Tokens.to_batch`` / ``from_batch``: the one conversion to the prior's dict form."""
    t = Tokens(torch.randint(8, (3, 2, 2)), torch.randint(8, (3, 1, 1)), torch.zeros(3, 2).byte())
    batch = t.to_batch()
    assert list(batch) == ["primary", "secondary", "mask"]
    back = Tokens.from_batch(batch | {"label": torch.zeros(3)})
    pairs = zip(vars(t).values(), vars(back).values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert list(Tokens(t.indices).to_batch()) == ["primary"]
    joined = Tokens.cat([t[:1], t[1:]])
    assert torch.equal(joined.indices, t.indices) and torch.equal(joined.mask, t.mask)
    assert Tokens.cat([Tokens(t.indices)]).secondary is None
