"""Numerical contracts of VectorQuantizer's options: cosine, codebook_dim, rotation_trick, simvq.

Parity with vector-quantize-pytorch where the definitions coincide (same input, copied codebook),
round trips, every option combination trains on tiny widths, fp32 under autocast, one-line
errors, and codebooks identical on two gloo ranks.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F
from conftest import torchrun

from mvq.quantizers import VectorQuantizer

K, D, C, SMALL = 16, 4, 6, 2  # codes, code dim, input channels, low-dimensional lookup
MAINTENANCE = {  # ways the codebook is kept: options that interact with the new ones
    "plain": {},
    "ema_kmeans_restart": {"ema": True, "init": "kmeans", "dead_code_threshold": 1.0},
    "data_restart": {"init": "data", "dead_code_threshold": 1.0},
}


def combinations() -> list[dict]:
    """Every combination of the options, skipping those VectorQuantizer refuses (SimVQ with
    EMA, data/k-means init or restarts)."""
    out = []
    for cosine, dim, rotation, simvq, keep in itertools.product(
        (False, True), (None, SMALL), (False, True), (False, True), MAINTENANCE
    ):
        if simvq and keep != "plain":
            continue
        options = {"cosine": cosine, "codebook_dim": dim, "rotation_trick": rotation}
        out.append(options | {"simvq": simvq} | MAINTENANCE[keep])
    return out


def name(options: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in options.items() if v not in (False, None)) or "plain"


COMBINATIONS = combinations()


# -- parity with vector-quantize-pytorch ------------------------------------------------------
def copy_codebook_from(ours: VectorQuantizer, theirs) -> None:
    """Their codebook, EMA statistics and low-dimensional projections into ours."""
    with torch.no_grad():
        ours.codebook.copy_(theirs._codebook.embed[0])
        if ours.ema:
            ours.ema_sum.copy_(theirs._codebook.embed_avg[0])
            ours.ema_count.copy_(theirs._codebook.cluster_size[0])
        if ours.factor_in.proj is not None:
            ours.factor_in.proj.load_state_dict(theirs.project_in.state_dict())
            ours.factor_out.proj.load_state_dict(theirs.project_out.state_dict())


@pytest.mark.parametrize("cosine", [False, True])
@pytest.mark.parametrize("codebook_dim", [None, SMALL])
def test_rotation_trick_gradient_equals_vector_quantize_pytorch(cosine, codebook_dim):
    vqp = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(0)
    theirs = vqp.VectorQuantize(
        dim=D,
        codebook_size=K,
        codebook_dim=codebook_dim,
        use_cosine_sim=cosine,
        rotation_trick=True,
        decay=0.9,
    )
    ours = VectorQuantizer(
        K, D, cosine=cosine, codebook_dim=codebook_dim, rotation_trick=True, ema=True, decay=0.9
    )
    copy_codebook_from(ours, theirs)
    x = torch.randn(3, 20, D, requires_grad=True)  # (B, N, D) channel-last, theirs
    z = x.detach().transpose(1, 2).requires_grad_()  # (B, D, N), ours
    w = torch.randn(3, 20, D)
    q_theirs, idx_theirs, _ = theirs(x)
    out = ours(z)
    (q_theirs * w).sum().backward()
    (out.quantized * w.transpose(1, 2)).sum().backward()
    assert torch.equal(out.indices, idx_theirs)
    # theirs computes sg[λR]·y, equal to q up to rounding; ours gives q exactly
    torch.testing.assert_close(out.quantized.transpose(1, 2), q_theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z.grad.transpose(1, 2), x.grad, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(x.grad, w)  # the rotation changed the gradient


def test_rotation_trick_gradient_equals_the_dense_rotation():
    """λ Rᵀ g with R built as a dense d×d matrix per row (Fifty et al. 2024, eq. 6): the slow
    reference beside the fast backward."""
    torch.manual_seed(1)
    vq = VectorQuantizer(K, D, rotation_trick=True)
    with torch.no_grad():
        vq.codebook.normal_()
    z = torch.randn(5, D, 1, requires_grad=True)
    g = torch.randn(5, D, 1)
    out = vq(z)
    (out.quantized * g).sum().backward()
    y, q = z.detach()[..., 0], out.quantized.detach()[..., 0]  # (5, D)
    assert torch.equal(q, vq.codebook.detach()[out.indices[:, 0]])  # the value is q exactly
    y_hat, q_hat = F.normalize(y, dim=1), F.normalize(q, dim=1)
    w = F.normalize(y_hat + q_hat, dim=1)
    eye = torch.eye(D).expand(5, D, D)
    rot = eye - 2 * w[:, :, None] * w[:, None] + 2 * q_hat[:, :, None] * y_hat[:, None]
    scale = (q.norm(dim=1) / y.norm(dim=1))[:, None, None]
    rotated = (scale * rot) @ y[:, :, None]  # λR y = q
    torch.testing.assert_close(rotated[..., 0], q, rtol=1e-5, atol=1e-6)
    expected = ((scale * rot).transpose(1, 2) @ g)[..., 0]  # (λR)ᵀ g
    torch.testing.assert_close(z.grad[..., 0], expected, rtol=1e-5, atol=1e-6)
    assert vq.codebook.grad is None  # the decoder's gradient goes to the input only


@pytest.mark.parametrize("rotation_trick", [False, True])
def test_simvq_codes_loss_and_gradients_equal_vector_quantize_pytorch(rotation_trick):
    vqp = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(2)
    theirs = vqp.SimVQ(dim=D, codebook_size=K, rotation_trick=rotation_trick)
    ours = VectorQuantizer(K, D, simvq=True, rotation_trick=rotation_trick, beta=0.25)
    with torch.no_grad():
        ours.codebook.copy_(theirs.frozen_codebook)
        ours.codebook_transform.weight.copy_(theirs.code_transform.weight)
    torch.testing.assert_close(ours.indices_to_codes(torch.arange(K)), theirs.codebook)
    x = torch.randn(3, 20, D, requires_grad=True)  # (B, N, D)
    z = x.detach().transpose(1, 2).requires_grad_()  # (B, D, N)
    q_theirs, idx_theirs, loss_theirs = theirs(x)
    out = ours(z)
    assert torch.equal(out.indices, idx_theirs)
    torch.testing.assert_close(out.quantized.transpose(1, 2), q_theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, loss_theirs)  # 0.25 commitment + codebook term
    codes_theirs = theirs.indices_to_codes(out.indices)  # C[k] W, ours (C W)[k]: rounding apart
    torch.testing.assert_close(ours.indices_to_codes(out.indices), codes_theirs)
    if rotation_trick:  # the decoder's gradient through the rotation, to the input
        w = torch.randn(3, 20, D)
        (q_theirs * w).sum().backward()
        (out.quantized * w.transpose(1, 2)).sum().backward()
        torch.testing.assert_close(z.grad.transpose(1, 2), x.grad, rtol=1e-5, atol=1e-6)
    else:  # the loss's gradients: to the input and to W (the codebook term trains W)
        loss_theirs.backward()
        out.loss.backward()
        torch.testing.assert_close(z.grad.transpose(1, 2), x.grad)
        grad_w = theirs.code_transform.weight.grad
        torch.testing.assert_close(ours.codebook_transform.weight.grad, grad_w)


@pytest.mark.parametrize("codebook_dim", [None, SMALL])
def test_cosine_codes_and_ema_updates_equal_vector_quantize_pytorch(codebook_dim):
    vqp = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(3)
    theirs = vqp.VectorQuantize(
        dim=D,
        codebook_size=K,
        codebook_dim=codebook_dim,
        use_cosine_sim=True,
        rotation_trick=False,
        decay=0.9,
        commitment_weight=0.25,
    )
    ours = VectorQuantizer(K, D, cosine=True, codebook_dim=codebook_dim, ema=True, decay=0.9)
    copy_codebook_from(ours, theirs)
    for _ in range(3):  # three EMA steps: the codebooks move alike
        x = torch.randn(4, 20, D)  # (B, N, D)
        q_theirs, idx_theirs, loss_theirs = theirs(x)
        out = ours(x.transpose(1, 2))
        assert torch.equal(out.indices, idx_theirs)
        torch.testing.assert_close(out.quantized.transpose(1, 2), q_theirs, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.loss, loss_theirs)
        codes = ours.indices_to_codes(torch.arange(K))  # (K, D) unit codes, projected out
        torch.testing.assert_close(codes, theirs.get_output_from_indices(torch.arange(K)))
    torch.testing.assert_close(F.normalize(ours.codebook, dim=1), theirs.codebook)


# -- contracts of every option ------------------------------------------------------------------
@pytest.mark.parametrize("options", COMBINATIONS, ids=name)
def test_every_combination_trains_and_round_trips(options, device):
    torch.manual_seed(4)
    vq = VectorQuantizer(K, D, in_channels=C, **options).to(device)
    opt = torch.optim.SGD(vq.parameters(), lr=0.1)
    for _ in range(3):
        z = torch.randn(4, C, 3, 3, device=device, requires_grad=True)
        out = vq(z)
        (out.quantized.square().mean() + out.loss).backward()
        assert torch.isfinite(out.loss) and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
        assert set(out.logs) >= {"usage", "perplexity", "commitment"}
        opt.step()
        opt.zero_grad()
    vq.eval()
    z = torch.randn(2, C, 3, 3, device=device)
    tokens, out = vq.encode(z), vq(z)
    assert torch.equal(tokens.indices, out.indices) and tokens.indices.shape == (2, 3, 3)
    torch.testing.assert_close(vq.decode(tokens), out.quantized, rtol=1e-6, atol=1e-6)
    every = torch.arange(K, device=device).view(2, 8)
    codes = vq.indices_to_codes(every)  # (2, 8, D)
    assert codes.shape == (2, 8, D) and torch.equal(vq.codes_to_indices(codes), every)
    assert vq.bits_per_token == 4.0 and vq.codebook_size == K


def test_cosine_codes_lie_on_the_unit_sphere_and_kmeans_is_spherical():
    torch.manual_seed(5)
    vq = VectorQuantizer(4, 3, cosine=True, init="kmeans", ema=True)
    directions = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -0.6, 0.8]])
    scales = torch.rand(200, 1) * 10 + 0.1  # lengths must not matter
    x = (directions.repeat(50, 1) + 0.02 * torch.randn(200, 3)) * scales  # (200, 3)
    vq(x.T[None])
    codes = vq.indices_to_codes(torch.arange(4))
    torch.testing.assert_close(codes.norm(dim=1), torch.ones(4))
    assert (codes @ directions.T).max(0).values.min() > 0.99  # a code on each direction
    scaled = vq.encode(x.T[None] * 7).indices
    assert torch.equal(scaled, vq.encode(x.T[None]).indices)


def test_simvq_codes_move_together_through_the_learned_map():
    torch.manual_seed(6)
    vq = VectorQuantizer(K, D, simvq=True)
    assert "codebook" not in dict(vq.named_parameters()) and "codebook" in vq.state_dict()
    assert [n for n, p in vq.named_parameters()] == ["codebook_transform.weight"]
    before = vq.indices_to_codes(torch.arange(K)).detach()
    z = torch.randn(1, D, 2)  # two inputs: at most two codes are used
    out = vq(z)
    out.loss.backward()
    torch.optim.SGD(vq.parameters(), lr=0.5).step()
    moved = (vq.indices_to_codes(torch.arange(K)).detach() - before).norm(dim=1) > 0
    assert out.indices.unique().numel() <= 2 and bool(moved.all())  # every code moved
    frozen = VectorQuantizer(K, D, simvq=True)  # another seed: a state dict carries C
    frozen.load_state_dict(vq.state_dict())
    every = torch.arange(K)
    assert torch.equal(frozen.indices_to_codes(every), vq.indices_to_codes(every))


def test_lookup_is_fp32_under_bf16_autocast():
    torch.manual_seed(7)
    vq = VectorQuantizer(64, 8, cosine=True, codebook_dim=4, rotation_trick=True)
    dtypes = []
    for layer in (vq.factor_in, vq.factor_out):
        layer.register_forward_hook(lambda m, i, o: dtypes.append((i[0].dtype, o.dtype)))
    z = torch.randn(4, 8, 5, 5, requires_grad=True)
    reference = vq.encode(z).indices
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vq(z)
        encoded = vq.encode(z).indices
        decoded = vq.decode(encoded)
    assert dtypes and set(dtypes) == {(torch.float32, torch.float32)}
    assert torch.equal(out.indices, reference) and torch.equal(encoded, reference)
    assert out.loss.dtype == torch.float32 and out.quantized.dtype == torch.float32
    torch.testing.assert_close(decoded, out.quantized, rtol=0, atol=0)
    out.quantized.sum().backward()
    assert z.grad.dtype == torch.float32 and torch.isfinite(z.grad).all()


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"simvq": True, "ema": True}, "simvq=True cannot use ema=True"),
        ({"simvq": True, "init": "kmeans"}, "simvq=True cannot use init='kmeans'"),
        ({"simvq": True, "init": "data"}, "use init='random'"),
        ({"simvq": True, "dead_code_threshold": 1.0}, "use dead_code_threshold=0"),
        ({"codebook_dim": 0}, "codebook_dim must be an int >= 1"),
        ({"codebook_dim": 2.5}, "codebook_dim must be an int >= 1"),
    ],
)
def test_refused_options_are_one_line_errors(options, fragment):
    with pytest.raises(ValueError) as err:
        VectorQuantizer(K, D, **options)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_codes_to_indices_checks_the_channels():
    vq = VectorQuantizer(K, D, codebook_dim=SMALL)
    with pytest.raises(ValueError, match=r"codes must be channel-last \(\.\.\., 4\)"):
        vq.codes_to_indices(torch.zeros(3, SMALL))


# -- distributed -----------------------------------------------------------------------------
DDP_SCRIPT = """
import inspect, os, sys
from pathlib import Path
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
import mvq.quantizers.vq as vq_module
from mvq.quantizers import ResidualVQ, VectorQuantizer

out, rank = Path(sys.argv[1]), int(os.environ["RANK"])
world = int(os.environ["WORLD_SIZE"])
dist.init_process_group("gloo", init_method=f"file://{{out}}/store", rank=rank, world_size=world)
CONFIGS = {{
    "ema_cosine_kmeans_restart": dict(ema=True, cosine=True, init="kmeans",
                                      dead_code_threshold=2.0),
    "ema_lowdim_rotation_data_restart": dict(ema=True, codebook_dim=2, rotation_trick=True,
                                             init="data", dead_code_threshold=2.0),
    "grad_cosine_lowdim_kmeans_restart": dict(cosine=True, codebook_dim=2, init="kmeans",
                                              dead_code_threshold=2.0),
    "simvq_cosine_rotation": dict(simvq=True, cosine=True, rotation_trick=True),
    "rvq_ema_kmeans_restart_dropout": dict(levels=3, quantizer_dropout=0.5, ema=True,
                                           init="kmeans", dead_code_threshold=2.0),
    "control_ema_cosine_kmeans_restart_unsynced": dict(ema=True, cosine=True, init="kmeans",
                                                       dead_code_threshold=2.0),
}}
SIGNATURE = inspect.signature(DistributedDataParallel).parameters
NO_FORWARD_SYNC = {{"forward_sync_buffers" if "forward_sync_buffers" in SIGNATURE
                   else "broadcast_buffers": False}}  # torch >= 2.14 deprecates the latter
results = {{}}
for name, options in CONFIGS.items():
    vq_module._distributed = lambda: not name.startswith("control")  # the control: no syncing
    torch.manual_seed(100 + rank)  # each rank its own init and data: only syncing aligns them
    cls = ResidualVQ if name.startswith("rvq") else VectorQuantizer
    vq = cls(16, 4, in_channels=6, **options)
    restarts = []
    for level in [m for m in vq.modules() if isinstance(m, VectorQuantizer)]:
        def counting(x, restart=level._restart_dead_codes, level=level, restarts=restarts):
            restarts.append(int((level.code_usage < level.dead_code_threshold).sum()))
            restart(x)
        level._restart_dead_codes = counting
    # buffers synced at the start only (rank 0's, as DDP does by default), never in forward:
    # the EMA statistics must stay equal by the quantizer's own syncing
    for buffer in vq.buffers():
        dist.broadcast(buffer, src=0)
    model = DistributedDataParallel(vq, **NO_FORWARD_SYNC)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(6):
        z = torch.randn(4, 6, 3, 3) * (1 + rank)
        o = model(z)
        (o.quantized.square().mean() + o.loss).backward()
        opt.step()
        opt.zero_grad()
    results[name] = {{"state": vq.state_dict(), "restarts": sum(restarts),
                     "commitment": o.logs.get("commitment", o.logs.get("level0_commitment"))}}
dist.destroy_process_group()
torch.save(results, out / f"rank{{rank}}.pt")
"""


def test_codebooks_stay_identical_on_two_gloo_ranks(tmp_path):
    r0, r1 = torchrun(DDP_SCRIPT, tmp_path)
    for name, result in r0.items():
        other = r1[name]
        # the ranks saw different data: their own commitment logs differ
        assert result["commitment"] != other["commitment"], name
        same = [torch.equal(v, other["state"][k]) for k, v in result["state"].items()]
        if name.startswith("control"):  # without the quantizer's syncing they drift apart
            assert not all(same), name
            continue
        assert all(same), (name, [k for k, s in zip(result["state"], same, strict=True) if not s])
        if "restart" in name:
            assert result["restarts"] > 0 and result["restarts"] == other["restarts"], name
