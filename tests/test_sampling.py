"""Contracts of the samplers: filters, MaskGIT schedules, shapes, seeds, conditioning, errors."""

from __future__ import annotations

import math

import pytest
import torch

from mvq.priors import (
    MaskGITPrior,
    MaskGITPriorConfig,
    PixelCNNPrior,
    PixelCNNPriorConfig,
    TransformerPrior,
    TransformerPriorConfig,
)
from mvq.sampling import (
    SCHEDULES,
    filter_logits,
    mask_schedule,
    num_masked,
    sample_autoregressive,
    sample_autoregressive_naive,
    sample_maskgit,
    sample_pixelcnn,
)

K1, K2 = 8, 6
LAYOUT = dict(primary_vocab=K1, primary_grid=(2, 2), secondary_vocab=K2, secondary_grid=(1, 1))


def make_prior(kind: str, **kw):
    if kind == "transformer":
        sizes = dict(primary_layers=2, primary_heads=2, primary_dim=32)
        sizes |= dict(secondary_layers=2, secondary_heads=2, secondary_dim=32)
        return TransformerPrior(TransformerPriorConfig(**{**LAYOUT, **sizes, **kw}))
    if kind == "pixelcnn":
        sizes = dict(dim=16, layers=2, kernel_size=3, head_dim=32)
        return PixelCNNPrior(PixelCNNPriorConfig(**{**LAYOUT, **sizes, **kw}))
    return MaskGITPrior(MaskGITPriorConfig(**{**LAYOUT, "layers": 2, "heads": 2, "dim": 32, **kw}))


SAMPLERS = {
    "transformer": sample_autoregressive,
    "pixelcnn": sample_pixelcnn,
    "maskgit": sample_maskgit,
}
KINDS = list(SAMPLERS)


def sample(kind: str, prior, n: int, seed: int | None = 0, **kw):
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    if kind == "maskgit":
        kw.setdefault("steps", 4)
    return SAMPLERS[kind](prior, n, generator=generator, **kw)


# ---------------------------------------------------------------------------- filters


def test_filter_logits_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 4.0, 2.0, 3.0], [0.0, -1.0, 5.0, 1.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[False, True, False, True], [False, False, True, True]]
    assert torch.equal(filter_logits(logits, top_k=10), logits)


def test_filter_logits_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.15]])
    logits = probs.log()
    kept = lambda p: torch.isfinite(filter_logits(logits, top_p=p))[0].tolist()  # noqa: E731
    assert kept(0.5) == [True, False, False, False]
    assert kept(0.6) == [True, False, True, False]
    assert kept(0.9) == [True, False, True, True]
    assert kept(1.0) == [True, True, True, True]
    assert kept(1e-6) == [True, False, False, False]  # never empty


def test_filter_logits_is_pure():
    logits = torch.randn(3, 5)
    copy = logits.clone()
    filter_logits(logits, top_k=2, top_p=0.5)
    assert torch.equal(logits, copy)


# ---------------------------------------------------------------------------- MaskGIT schedule


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_mask_schedule_endpoints_and_monotone(name):
    assert mask_schedule(name, 0.0) == 1.0 and mask_schedule(name, 1.0) == 0.0
    r = torch.linspace(0, 1, 101)
    gamma = mask_schedule(name, r)
    assert gamma.shape == r.shape and torch.all(gamma[1:] <= gamma[:-1])
    assert torch.all(gamma[1:-1] < 1) and torch.all(gamma[1:-1] > 0)
    assert gamma[-1] == 0 and gamma[0] == 1


def test_cosine_schedule_values():
    assert mask_schedule("cosine", 0.5) == pytest.approx(math.cos(math.pi / 4))
    with pytest.raises(ValueError, match="unknown mask schedule"):
        mask_schedule("cosin", 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mask_schedule("cosine", 1.5)


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize(
    ("steps", "total"), [(1, 1), (1, 5), (5, 5), (8, 17), (12, 257), (8, 1024)]
)
def test_num_masked_strictly_decreases_to_zero(name, steps, total):
    counts = [num_masked(t, steps, total, name) for t in range(steps + 1)]
    assert counts[0] == total and counts[-1] == 0
    assert all(a > b for a, b in zip(counts, counts[1:], strict=False)), counts
    # at most ceil(gamma(t/T) N), unless raised so that every later step unmasks one token
    for t in range(1, steps):
        target = math.ceil(mask_schedule(name, t / steps) * total - 1e-9)
        assert counts[t] <= max(target, steps - t), (t, counts, target)


def test_num_masked_matches_the_formula_when_unconstrained():
    assert [num_masked(t, 4, 100, "linear") for t in range(5)] == [100, 75, 50, 25, 0]
    expected = [math.ceil(math.cos(math.pi / 2 * t / 8) * 256) for t in range(1, 8)]
    assert [num_masked(t, 8, 256) for t in range(1, 8)] == expected


def test_num_masked_errors():
    with pytest.raises(ValueError, match="steps=9 exceeds the 5 tokens"):
        num_masked(0, 9, 5)
    with pytest.raises(ValueError, match="step must be in"):
        num_masked(9, 8, 17)


# ---------------------------------------------------------------------------- samples


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("secondary", [True, False])
def test_samples_have_right_shapes_dtypes_and_ranges(kind, secondary):
    torch.manual_seed(0)
    prior = make_prior(kind, primary_grid=(2, 3), secondary_vocab=K2 if secondary else 0)
    out = sample(kind, prior, 5, batch_size=2, top_k=5, top_p=0.9, temperature=0.8)
    assert out["primary"].shape == (5, 2, 3) and out["primary"].dtype == torch.int64
    assert 0 <= out["primary"].min() and out["primary"].max() < K1
    if secondary:
        assert out["secondary"].shape == (5, 1, 1) and out["secondary"].dtype == torch.int64
        assert 0 <= out["secondary"].min() and out["secondary"].max() < K2
    else:
        assert set(out) == {"primary"}
    out["primary"] += 1  # ordinary tensors, not inference-mode ones


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_samples_different_seed_different(kind):
    torch.manual_seed(0)
    prior = make_prior(kind, num_classes=2)
    a = sample(kind, prior, 16, seed=1, labels=1)
    b = sample(kind, prior, 16, seed=1, labels=1)
    c = sample(kind, prior, 16, seed=2, labels=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["primary"], c["primary"])


@pytest.mark.parametrize("kind", KINDS)
def test_sampling_restores_training_mode(kind):
    prior = make_prior(kind).train()
    sample(kind, prior, 2)
    assert prior.training


@pytest.mark.parametrize("batch_size", [1, 3])
def test_cached_sampler_equals_naive_sampler(batch_size, device):
    """Same seed and batch size: the cache changes the speed, not the samples."""
    torch.manual_seed(0)
    prior = make_prior("transformer", secondary_grid=(1, 2), num_classes=3).to(device)
    labels = torch.tensor([0, 2, 1, 1])
    seeded = lambda: torch.Generator(device).manual_seed(3)  # noqa: E731
    kw = dict(labels=labels, batch_size=batch_size)
    fast = sample_autoregressive(prior, 4, generator=seeded(), **kw)
    naive = sample_autoregressive_naive(prior, 4, generator=seeded(), **kw)
    assert fast["secondary"].shape == (4, 1, 2)
    assert all(torch.equal(fast[k], naive[k]) for k in fast)
    if batch_size == 1:  # one instance at a time is the naive sampler's default
        default = sample_autoregressive_naive(prior, 4, labels=labels, generator=seeded())
        assert all(torch.equal(default[k], naive[k]) for k in fast)
    # the RNG stream depends on the batch size: batches draw their tokens together
    other = sample_autoregressive_naive(prior, 4, generator=seeded(), labels=labels, batch_size=4)
    assert not all(torch.equal(other[k], naive[k]) for k in fast)


@pytest.mark.parametrize("kind", KINDS)
def test_low_temperature_is_greedy(kind):
    torch.manual_seed(0)
    prior = make_prior(kind)
    kw = {"choice_temperature": 0.0} if kind == "maskgit" else {}  # no confidence noise
    a = sample(kind, prior, 4, seed=1, temperature=1e-4, **kw)
    b = sample(kind, prior, 4, seed=2, temperature=1e-4, **kw)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_maskgit_any_number_of_steps_fills_every_position(steps):
    prior = make_prior("maskgit")
    out = sample("maskgit", prior, 8, steps=steps, schedule="linear")
    assert out["primary"].max() < K1 and out["secondary"].max() < K2  # never [MASK]


def label_data(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Label 0: primary tokens in {0, 1}, secondary 0; label 1: primary in {6, 7}, secondary 5."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    primary = torch.randint(0, 2, (n, 2, 2), generator=g) + 6 * labels[:, None, None]
    return {"primary": primary, "secondary": (5 * labels).view(n, 1, 1), "label": labels}


@pytest.mark.parametrize("kind", KINDS)
def test_class_conditioning_controls_the_samples(kind):
    """A prior trained on label-dependent tokens samples tokens of the requested label."""
    torch.manual_seed(0)
    prior = make_prior(kind, num_classes=2).train()
    data = label_data(64)
    opt = torch.optim.Adam(prior.parameters(), lr=3e-3)
    for _ in range(60):
        loss, _ = prior.loss(data)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for label, allowed, secondary in ((0, (0, 1), 0), (1, (6, 7), 5)):
        out = sample(kind, prior, 32, labels=label)
        hit = torch.isin(out["primary"], torch.tensor(allowed)).float().mean()
        assert hit > 0.9, (kind, label, hit)
        assert (out["secondary"] == secondary).float().mean() > 0.9


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kind", KINDS)
def test_invalid_arguments_give_clear_errors(kind):
    prior = make_prior(kind)
    bad = [
        (dict(top_k=0), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-1.0), "temperature"),
        (dict(batch_size=0), "batch_size"),
        (dict(labels=1), "unconditional"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            sample(kind, prior, 2, **kwargs)
    with pytest.raises(ValueError, match="n .* positive"):
        sample(kind, prior, 0)
    conditional = make_prior(kind, num_classes=3)
    with pytest.raises(ValueError, match="class-conditional"):
        sample(kind, conditional, 2)
    with pytest.raises(ValueError, match="class label 3 is out of range"):
        sample(kind, conditional, 2, labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        sample(kind, conditional, 2, labels=torch.tensor([0, 1, 2]))


def test_maskgit_step_errors():
    prior = make_prior("maskgit")
    with pytest.raises(ValueError, match="steps must be"):
        sample_maskgit(prior, 2, steps=0)
    with pytest.raises(ValueError, match="steps=8 exceeds the 5 tokens"):
        sample_maskgit(prior, 2, steps=8)
    with pytest.raises(ValueError, match="unknown mask schedule"):
        sample_maskgit(prior, 2, steps=2, schedule="nope")


def test_samplers_reject_the_wrong_prior():
    with pytest.raises(TypeError, match="needs a TransformerPrior"):
        sample_autoregressive(make_prior("maskgit"), 2)
    with pytest.raises(TypeError, match="needs a MaskGITPrior"):
        sample_maskgit(make_prior("pixelcnn"), 2)
    with pytest.raises(TypeError, match="needs a PixelCNNPrior"):
        sample_pixelcnn(make_prior("transformer"), 2)
