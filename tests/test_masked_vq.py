"""Numerical contracts of MaskedVectorQuantizer and MH-Dropout."""

import pytest
import torch
from torch import nn

from mvq.quantizers import MaskedVectorQuantizer, Tokens
from mvq.quantizers.masked_vq import pack_masks, unpack_masks, wta_all_in_graph


def make_mvq(**kw) -> MaskedVectorQuantizer:
    opts = dict(dim=4, codebook_size=8, secondary_dim=6, grid=(2, 2), num_hypotheses=16)
    return MaskedVectorQuantizer(**(opts | kw))


def inputs(b: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(b, 4, 2, 2, generator=g, requires_grad=True)
    y2 = torch.randn(b, 6, 1, 1, generator=g, requires_grad=True)
    return y, y2


def test_shapes_and_tokens() -> None:
    torch.manual_seed(0)
    out = make_mvq()(*inputs())
    assert out.quantized.shape == (3, 4, 2, 2)
    assert out.tokens.indices.shape == (3, 2, 2)
    assert out.tokens.secondary.shape == (3, 1, 1)
    assert out.tokens.mask.shape == (3, 1) and out.tokens.mask.dtype == torch.uint8


@pytest.mark.parametrize("mode", ["per_instance", "per_code", "shared"])
def test_winner_is_true_argmin_of_its_hypotheses(mode: str) -> None:
    torch.manual_seed(1)
    mvq = make_mvq(mask_mode=mode, num_hypotheses=32, search_chunk=7, codebook_size=2)
    y, y2 = inputs(5)
    torch.manual_seed(7)
    out = mvq(y, y2)
    torch.manual_seed(7)
    inverse = mvq.mask_groups(out.tokens.secondary)
    groups = 5 if inverse is None else int(inverse.max()) + 1
    masks = mvq.sample_masks(groups, 32, y.device)  # the same draw the forward made
    masks = masks if inverse is None else masks[inverse]  # (B, J, D')
    e = mvq.primary.indices_to_codes(out.tokens.indices).movedim(-1, 1)
    code = mvq.secondary.indices_to_codes(out.tokens.secondary).movedim(-1, 1)
    with torch.no_grad():
        hyps = e[:, None] + mvq.f((code[:, None] * masks[..., None, None]).flatten(0, 1)).view(
            5, 32, 4, 2, 2
        )
        err = (hyps - y[:, None]).pow(2).flatten(2).mean(-1)  # (B, J)
    chosen = unpack_masks(out.tokens.mask, 6)
    chosen_err = torch.stack([err[b][(masks[b] == chosen[b]).all(1)].min() for b in range(5)])
    assert torch.allclose(chosen_err, err.min(1).values, atol=1e-6)
    if mode != "per_instance":  # with 2 secondary codes, instances share candidate sets
        assert groups <= 2


@pytest.mark.parametrize("mode", ["per_instance", "per_code"])
def test_chunked_search_matches_all_in_graph_reference(mode: str) -> None:
    """Same winners, loss, outputs and gradients as keeping all J hypotheses in the graph."""
    results = []
    for search in ("chunked", "all_in_graph"):
        torch.manual_seed(2)
        mvq = make_mvq(search=search, num_hypotheses=24, search_chunk=10, mask_mode=mode)
        y, y2 = inputs(4)
        torch.manual_seed(11)
        out = mvq(y, y2)
        (out.loss + out.quantized.pow(2).sum()).backward()
        grads = [p.grad.clone() for p in mvq.f.parameters()] + [y.grad, y2.grad]
        results.append((out, grads))
    (a, ga), (b, gb) = results
    assert torch.equal(a.tokens.mask, b.tokens.mask)
    assert torch.allclose(a.quantized, b.quantized, atol=1e-6)
    assert torch.allclose(a.loss, b.loss, atol=1e-6)
    for x, z in zip(ga, gb, strict=True):
        assert torch.allclose(x, z, atol=1e-5)


def test_only_the_winner_gets_gradient_in_the_reference() -> None:
    torch.manual_seed(3)
    f = nn.Sequential(nn.Flatten(), nn.Linear(6, 16), nn.Unflatten(1, (4, 2, 2)))
    code = torch.randn(2, 6, 1, 1)
    e, y = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2)
    masks = torch.rand(2, 8, 6) < 0.5
    outs = []

    def keep(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        out.retain_grad()
        outs.append(out)

    f.register_forward_hook(keep)
    _, loss, winner, _ = wta_all_in_graph(f, e, code, y, masks)
    loss.backward()
    g = outs[0].grad.view(2, 8, -1).abs().sum(-1)  # (B, J)
    for b in range(2):
        assert g[b, winner[b]] > 0
        assert (g[b].nonzero().flatten() == winner[b]).all()


def test_masks_are_bernoulli_half_and_independent() -> None:
    torch.manual_seed(4)
    mvq = make_mvq(secondary_dim=32, num_hypotheses=64)
    m = mvq.sample_masks(64, 64, torch.device("cpu")).float()  # (G, J, D')
    assert abs(m.mean().item() - 0.5) < 0.01
    flat = m.reshape(-1, 32)
    corr = torch.corrcoef(flat.T) - torch.eye(32)
    assert corr.abs().max() < 0.08  # channels independent (5 sigma for 4096 draws)
    assert not torch.equal(m[0], m[1])  # per instance
    shared = make_mvq(mask_mode="shared").sample_masks(8, 16, torch.device("cpu"))
    assert all(torch.equal(shared[0], shared[i]) for i in range(8))


def test_decode_from_indices_and_mask_equals_forward() -> None:
    torch.manual_seed(5)
    mvq = make_mvq(normalize_secondary=True, in_channels=5, secondary_in_channels=3).eval()
    y = torch.randn(4, 5, 2, 2)
    y2 = torch.randn(4, 3, 1, 1)
    out = mvq(y, y2)
    assert torch.allclose(mvq.decode(out.tokens), out.quantized, atol=1e-5)


def test_generation_draws_a_random_mask_reproducibly() -> None:
    mvq = make_mvq(secondary_dim=16).eval()
    tokens = Tokens(torch.zeros(6, 2, 2, dtype=torch.long), torch.zeros(6, 1, 1, dtype=torch.long))
    a = mvq.decode(tokens, generator=torch.Generator().manual_seed(0))
    b = mvq.decode(tokens, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])  # same codes, different masks -> different outputs


def test_mask_packing_round_trip_up_to_256_bits() -> None:
    for d in (1, 6, 8, 16, 33, 256):
        m = torch.rand(7, d) < 0.5
        packed = pack_masks(m)
        assert packed.shape == (7, (d + 7) // 8) and packed.dtype == torch.uint8
        assert torch.equal(unpack_masks(packed, d), m)
    assert pack_masks(torch.tensor([[True, False, True] + [False] * 5])).item() == 5


def test_mh_dropout_lowers_error_below_a_random_mask() -> None:
    torch.manual_seed(6)
    mvq = make_mvq(secondary_dim=8, num_hypotheses=128)
    y, y2 = torch.randn(16, 4, 2, 2), torch.randn(16, 8, 1, 1)
    logs = mvq(y, y2).logs
    assert logs["mhd"] < logs["mhd_mean_hypothesis"]


def test_bad_options_and_inputs_raise_one_clear_error() -> None:
    with pytest.raises(ValueError, match="positive integer"):
        make_mvq(num_hypotheses=0)
    with pytest.raises(ValueError, match=r"exceeds the 2\^D'=64"):
        make_mvq(num_hypotheses=65)
    with pytest.raises(ValueError, match="BatchNorm"):
        make_mvq(f=nn.Sequential(nn.Conv2d(6, 4, 1), nn.BatchNorm2d(4)))
    with pytest.raises(ValueError, match="mask_prob"):
        make_mvq(mask_prob=1.0)
    with pytest.raises(ValueError, match="unknown mask_mode 'per_batch'"):
        make_mvq(mask_mode="per_batch")
    mvq = make_mvq()
    y, y2 = inputs()
    with pytest.raises(ValueError, match="channel-first"):
        mvq(y[0, 0], y2)
    with pytest.raises(ValueError, match="secondary input has 5 channels"):
        mvq(y, torch.randn(3, 5, 1, 1))
    with pytest.raises(ValueError, match="NaN"):
        mvq(y.detach() * float("nan"), y2)
    with pytest.raises(ValueError, match="uint8 of shape"):
        mvq.decode(
            Tokens(torch.zeros(1, 2, 2).long(), torch.zeros(1, 1, 1).long(), torch.zeros(1, 3))
        )
