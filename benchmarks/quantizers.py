"""Forward+backward time of our quantizers against vector-quantize-pytorch on the CPU (2 threads).

    python benchmarks/quantizers.py [--rounds 5] [--repeats 30]

Cases (training mode, backward on ``mean(quantized**2) + aux loss``), each against a baseline
measured in the same run:
  1. VQ, K = 512 codes of D = 64, input (32, 256, 64). Ours (``VectorQuantizer``, fed the
     channel-first view (B, C, N)) against ``vector_quantize_pytorch.VectorQuantize`` like for
     like: straight-through gradient (``rotation_trick=False``), commitment weight 0.25 as our
     beta, and
       - no EMA vs no EMA: ours ``ema=False`` (codebook loss) against theirs with
         ``learnable_codebook=True, ema_update=False`` (codebook learned by gradient);
       - EMA vs EMA: ours ``ema=True`` against theirs with its EMA (its default), both decay 0.99.
     Their defaults (EMA with decay 0.8, the rotation trick: another gradient and extra work,
     commitment 1.0) are a separate row, not like for like. A plain ``torch.cdist`` + ``argmin``
     VQ is a third baseline. The VQ options, each EMA vs EMA (decay 0.99, commitment 0.25) with
     one option on in both: ``rotation_trick=True`` (theirs: its ``rotate_to``; ours: the same
     gradient in one autograd node) and cosine codes (``cosine=True`` / ``use_cosine_sim=True``).
     SimVQ: ``VectorQuantizer(simvq=True)`` against ``vector_quantize_pytorch.SimVQ`` with
     straight-through gradients (``rotation_trick=False``) and the same loss (0.25 on the
     commitment term, 1 on the codebook term); ours also passes the decoder's gradient to the
     codes (mvq's straight-through ``q + (y - sg[y])``), theirs detaches them. The arithmetic
     limit: the distance GEMM costs 2·B·N·K·D flops (the backward has none: argmin has no
     gradient; SimVQ adds K·D·D products for its codes C·W and their gradient, 1/128 of it
     here), and the same GEMM alone, timed in the run, gives this machine's rate; every VQ row
     reports the GEMM's time over its own.
     Residual VQ: ``ResidualVQ`` with 4 levels of the VQ case's codebook, EMA (decay 0.99,
     commitment 0.25), against ``vector_quantize_pytorch.ResidualVQ(num_quantizers=4)`` with
     the same layers (straight-through, no quantizer dropout): 4 distance GEMMs, the limit.
  2. FSQ, levels (8, 5, 5, 5), input (32, 256, 4): ``FSQ`` (ours, channel-first view again) and
     ``vector_quantize_pytorch.FSQ``; like for like, our ``bound="vqpytorch"`` computes their
     formula. Ours also checks its input for NaN/Inf and computes usage and perplexity (timed
     apart as ``fsq_input_check`` and ``fsq_codebook_stats``); theirs does neither.
     ``quantize()`` alone compares the two quantisers without the module around. FSQ has no
     GEMM: a few elementwise passes over 128 KiB, bound by overheads, so no arithmetic limit.
  3. LFQ and BSQ, d = 9 bits (512 codes, the VQ case's K), input (32, 256, 9): ``LFQ`` and
     ``BSQ`` (ours, channel-first view, their defaults) against ``vector_quantize_pytorch.LFQ``
     and ``LFQ(spherical=True)`` with the same options: entropy weight 0.1, diversity gamma 1,
     commitment 0.25 (LFQ) / 0 (BSQ), ``inv_temperature`` 100 (LFQ) / 1 (BSQ), both with the
     exact codebook entropy over all 2^d codes (theirs from an (N, 2^d) softmax, ours from two
     half-codebooks and one GEMM). The arithmetic limit: that GEMM, P = a·bᵀ with a (2^5, B·N)
     and b (2^4, B·N), 2·B·N·2^d flops forward and twice that backward, at this run's GEMM
     rate (optimistic: so thin a GEMM runs below the VQ GEMM's rate).
Each figure is the median over ``rounds`` of per-round medians; the cases are interleaved in
every round so that load from other processes hits all of them alike. Prints a table, then, as
the last line, one JSON object with every figure, the baseline of each ratio and the versions.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mvq.quantizers.base import check_feature_map, codebook_stats
from mvq.quantizers.bsq import BSQ
from mvq.quantizers.fsq import FSQ
from mvq.quantizers.lfq import LFQ
from mvq.quantizers.residual import ResidualVQ
from mvq.quantizers.vq import VectorQuantizer

try:
    import vector_quantize_pytorch as vqp
except ImportError as err:  # no fake numbers: the comparison needs the reference library
    raise SystemExit("benchmarks need vector-quantize-pytorch: pip install -e '.[bench]'") from err

B, N, D, K = 32, 256, 64, 512
LEVELS = (8, 5, 5, 5)
LFQ_DIM = 9  # 2^9 = 512 codes, the VQ case's K


def time_fn(fn: Callable[[], object], warmup: int = 5, repeats: int = 30) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fwd_bwd(forward: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> Callable[[], None]:
    """A step: ``quantized, aux_loss = forward()``, then backward of mean(q²) + aux_loss."""

    def step() -> None:
        quantized, loss = forward()
        (quantized.square().mean() + loss.sum()).backward()

    return step


class CdistVQ(torch.nn.Module):
    """The textbook VQ-VAE layer: cdist + argmin, codebook and commitment losses, STE."""

    def __init__(self) -> None:
        super().__init__()
        self.codebook = torch.nn.Parameter(torch.randn(K, D) / K)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.reshape(-1, D)  # (B·N, D)
        q = self.codebook[torch.cdist(flat, self.codebook).argmin(-1)]  # (B·N, D)
        loss = F.mse_loss(q, flat.detach()) + 0.25 * F.mse_loss(flat, q.detach())
        return (flat + (q - flat).detach()).view_as(x), loss


def settings(vq: torch.nn.Module) -> dict[str, object]:
    """The options of a ``vqp.VectorQuantize`` that decide what it computes, as it reports them."""
    return {
        "rotation_trick": bool(vq.rotation_trick),
        "ema_update": bool(vq._codebook.ema_update),
        "learnable_codebook": bool(vq.learnable_codebook),
        "decay": float(vq._codebook.decay),
        "commitment_weight": float(vq.commitment_weight),
        "use_cosine_sim": bool(vq.use_cosine_sim),
    }


def simvq_settings(vq: torch.nn.Module) -> dict[str, object]:
    """The options of a ``vqp.SimVQ`` that decide what it computes."""
    return {
        "rotation_trick": bool(vq.rotation_trick),
        "input_to_quantize_commit_loss_weight": float(vq.input_to_quantize_commit_loss_weight),
        "commitment_weight": float(vq.commitment_weight),
        "frozen_codebook_dim": int(vq.frozen_codebook.shape[1]),
    }


RVQ_LEVELS = 4


def rvq_loss(out: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """vector-quantize-pytorch's ResidualVQ returns (quantized, indices, per-level losses)."""
    return out[0], out[2].sum()


def vq_cases() -> tuple[dict[str, Callable[[], object]], dict[str, dict[str, object]]]:
    """Forward+backward steps of our VQs, vector-quantize-pytorch's and cdist, and the GEMM;
    with the settings of each vector-quantize-pytorch layer."""
    x = torch.randn(B, N, D, requires_grad=True)  # (B, N, D) channel-last
    z = x.detach().transpose(1, 2).requires_grad_()  # (B, D, N) view, what ours takes
    like = dict(dim=D, codebook_size=K, rotation_trick=False, commitment_weight=0.25)
    theirs = {
        "vq_vqpytorch_noema": vqp.VectorQuantize(**like, learnable_codebook=True, ema_update=False),
        "vq_vqpytorch_ema": vqp.VectorQuantize(**like, decay=0.99),
        "vq_vqpytorch_defaults": vqp.VectorQuantize(dim=D, codebook_size=K),
        "vq_vqpytorch_rotation": vqp.VectorQuantize(**dict(like, rotation_trick=True), decay=0.99),
        "vq_vqpytorch_cosine": vqp.VectorQuantize(**like, decay=0.99, use_cosine_sim=True),
    }
    simvq_theirs = vqp.SimVQ(
        dim=D, codebook_size=K, rotation_trick=False, input_to_quantize_commit_loss_weight=0.25
    )
    ours, ours_ema = VectorQuantizer(K, D), VectorQuantizer(K, D, ema=True, decay=0.99)
    ours_rotation = VectorQuantizer(K, D, ema=True, decay=0.99, rotation_trick=True)
    ours_cosine = VectorQuantizer(K, D, ema=True, decay=0.99, cosine=True)
    ours_simvq = VectorQuantizer(K, D, simvq=True)
    ours_rvq = ResidualVQ(K, D, levels=RVQ_LEVELS, ema=True, decay=0.99)
    rvq_theirs = vqp.ResidualVQ(num_quantizers=RVQ_LEVELS, **like, decay=0.99)
    ours_eval, cdist = VectorQuantizer(K, D).eval(), CdistVQ()
    flat, codebook_t = torch.randn(B * N, D), torch.randn(D, K)

    def ours_out(vq: VectorQuantizer) -> tuple[torch.Tensor, torch.Tensor]:
        out = vq(z)
        return out.quantized, out.loss

    def forward_only() -> None:
        with torch.no_grad():
            ours_eval(z)

    cases: dict[str, Callable[[], object]] = {
        "vq_ours": fwd_bwd(lambda: ours_out(ours)),
        "vq_ours_ema": fwd_bwd(lambda: ours_out(ours_ema)),
        "vq_ours_rotation": fwd_bwd(lambda: ours_out(ours_rotation)),
        "vq_ours_cosine": fwd_bwd(lambda: ours_out(ours_cosine)),
        "simvq_ours": fwd_bwd(lambda: ours_out(ours_simvq)),
        "simvq_vqpytorch": fwd_bwd(lambda: simvq_theirs(x)[::2]),
        "rvq_ours": fwd_bwd(lambda: ours_out(ours_rvq)),
        "rvq_vqpytorch": fwd_bwd(lambda: rvq_loss(rvq_theirs(x))),
        "vq_cdist": fwd_bwd(lambda: cdist(x)),
        "vq_forward_ours": forward_only,
        "vq_distance_matmul": lambda: torch.mm(flat, codebook_t),
    }
    for name, vq in theirs.items():  # (quantized, indices, loss) -> (quantized, loss)
        cases[name] = fwd_bwd(lambda vq=vq: vq(x)[::2])
    used = {name: settings(vq) for name, vq in theirs.items()}
    used["rvq_vqpytorch"] = settings(rvq_theirs.layers[0]) | {"num_quantizers": RVQ_LEVELS}
    return cases, used | {"simvq_vqpytorch": simvq_settings(simvq_theirs)}


def fsq_cases() -> dict[str, Callable[[], object]]:
    """Forward+backward steps of both FSQs, their quantize alone, and our module's overheads."""
    x = torch.randn(B, N, len(LEVELS), requires_grad=True)  # (B, N, d) channel-last
    z = x.detach().transpose(1, 2).requires_grad_()  # (B, d, N) view, what ours takes
    ours, theirs = FSQ(LEVELS), vqp.FSQ(levels=list(LEVELS))
    ours_theirs_bound = FSQ(LEVELS, bound="vqpytorch")
    zero = torch.zeros(())
    indices = ours(z).indices

    def module(fsq: FSQ) -> tuple[torch.Tensor, torch.Tensor]:
        out = fsq(z)
        return out.quantized, out.loss

    return {
        "fsq_ours": fwd_bwd(lambda: module(ours)),
        "fsq_ours_vqpytorch_bound": fwd_bwd(lambda: module(ours_theirs_bound)),
        "fsq_vqpytorch": fwd_bwd(lambda: (theirs(x)[0], zero)),  # (quantized, indices)
        "fsq_quantize_ours": fwd_bwd(lambda: (ours.quantize(x), zero)),
        "fsq_quantize_vqpytorch": fwd_bwd(lambda: (theirs.quantize(x), zero)),
        "fsq_input_check": lambda: check_feature_map(z, len(LEVELS)),
        "fsq_codebook_stats": lambda: codebook_stats(indices, ours.codebook_size),
    }


def lfq_bsq_cases() -> tuple[dict[str, Callable[[], object]], dict[str, dict[str, object]]]:
    """Forward+backward steps of our LFQ and BSQ and vector-quantize-pytorch's, like for like;
    with the settings of theirs."""
    x = torch.randn(B, N, LFQ_DIM, requires_grad=True)  # (B, N, d) channel-last
    z = x.detach().transpose(1, 2).requires_grad_()  # (B, d, N) view, what ours takes
    ours = {"lfq_ours": LFQ(LFQ_DIM), "bsq_ours": BSQ(LFQ_DIM)}  # their defaults
    theirs = {}
    for name, q in ours.items():
        options = dict(
            entropy_loss_weight=q.entropy_weight,
            diversity_gamma=q.diversity_gamma,
            commitment_loss_weight=q.commitment_weight,
        )
        ref = vqp.LFQ(dim=LFQ_DIM, spherical=isinstance(q, BSQ), **options)
        theirs[name.replace("ours", "vqpytorch")] = ref, 1 / q.temperature

    def ours_out(q: LFQ) -> tuple[torch.Tensor, torch.Tensor]:
        out = q(z)
        return out.quantized, out.loss

    cases: dict[str, Callable[[], object]] = {
        name: fwd_bwd(lambda q=q: ours_out(q)) for name, q in ours.items()
    }
    for name, (ref, inv_t) in theirs.items():  # (quantized, indices, loss) -> (quantized, loss)
        cases[name] = fwd_bwd(lambda ref=ref, inv_t=inv_t: ref(x, inv_temperature=inv_t)[::2])
    used = {
        name: {
            key: getattr(ref, key)
            for key in (
                "spherical",
                "entropy_loss_weight",
                "commitment_loss_weight",
                "diversity_gamma",
                "codebook_scale",
                "frac_per_sample_entropy",
            )
        }
        | {"dim": LFQ_DIM, "inv_temperature": inv_t}
        for name, (ref, inv_t) in theirs.items()
    }
    return cases, used


def lfq_bsq_figures(ms: dict[str, float], gemm_gflops: float) -> dict[str, object]:
    """Print and return the LFQ/BSQ steps' fraction of the arithmetic limit (their one GEMM)."""
    flops = 3 * 2 * B * N * 2**LFQ_DIM  # P = a·bᵀ forward, its two gradients backward
    limit_ms = flops / gemm_gflops / 1e6
    steps = ["lfq_ours", "lfq_vqpytorch", "bsq_ours", "bsq_vqpytorch"]
    print(
        f"LFQ/BSQ entropy GEMM, fwd+bwd: {flops / 1e6:.0f} MFLOP, {limit_ms:.3f} ms at that rate:"
    )
    for name in steps:
        print(f"  {name:24s} {ms[name]:8.3f} ms  {100 * limit_ms / ms[name]:5.1f}%")
    return {
        "lfq_bsq_entropy_gemm_flops": flops,
        "lfq_bsq_fraction_of_gemm_limit": {name: limit_ms / ms[name] for name in steps},
    }


def measure(cases: dict[str, Callable[[], object]], rounds: int, repeats: int) -> dict[str, float]:
    """Median over rounds of each case's median time in ms, the cases interleaved per round."""
    per_round: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            per_round[name].append(time_fn(fn, repeats=repeats) * 1e3)
    return {name: statistics.median(ms) for name, ms in per_round.items()}


# (label, ours, baseline, JSON name of ours / baseline); every baseline is timed in the same run
ROWS = [
    (
        "VQ no EMA vs vqpytorch no EMA, no rotation",
        "vq_ours",
        "vq_vqpytorch_noema",
        "vq_noema_time_over_vqpytorch_noema",
    ),
    (
        "VQ EMA vs vqpytorch EMA, no rotation",
        "vq_ours_ema",
        "vq_vqpytorch_ema",
        "vq_ema_time_over_vqpytorch_ema",
    ),
    (
        "VQ EMA vs vqpytorch DEFAULTS (rotation trick)",
        "vq_ours_ema",
        "vq_vqpytorch_defaults",
        "vq_ema_time_over_vqpytorch_defaults",
    ),
    (
        "VQ EMA rotation trick vs vqpytorch EMA rotation",
        "vq_ours_rotation",
        "vq_vqpytorch_rotation",
        "vq_rotation_time_over_vqpytorch",
    ),
    (
        "VQ EMA cosine vs vqpytorch EMA cosine",
        "vq_ours_cosine",
        "vq_vqpytorch_cosine",
        "vq_cosine_time_over_vqpytorch",
    ),
    (
        "SimVQ vs vqpytorch SimVQ, no rotation",
        "simvq_ours",
        "simvq_vqpytorch",
        "simvq_time_over_vqpytorch",
    ),
    (
        "Residual VQ, 4 EMA levels vs vqpytorch ResidualVQ",
        "rvq_ours",
        "rvq_vqpytorch",
        "rvq_time_over_vqpytorch",
    ),
    ("VQ no EMA vs cdist+argmin", "vq_ours", "vq_cdist", "vq_time_over_cdist"),
    (
        "VQ forward (eval, no grad) vs distance GEMM",
        "vq_forward_ours",
        "vq_distance_matmul",
        "vq_forward_time_over_matmul",
    ),
    ("FSQ (8,5,5,5) vs vqpytorch FSQ", "fsq_ours", "fsq_vqpytorch", "fsq_time_over_vqpytorch"),
    (
        "FSQ bound='vqpytorch' vs vqpytorch FSQ",
        "fsq_ours_vqpytorch_bound",
        "fsq_vqpytorch",
        "fsq_vqpytorch_bound_time_over_vqpytorch",
    ),
    (
        "FSQ quantize() only",
        "fsq_quantize_ours",
        "fsq_quantize_vqpytorch",
        "fsq_quantize_time_over_vqpytorch",
    ),
    ("LFQ d=9 vs vqpytorch LFQ", "lfq_ours", "lfq_vqpytorch", "lfq_time_over_vqpytorch"),
    ("BSQ d=9 vs vqpytorch LFQ(spherical)", "bsq_ours", "bsq_vqpytorch", "bsq_time_over_vqpytorch"),
]
VQ_STEPS = [
    "vq_ours",
    "vq_ours_ema",
    "vq_vqpytorch_noema",
    "vq_vqpytorch_ema",
    "vq_vqpytorch_defaults",
    "vq_ours_rotation",
    "vq_vqpytorch_rotation",
    "vq_ours_cosine",
    "vq_vqpytorch_cosine",
    "simvq_ours",
    "simvq_vqpytorch",
    "vq_cdist",
    "vq_forward_ours",
]


def report(ms: dict[str, float], vqpytorch_settings: dict[str, object]) -> dict[str, object]:
    """Print the table and return every figure for the JSON line."""
    flops = 2 * B * N * K * D  # the distance GEMM of a VQ forward (the backward has none)
    gemm_gflops = flops / ms["vq_distance_matmul"] / 1e6
    figures: dict[str, object] = {f"{name}_ms": round(t, 4) for name, t in ms.items()}
    figures |= {key: ms[a] / ms[b] for _, a, b, key in ROWS}
    figures["baselines"] = {key: b for _, _, b, key in ROWS}  # all measured in this run
    figures["vqpytorch_settings"] = vqpytorch_settings
    figures |= {
        "vq_distance_gemm_flops": flops,
        "matmul_gflops": gemm_gflops,  # this run's measured GEMM rate: the arithmetic limit
        # GEMM time / step time: the fraction of the limit each VQ step reaches
        "fraction_of_gemm_limit": {n: ms["vq_distance_matmul"] / ms[n] for n in VQ_STEPS}
        | {n: RVQ_LEVELS * ms["vq_distance_matmul"] / ms[n] for n in ("rvq_ours", "rvq_vqpytorch")},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "vector_quantize_pytorch": importlib.metadata.version("vector-quantize-pytorch"),
    }
    print(f"{'case':46s} {'ours ms':>9s} {'base ms':>9s} {'ratio':>7s}")
    for label, a, b, _ in ROWS:
        print(f"{label:46s} {ms[a]:9.3f} {ms[b]:9.3f} {ms[a] / ms[b]:7.2f}")
    print(
        f"Distance GEMM (8192x64)·(64x512): {flops / 1e6:.0f} MFLOP in "
        f"{ms['vq_distance_matmul']:.3f} ms = {gemm_gflops:.1f} GFLOP/s, the arithmetic limit."
    )
    print("Fraction of that limit reached (GEMM time / step time):")
    for name in VQ_STEPS:
        print(f"  {name:24s} {ms[name]:8.3f} ms  {100 * ms['vq_distance_matmul'] / ms[name]:5.1f}%")
    print(
        f"FSQ module overheads inside fsq_ours: input check {ms['fsq_input_check']:.3f} ms, "
        f"codebook_stats {ms['fsq_codebook_stats']:.3f} ms (vqpytorch computes neither); "
        "FSQ has no GEMM, so no arithmetic limit is given."
    )
    for name, options in vqpytorch_settings.items():
        print(f"{name}: {options}")
    version = figures["vector_quantize_pytorch"]
    print(f"vector-quantize-pytorch {version}, torch {torch.__version__}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases, vqpytorch_settings = vq_cases()
    lfq_bsq, lfq_bsq_settings = lfq_bsq_cases()
    ms = measure(cases | fsq_cases() | lfq_bsq, args.rounds, args.repeats)
    figures = report(ms, vqpytorch_settings | lfq_bsq_settings)
    figures |= lfq_bsq_figures(ms, figures["matmul_gflops"])
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
