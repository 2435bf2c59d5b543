"""Token sampling time per image of the transformer priors vs the MVQ paper's Table 6.

For 1+1, 4+1 and 16+1 tokens with Table 4's model sizes (K = 256: 128 primary + 128 secondary
entries), and 64+1 / 256+1 with the 16+1 model size, it measures per image:

* the cached batched sampler (``sample_autoregressive``, batch 64);
* the naive sampler measured in the same run (one image at a time, no cache; only a few images
  at long lengths);
* the paper's Table 6 figure (Intel i9-9900 CPU, or RTX2080 with ``--device cuda``);
* the arithmetic of the cached sampler: FLOPs per image / time, against the GEMM throughput of
  this machine measured at the decoder's step shape;
* decode time per image of the 64x64 MVQVAE tokenizers (random-init) where Table 3 has one
  (1+1, 4+1, 16+1), and tokens + decode against Table 6 (which times tokens only).

Priors are random-init: the timing does not depend on the weights. On a shared machine the
figures are noisy. The last printed line is one JSON object with every figure.

Usage: python benchmarks/sampling.py [--device cpu|cuda] [--threads 2] [--batch 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from mvq.priors import TransformerPrior, create_prior
from mvq.quantizers import Tokens
from mvq.sampling import sample_autoregressive, sample_autoregressive_naive
from mvq.tokenizers import create_tokenizer, list_tokenizers

TABLE6 = {  # seconds per image: (GPU RTX2080, CPU i9-9900)
    "1+1": (0.013, 0.014),
    "4+1": (0.031, 0.070),
    "16+1": (0.098, 0.637),
    "64+1": (0.718, 11.107),
    "256+1": (14.844, 268.368),
}
CASES = [  # tokens, prior preset, primary grid side, naive images, 64x64 tokenizer
    ("1+1", "transformer_1p1", 1, 32, "mvqvae_imagenet64_s1_k256"),
    ("4+1", "transformer_4p1", 2, 16, "mvqvae_imagenet64_s4_k256"),
    ("16+1", "transformer_16p1", 4, 4, "mvqvae_imagenet64_s16_k256"),
    ("64+1", "transformer_16p1", 8, 2, None),
    ("256+1", "transformer_16p1", 16, 1, None),
]


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so that timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    fn: Callable[[], object], device: torch.device, min_time: float, runs: tuple[int, int]
) -> tuple[float, float]:
    """Best and median seconds of a call of ``fn``, over ``runs[0]..runs[1]`` calls or
    ``min_time`` seconds. The best is the least disturbed by other work on a shared machine."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs[1] and (len(times) < runs[0] or time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def decoder_flops(layers: int, dim: int, queries: int, keys_before: int) -> float:
    """FLOPs of ``queries`` new positions after ``keys_before`` cached ones (causal)."""
    dense = queries * layers * 24 * dim * dim  # qkv 3d^2 + proj d^2 + mlp 8d^2, x2 for MACs
    keys = sum(keys_before + i + 1 for i in range(queries))
    return dense + layers * 4 * dim * keys  # q.k and p.v


def sampler_flops(prior: TransformerPrior) -> float:
    """FLOPs per image of ``sample_autoregressive`` (heads on the sampled positions only)."""
    c, p, s = prior.config, prior.primary, prior.secondary
    S, S2 = c.primary_len, c.secondary_len
    total = sum(decoder_flops(len(p.blocks), p.dim, 1, t) for t in range(S))
    total += S * 2 * p.dim * c.primary_vocab
    total += decoder_flops(len(s.blocks), s.dim, S + 1, 0)  # prefix in one forward
    total += sum(decoder_flops(len(s.blocks), s.dim, 1, S + 1 + j) for j in range(S2 - 1))
    return total + S2 * 2 * s.dim * c.secondary_vocab


def gemm_gflops(rows: int, dim: int, device: torch.device, dtype: torch.dtype) -> float:
    """Measured GFLOP/s of the decoder's MLP matmul ``(rows, d) @ (d, 4d)``."""
    a = torch.randn(rows, dim, device=device, dtype=dtype)
    b = torch.randn(dim, 4 * dim, device=device, dtype=dtype)
    best, _ = timed(lambda: a @ b, device, 0.3, (10, 2000))
    return 2 * rows * dim * 4 * dim / best / 1e9


def bench_decode(name: str | None, samples: dict, device: torch.device) -> float | None:
    """Seconds per image of ``tokenizer.decode`` on the sampled tokens, or None."""
    if name is None or name not in list_tokenizers():
        return None
    tokenizer = create_tokenizer(name).to(device).eval()
    tokens = Tokens(samples["primary"].to(device), samples["secondary"].to(device))
    batch = tokens.indices.shape[0]
    with torch.inference_mode():
        return timed(lambda: tokenizer.decode(tokens), device, 0.5, (3, 50))[0] / batch


def run_case(case: tuple, args: argparse.Namespace, device: torch.device, peak: dict) -> dict:
    """All figures of one token length."""
    tokens, preset, side, naive_images, tokenizer = case
    prior = create_prior(preset, primary_grid=(side, side)).to(device, args.dtype).eval()
    gen = torch.Generator(device).manual_seed(0)
    sample = lambda: sample_autoregressive(prior, args.batch, generator=gen)  # noqa: E731
    samples = sample()  # warm-up
    fast, fast_median = (t / args.batch for t in timed(sample, device, args.min_time, (3, 100)))
    naive = naive_median = None
    if not args.no_naive:
        one = lambda: sample_autoregressive_naive(prior, 1, generator=gen)  # noqa: E731
        one()
        naive, naive_median = timed(one, device, 0.0, (naive_images, naive_images))
    flops = sampler_flops(prior)
    dim = prior.primary.dim
    if dim not in peak:
        peak[dim] = gemm_gflops(args.batch, dim, device, args.dtype)
    paper = TABLE6[tokens][0 if device.type == "cuda" else 1]
    decode = bench_decode(tokenizer, samples, device)
    return {
        "tokens": tokens,
        "prior": preset,
        "params_m": round(sum(p.numel() for p in prior.parameters()) / 1e6, 3),
        "table6_s": paper,
        "fast_s": fast,
        "fast_median_s": fast_median,
        "naive_s": naive,
        "naive_median_s": naive_median,
        "speedup_vs_table6": paper / fast,
        "speedup_vs_naive": None if naive is None else naive / fast,
        "gflop_per_image": flops / 1e9,
        "achieved_gflops": flops / fast / 1e9,
        "gemm_peak_gflops": peak[dim],
        "decode_s": decode,
        "tokens_plus_decode_s": None if decode is None else fast + decode,
        "speedup_vs_table6_with_decode": None if decode is None else paper / (fast + decode),
    }


def print_table(rows: list[dict]) -> None:
    """Human-readable summary."""
    head = f"{'tokens':>6} {'params':>7} {'table6 s':>9} {'cached s':>10} {'naive s':>9} "
    head += f"{'x table6':>9} {'x naive':>8} {'GFLOP/s':>8} {'of GEMM':>8} {'decode s':>10}"
    print(head)
    for r in rows:
        naive = "-" if r["naive_s"] is None else f"{r['naive_s']:.4g}"
        ratio = "-" if r["speedup_vs_naive"] is None else f"{r['speedup_vs_naive']:.1f}"
        decode = "n/a" if r["decode_s"] is None else f"{r['decode_s']:.3g}"
        print(
            f"{r['tokens']:>6} {r['params_m']:>6.2f}M {r['table6_s']:>9.4g} {r['fast_s']:>10.3g} "
            f"{naive:>9} {r['speedup_vs_table6']:>9.0f} {ratio:>8} "
            f"{r['achieved_gflops']:>8.1f} {r['achieved_gflops'] / r['gemm_peak_gflops']:>8.0%} "
            f"{decode:>10}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds per cached timing")
    parser.add_argument("--cases", nargs="*", default=[c[0] for c in CASES], help="e.g. 1+1 16+1")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    peak: dict[int, float] = {}
    rows = [run_case(c, args, device, peak) for c in CASES if c[0] in args.cases]
    setup = f"device {device} ({torch.get_num_threads()} threads), batch {args.batch}, {args.dtype}"
    print(f"{setup}, random-init priors; best-of-runs seconds per image (shared machine)")
    print_table(rows)
    naive_16 = next((r["speedup_vs_naive"] for r in rows if r["tokens"] == "16+1"), None)
    summary = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "dtype": str(args.dtype).replace("torch.", ""),
        "table6_column": "GPU RTX2080" if device.type == "cuda" else "CPU i9-9900",
        "decode": "random-init 64x64 mvqvae tokenizers, batch decode (Table 6 times tokens only)",
        "cases": {r["tokens"]: r for r in rows},
        "min_speedup_vs_table6": min(r["speedup_vs_table6"] for r in rows),
        "min_speedup_vs_table6_with_decode": min(
            (r["speedup_vs_table6_with_decode"] for r in rows if r["decode_s"] is not None),
            default=None,
        ),
        "speedup_vs_naive_16p1": naive_16,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
