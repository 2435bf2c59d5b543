"""Forward+backward time of our quantizers against vector-quantize-pytorch on the CPU (2 threads).

    python benchmarks/quantizers.py [--rounds 5] [--repeats 30]

Cases (training mode, backward on ``mean(quantized**2) + aux loss``):
  1. VQ, K = 512 codes of D = 64, input (32, 256, 64): ``VectorQuantizer`` (ours, takes the
     channel-first view (B, C, N)), ``vector_quantize_pytorch.VectorQuantize`` (channel-last, its
     default EMA codebook) and a plain ``torch.cdist`` + ``argmin`` VQ for reference. The distance
     matmul costs 2·N·K·D flops; the same matmul alone gives the arithmetic limit.
  2. FSQ, levels (8, 5, 5, 5), input (32, 256, 4): ``FSQ`` (ours, channel-first view again) and
     ``vector_quantize_pytorch.FSQ``. Ours also checks its input for NaN/Inf and computes usage
     and perplexity (timed apart as ``fsq_input_check`` and ``fsq_codebook_stats``); theirs
     does neither. ``quantize()`` alone compares the two quantisers without the module around.
Each figure is the median over ``rounds`` of per-round medians; the cases are interleaved in
every round so that load from other processes hits all of them alike. Prints a table, then, as
the last line, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mvq.quantizers.base import check_feature_map, codebook_stats
from mvq.quantizers.fsq import FSQ
from mvq.quantizers.vq import VectorQuantizer

try:
    import vector_quantize_pytorch as vqp
except ImportError as err:  # no fake numbers: the comparison needs the reference library
    raise SystemExit("benchmarks need vector-quantize-pytorch: pip install -e '.[bench]'") from err

B, N, D, K = 32, 256, 64, 512
LEVELS = (8, 5, 5, 5)


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


def vq_cases() -> dict[str, Callable[[], object]]:
    """Forward+backward steps of the three VQs and the forward-only / matmul-only figures."""
    x = torch.randn(B, N, D, requires_grad=True)  # (B, N, D) channel-last
    z = x.detach().transpose(1, 2).requires_grad_()  # (B, D, N) view, what ours takes
    ours, theirs, cdist = (
        VectorQuantizer(K, D),
        vqp.VectorQuantize(dim=D, codebook_size=K),
        CdistVQ(),
    )
    ours_ema = VectorQuantizer(K, D, ema=True)
    ours_eval = VectorQuantizer(K, D).eval()
    flat, codebook_t = torch.randn(B * N, D), torch.randn(D, K)

    def ours_out(vq: VectorQuantizer) -> tuple[torch.Tensor, torch.Tensor]:
        out = vq(z)
        return out.quantized, out.loss

    def forward_only() -> None:
        with torch.no_grad():
            ours_eval(z)

    return {
        "vq_ours": fwd_bwd(lambda: ours_out(ours)),
        "vq_ours_ema": fwd_bwd(lambda: ours_out(ours_ema)),
        "vq_vqpytorch": fwd_bwd(lambda: theirs(x)[::2]),  # (quantized, indices, loss)
        "vq_cdist": fwd_bwd(lambda: cdist(x)),
        "vq_forward_ours": forward_only,
        "vq_distance_matmul": lambda: torch.mm(flat, codebook_t),
    }


def fsq_cases() -> dict[str, Callable[[], object]]:
    """Forward+backward steps of both FSQs, their quantize alone, and our module's overheads."""
    x = torch.randn(B, N, len(LEVELS), requires_grad=True)  # (B, N, d) channel-last
    z = x.detach().transpose(1, 2).requires_grad_()  # (B, d, N) view, what ours takes
    ours, theirs = FSQ(LEVELS), vqp.FSQ(levels=list(LEVELS))
    zero = torch.zeros(())
    indices = ours(z).indices
    return {
        "fsq_ours": fwd_bwd(lambda: (lambda out: (out.quantized, out.loss))(ours(z))),
        "fsq_vqpytorch": fwd_bwd(lambda: (theirs(x)[0], zero)),  # (quantized, indices)
        "fsq_quantize_ours": fwd_bwd(lambda: (ours.quantize(x), zero)),
        "fsq_quantize_vqpytorch": fwd_bwd(lambda: (theirs.quantize(x), zero)),
        "fsq_input_check": lambda: check_feature_map(z, len(LEVELS)),
        "fsq_codebook_stats": lambda: codebook_stats(indices, ours.codebook_size),
    }


def measure(cases: dict[str, Callable[[], object]], rounds: int, repeats: int) -> dict[str, float]:
    """Median over rounds of each case's median time in ms, the cases interleaved per round."""
    per_round: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            per_round[name].append(time_fn(fn, repeats=repeats) * 1e3)
    return {name: statistics.median(ms) for name, ms in per_round.items()}


def report(ms: dict[str, float]) -> dict[str, float | int | str]:
    """Print the table and return every figure for the JSON line."""
    flops = 2 * B * N * K * D  # the distance matmul of the VQ forward
    figures: dict[str, float | int | str] = {f"{name}_ms": round(t, 4) for name, t in ms.items()}
    figures |= {
        "vq_time_over_vqpytorch": ms["vq_ours"] / ms["vq_vqpytorch"],
        "vq_time_over_cdist": ms["vq_ours"] / ms["vq_cdist"],
        "vq_ema_time_over_vqpytorch": ms["vq_ours_ema"] / ms["vq_vqpytorch"],
        "fsq_time_over_vqpytorch": ms["fsq_ours"] / ms["fsq_vqpytorch"],
        "fsq_quantize_time_over_vqpytorch": ms["fsq_quantize_ours"] / ms["fsq_quantize_vqpytorch"],
        "vq_forward_flops": flops,
        "vq_forward_gflops": flops / ms["vq_forward_ours"] / 1e6,
        "matmul_gflops": flops / ms["vq_distance_matmul"] / 1e6,
        "vq_forward_fraction_of_matmul_limit": ms["vq_distance_matmul"] / ms["vq_forward_ours"],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "vector_quantize_pytorch": getattr(vqp, "__version__", "unknown"),
    }
    rows = [
        ("VQ K=512 D=64 (32,256,64) fwd+bwd", "vq_ours", "vq_vqpytorch"),
        ("  ours EMA vs vqpytorch (EMA)", "vq_ours_ema", "vq_vqpytorch"),
        ("  ours vs cdist+argmin", "vq_ours", "vq_cdist"),
        ("  forward only (eval, no grad) vs matmul", "vq_forward_ours", "vq_distance_matmul"),
        ("FSQ (8,5,5,5) (32,256,4) fwd+bwd", "fsq_ours", "fsq_vqpytorch"),
        ("  quantize() only", "fsq_quantize_ours", "fsq_quantize_vqpytorch"),
    ]
    print(f"{'case':44s} {'ours ms':>9s} {'other ms':>9s} {'ratio':>7s}")
    for label, a, b in rows:
        print(f"{label:44s} {ms[a]:9.3f} {ms[b]:9.3f} {ms[a] / ms[b]:7.2f}")
    print(
        f"VQ distance matmul: {flops / 1e6:.0f} MFLOP, limit {figures['matmul_gflops']:.1f} "
        f"GFLOP/s; our forward reaches {figures['vq_forward_gflops']:.1f} GFLOP/s "
        f"({100 * figures['vq_forward_fraction_of_matmul_limit']:.0f}% of the limit)"
    )
    print(
        f"FSQ module overheads inside fsq_ours: input check {ms['fsq_input_check']:.3f} ms, "
        f"codebook_stats {ms['fsq_codebook_stats']:.3f} ms (vqpytorch computes neither)"
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ms = measure(vq_cases() | fsq_cases(), args.rounds, args.repeats)
    print(json.dumps(report(ms)))


if __name__ == "__main__":
    main()
