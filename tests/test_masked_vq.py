"""Numerical contracts of MaskedVectorQuantizer and MH-Dropout."""

import os
import shutil

import pytest
import torch
from torch import nn

from mvq.core.tokens import Tokens, pack_masks, unpack_masks
from mvq.quantizers import MaskedVectorQuantizer
from mvq.quantizers.masked_vq import wta_all_in_graph
from mvq.quantizers.mh_search import affine_ends
from mvq.tokenizers import create_tokenizer


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
def test_chunked_search_matches_all_in_graph_reference(mode: str, device) -> None:
    """Same winners, loss, outputs and gradients as keeping all J hypotheses in the graph."""
    results = []
    for search in ("chunked", "all_in_graph"):
        torch.manual_seed(2)
        mvq = make_mvq(search=search, num_hypotheses=24, search_chunk=10, mask_mode=mode)
        mvq.to(device)
        y, y2 = (t.detach().to(device).requires_grad_() for t in inputs(4))
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


def test_decode_from_indices_and_mask_equals_forward(device) -> None:
    torch.manual_seed(5)
    mvq = make_mvq(normalize_secondary=True, in_channels=5, secondary_in_channels=3).eval()
    mvq.to(device)
    y = torch.randn(4, 5, 2, 2).to(device)
    y2 = torch.randn(4, 3, 1, 1).to(device)
    torch.manual_seed(6)
    out = mvq(y, y2)
    assert out.tokens.mask.device == y.device
    assert torch.allclose(mvq.decode(out.tokens), out.quantized, atol=1e-5)
    torch.manual_seed(6)
    tokens = mvq.encode(y, y2)  # the same masks drawn: the same search, the same winners
    assert torch.equal(tokens.mask, out.tokens.mask)


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


def test_logged_errors_are_those_of_the_hypotheses() -> None:
    """``mhd`` is the winner's error and ``mhd_mean_hypothesis`` the mean over all J,
    both recomputed here from the same masks."""
    torch.manual_seed(6)
    mvq = make_mvq(secondary_dim=8, num_hypotheses=128)
    y, y2 = torch.randn(16, 4, 2, 2), torch.randn(16, 8, 1, 1)
    torch.manual_seed(8)
    out = mvq(y, y2)
    torch.manual_seed(8)
    masks = mvq.sample_masks(16, 128, y.device)  # (B, J, D')
    e = mvq.primary.indices_to_codes(out.tokens.indices).movedim(-1, 1)
    code = mvq.secondary.indices_to_codes(out.tokens.secondary).movedim(-1, 1)
    with torch.no_grad():
        hyps = e[:, None] + mvq.f((code[:, None] * masks[..., None, None]).flatten(0, 1)).view(
            16, 128, 4, 2, 2
        )
    err = (hyps - y[:, None]).pow(2).flatten(2).mean(-1)  # (B, J)
    torch.testing.assert_close(out.logs["mhd"], err.min(1).values.mean())
    torch.testing.assert_close(out.logs["mhd_mean_hypothesis"], err.mean())


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


# -- Table 3's f, the search MVQVAE trains with --------------------------------------------------
TOKENIZER_GRIDS = {"mvqvae_fmnist_s1_k16": 1, "mvqvae_fmnist_s4_k16": 2, "mvqvae_fmnist_s16_k16": 4}


def table3_mvq(name: str, seed: int = 0, **kw) -> MaskedVectorQuantizer:
    """The quantizer of a registered MVQVAE with narrow Table 3 networks and non-trivial
    norm affines and biases (a stand-in for trained weights)."""
    torch.manual_seed(seed)
    opts = dict(channels=16, res_channels=8, num_hypotheses=96, secondary_dim=8) | kw
    mvq = create_tokenizer(name, **opts).quantizer
    with torch.no_grad():
        for m in mvq.f.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.normal_(1.0, 0.5)
                m.bias.normal_(0.0, 0.5)
    return mvq


def run(mvq: MaskedVectorQuantizer, search: str, y, y2, seed: int = 0) -> tuple:
    """Forward + backward with ``search``; the masks come from the RNG seeded here."""
    mvq.search = search
    mvq.zero_grad()
    y, y2 = y.detach().requires_grad_(True), y2.detach().requires_grad_(True)
    torch.manual_seed(seed)
    out = mvq(y, y2)
    (out.loss + out.quantized.pow(2).sum()).backward()
    grads = [p.grad.clone() for p in mvq.f.parameters()] + [y.grad, y2.grad]
    return out, grads


def batch(grid: int, b: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 16, grid, grid, generator=g), torch.randn(b, 8, 1, 1, generator=g)


@pytest.mark.parametrize("name", list(TOKENIZER_GRIDS))
@pytest.mark.parametrize("mode", ["per_instance", "per_code", "shared"])
@pytest.mark.parametrize("search", ["chunked", "chunked_bf16"])
def test_table3_search_matches_all_in_graph(name: str, mode: str, search: str, device) -> None:
    """MVQVAE's real f through the search training uses: the reference's winners, loss,
    outputs and gradients (f's parameters and both inputs), for every mask mode and grid."""
    mvq = table3_mvq(name, mask_mode=mode, search_chunk=40).to(device)
    y, y2 = (t.to(device) for t in batch(TOKENIZER_GRIDS[name]))
    (a, ga), (b, gb) = (run(mvq, s, y, y2) for s in (search, "all_in_graph"))
    assert torch.equal(a.tokens.mask, b.tokens.mask)
    torch.testing.assert_close(a.quantized, b.quantized, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(a.loss, b.loss, atol=1e-6, rtol=1e-5)
    for x, z in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, z, atol=1e-5, rtol=1e-4)


NEEDS_COMPILER = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None,
    reason="torch.compile on the CPU needs a C++ compiler (install g++)",
)


@pytest.mark.parametrize(
    ("search", "compiled"),
    [
        ("chunked", False),
        ("chunked_bf16", False),
        pytest.param("chunked_bf16", True, marks=NEEDS_COMPILER),
    ],
)
def test_search_picks_the_exact_winner_over_many_seeds(search: str, compiled: bool, device) -> None:
    """At J = 2048 (the largest J of the paper) with D' = 16: the winner equals the argmin of
    the reference's errors computed on the CPU, over random weights and many draws; also with
    the first pass in bf16 products and through ``torch.compile``. On another device (CUDA) the
    search runs there: each winner is the CPU reference's, or a mask whose CPU error is within
    1e-6 relative of the CPU's best (fp32 sums in another order may swap such near-ties)."""
    cpu = torch.device("cpu")
    for seed in range(3):
        mvq = table3_mvq("mvqvae_fmnist_s4_k16", seed, secondary_dim=16, num_hypotheses=2048)
        mvq.search, mvq.compile_search = search, compiled
        e, y = torch.randn(2, 8, 16, 2, 2, generator=torch.Generator().manual_seed(seed))
        code = torch.randn(8, 16, 1, 1)
        masks = mvq.sample_masks(8, 2048, cpu)  # (B, J, D')
        with torch.no_grad():
            _, _, ref, _ = wta_all_in_graph(mvq.f, e, code, y, masks)
            err = mvq._exact_scores(e, code, y, masks)  # (B, J) the reference's arithmetic
        assert torch.equal(err.argmin(1), ref)
        args = (t.to(device) for t in (e, code, y, masks))
        winner = mvq.to(device).search_winner(*args)[0].cpu()
        if device.type == "cpu":
            assert torch.equal(winner, ref)
            continue
        picked, best = err.gather(1, winner[:, None]).squeeze(1), err.min(1).values
        assert (picked <= best * (1 + 1e-6)).all(), (winner, ref, picked - best)


def test_search_is_fp32_under_autocast() -> None:
    """Mixed-precision training must not lower the search's precision: same winners."""
    mvq = table3_mvq("mvqvae_fmnist_s4_k16", num_hypotheses=256)
    e, y = torch.randn(2, 16, 16, 2, 2, generator=torch.Generator().manual_seed(2))
    code, masks = torch.randn(16, 8, 1, 1), mvq.sample_masks(16, 256, y.device)
    winner, _ = mvq.search_winner(e, code, y, masks)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(mvq.search_winner(e, code.bfloat16(), y, masks)[0], winner)


def test_an_unreliable_first_pass_still_gives_the_exact_winner() -> None:
    """First-pass scores off by more than the gaps between masks: instances whose runner-up
    is not clear of the best are scored exactly, so the winner stays exact."""
    mvq = table3_mvq("mvqvae_fmnist_s4_k16", num_hypotheses=256)
    e, y = torch.randn(2, 16, 16, 2, 2, generator=torch.Generator().manual_seed(1))
    code, masks = torch.randn(16, 8, 1, 1), mvq.sample_masks(16, 256, y.device)
    exact = mvq._exact_scores(e, code, y, masks)  # (B, J)
    noise = 0.3 * (exact.amax(1, keepdim=True) - exact.amin(1, keepdim=True))
    noisy = exact + noise * (2 * torch.rand(exact.shape) - 1)
    assert (noisy.topk(mvq.rescore, largest=False).indices != exact.argmin(1)[:, None]).all(1).any()
    mvq._trunk_scores = lambda *args: (noisy, noisy.mean())  # stands in for a coarse pass
    winner, _ = mvq.search_winner(e, code, y, masks)
    assert torch.equal(winner, exact.argmin(1))


def test_unsure_instances_escalate_to_more_candidates_before_all_j() -> None:
    """A first pass off by a little more than the gaps between the best masks: instances whose
    best 8 are not clear are scored on their best 32 (then 128, ...), not on all J at once;
    the winners stay exact."""
    mvq = table3_mvq("mvqvae_fmnist_s4_k16", num_hypotheses=512, secondary_dim=16)
    e, y = torch.randn(2, 16, 16, 2, 2, generator=torch.Generator().manual_seed(4))
    code, masks = torch.randn(16, 16, 1, 1), mvq.sample_masks(16, 512, y.device)
    exact = mvq._exact_scores(e, code, y, masks)  # (B, J)
    gap = exact.sort(1).values[:, 1:12].diff(dim=1).abs().mean()
    noisy = exact + 3 * gap * torch.rand(exact.shape, generator=torch.Generator().manual_seed(5))
    mvq._trunk_scores = lambda *args: (noisy, noisy.mean())
    rows, score = [], mvq._exact_scores

    def counted(e_, c_, y_, m_, *rest):  # (instances, masks) scored exactly, per call
        rows.append(m_.shape[:2])
        return score(e_, c_, y_, m_, *rest)

    mvq._exact_scores = counted
    winner, _ = mvq.search_winner(e, code, y, masks)
    assert torch.equal(winner, exact.argmin(1))
    assert [k for _, k in rows][:2] == [8, 32] and rows[1][0] < 16  # only the unsure go on
    assert all(k < 512 for _, k in rows)  # nobody needed all J


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=NEEDS_COMPILER)])
def test_search_trunk_in_bf16_products_and_compiled_tracks_f(dtype, compiled) -> None:
    """The first pass's f (Table 3), eager or compiled, with fp32 or bf16 products: fp32 out,
    close to f (bf16: to about 1% of its range), and it sees weights changed after it ran."""
    f = table3_mvq("mvqvae_fmnist_s4_k16", secondary_dim=16).f
    c = torch.randn(64, 16, 1, 1)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    with torch.no_grad():
        for _ in range(2):
            ends = affine_ends(f, dtype, compiled=compiled)
            u = ends.trunk(c.flatten(1) @ ends.in_weight.t() + ends.in_bias)  # (N, P)
            out = u @ ends.out_weight.t() + ends.out_bias
            assert u.dtype == ends.dtype == torch.float32
            ref = f(c).flatten(1)
            torch.testing.assert_close(out, ref, atol=tol * ref.abs().max(), rtol=0)
            for p in f.parameters():
                p.mul_(1.1)  # the next trunk must see these weights, compiled or not


@pytest.mark.parametrize("grid", [1, 2, 4])
def test_affine_ends_reproduce_f(grid: int) -> None:
    """``out_weight @ trunk(in_weight @ c + in_bias) + out_bias`` is f(c), for Table 3's f and
    the default MLP f."""
    name = {v: k for k, v in TOKENIZER_GRIDS.items()}[grid]
    fs = [table3_mvq(name).f, make_mvq(secondary_dim=8, grid=(grid, grid)).f]
    c = torch.randn(5, 8, 1, 1)
    with torch.no_grad():
        for f in fs:
            ends = affine_ends(f)
            u = ends.trunk(c.flatten(1) @ ends.in_weight.t() + ends.in_bias)  # (N, P)
            out = u @ ends.out_weight.t() + ends.out_bias  # (N, D * g * g)
            torch.testing.assert_close(out, f(c).flatten(1), atol=1e-5, rtol=1e-5)


def _winners(mvq: MaskedVectorQuantizer, search: str, y, y2) -> torch.Tensor:
    mvq.search = search
    torch.manual_seed(3)
    with torch.no_grad():
        return mvq(y, y2).tokens.mask


def _optimizer_step(mvq: MaskedVectorQuantizer, y, y2) -> None:
    opt = torch.optim.Adam(mvq.f.parameters(), lr=0.5)
    mvq.search = "chunked"
    mvq(y, y2).loss.backward()
    opt.step()


def _load_other_weights(mvq: MaskedVectorQuantizer, y, y2) -> None:
    mvq.f.load_state_dict(table3_mvq("mvqvae_fmnist_s4_k16", seed=9).f.state_dict())


def _copy_in_place(mvq: MaskedVectorQuantizer, y, y2) -> None:
    with torch.no_grad():
        for p in mvq.f.parameters():
            p.copy_(torch.randn_like(p))


def _copy_into_data(mvq: MaskedVectorQuantizer, y, y2) -> None:
    for p in mvq.f.parameters():  # .data has its own version counter: a cache keyed on it misses
        p.data.copy_(torch.randn_like(p))


@pytest.mark.parametrize(
    "change", [_optimizer_step, _load_other_weights, _copy_in_place, _copy_into_data]
)
def test_search_sees_weight_updates(change) -> None:
    """After an optimizer step, ``load_state_dict`` or an in-place copy into f's weights the
    search picks the reference's winners for the new weights (no stale weights anywhere)."""
    mvq = table3_mvq("mvqvae_fmnist_s4_k16", num_hypotheses=64)
    y, y2 = batch(2, b=16)
    before = _winners(mvq, "chunked", y, y2)
    change(mvq, y, y2)
    after = _winners(mvq, "chunked", y, y2)
    assert not torch.equal(after, before)  # the change matters, so staleness would show
    assert torch.equal(after, _winners(mvq, "all_in_graph", y, y2))


def test_mh_dropout_options_travel_as_one_config() -> None:
    """``mh=MHDropoutConfig(...)`` and the same fields as keywords build the same quantizer;
    keywords replace fields of ``mh``; an unknown option is a TypeError naming it; MVQVAE's
    flat config fields become the quantizer's ``mh`` unchanged."""
    from mvq.quantizers import MHDropoutConfig
    from mvq.tokenizers.mvqvae import MVQVAEConfig

    mh = MHDropoutConfig(num_hypotheses=16, mask_mode="shared", search="all_in_graph")
    a = MaskedVectorQuantizer(4, 8, mh=mh)
    b = MaskedVectorQuantizer(4, 8, num_hypotheses=16, mask_mode="shared", search="all_in_graph")
    assert a.mh == b.mh == mh and (a.num_hypotheses, a.mask_mode) == (16, "shared")
    c = MaskedVectorQuantizer(4, 8, mh=mh, num_hypotheses=8)
    assert c.mh == MHDropoutConfig(num_hypotheses=8, mask_mode="shared", search="all_in_graph")
    with pytest.raises(TypeError, match="num_hypothesis"):
        MaskedVectorQuantizer(4, 8, num_hypothesis=16)
    cfg = MVQVAEConfig(num_hypotheses=64, mask_prob=0.25, compile_search=True)
    assert cfg.mh_dropout == MHDropoutConfig(num_hypotheses=64, mask_prob=0.25, compile_search=True)
    model = create_tokenizer("mvqvae_fmnist_s1_k16", num_hypotheses=8, mask_mode="per_code")
    assert model.quantizer.mh == model.config.mh_dropout
