"""The token contract: one layout from tokenizer to prior, in memory and on disk."""

import json
from dataclasses import asdict, fields

import pytest

from mvq.priors import PriorLayout, create_prior
from mvq.tokenizers import create_tokenizer
from mvq.tokens import LAYOUT_FIELDS, TokenLayout, layout_overrides


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
