"""Token sampling time per image of the transformer priors vs the MVQ paper's Table 6.

For 1+1, 4+1 and 16+1 tokens with Table 4's model sizes (K = 256: 128 primary + 128 secondary
entries), and 64+1 / 256+1 with the 16+1 model size, it times four samplers in the same run, so
that what caching and what batching each buy is visible on its own:

* ``b1_uncached``: one image at a time, every step recomputing the prefix (the old "naive"
  baseline, ``sample_autoregressive_naive``; only a few images at long lengths);
* ``b1_cached``: one image at a time with the key/value cache (``sample_autoregressive``,
  ``batch_size=1``);
* ``b64_uncached``: batches of 64 without a cache (``sample_autoregressive_naive``,
  ``batch_size=64``; skipped at 256+1 unless ``--full``: minutes);
* ``b64_cached``: batches of 64 with the cache, the sampler mvq uses.

(``b64`` stands for ``--batch``, 64 by default.) Each is reported per image for tokens alone
and for tokens + decode (the 64x64 MVQVAE tokenizer of Table 3, random-init, decoding at the
sampler's batch size, where a tokenizer exists: 1+1, 4+1, 16+1), both against the paper's
Table 6 (Intel i9-9900 CPU, or RTX2080 with ``--device cuda``), which times tokens only.
Speedups: caching at batch 1 and at batch 64, batching without and with the cache, and both
(b1_uncached / b64_cached). At 1+1 there is nothing to cache (one primary token, and the
secondary one reads the whole prefix in one forward either way): the caching speedup there is
the noise floor. The arithmetic of the cached batch sampler is FLOPs per image / time, against
the GEMM throughput measured in the same run at the decoder's step shape.

Priors are random-init: the timing does not depend on the weights. On a shared machine the
figures are noisy. The last printed line is one JSON object with every figure; its
``baselines`` names what each speedup divides by, all measured in this run except Table 6.

Usage: python benchmarks/sampling.py [--device cpu|cuda] [--threads 2] [--batch 64] [--full]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from collections.abc import Callable

import torch

from mvq.core.tokens import Tokens
from mvq.priors import TransformerPrior, create_prior
from mvq.sampling import sample_autoregressive, sample_autoregressive_naive
from mvq.tokenizers import create_tokenizer, list_tokenizers

TABLE6 = {  # seconds per image: (GPU RTX2080, CPU i9-9900)
    "1+1": (0.013, 0.014),
    "4+1": (0.031, 0.070),
    "16+1": (0.098, 0.637),
    "64+1": (0.718, 11.107),
    "256+1": (14.844, 268.368),
}
CASES = [  # tokens, prior preset, primary grid side, batch-1 images, full batches, tokenizer
    ("1+1", "transformer_1p1", 1, 32, 3, "mvqvae_imagenet64_s1_k256"),
    ("4+1", "transformer_4p1", 2, 16, 3, "mvqvae_imagenet64_s4_k256"),
    ("16+1", "transformer_16p1", 4, 8, 2, "mvqvae_imagenet64_s16_k256"),
    ("64+1", "transformer_16p1", 8, 2, 1, None),
    ("256+1", "transformer_16p1", 16, 1, 0, None),  # b64_uncached: minutes; --full runs it once
]
SAMPLERS = ["b1_uncached", "b1_cached", "b64_uncached", "b64_cached"]
SPEEDUPS = {  # name: (slower, faster)
    "caching_at_b1": ("b1_uncached", "b1_cached"),
    "caching_at_b64": ("b64_uncached", "b64_cached"),
    "batching_uncached": ("b1_uncached", "b64_uncached"),
    "batching_cached": ("b1_cached", "b64_cached"),
    "caching_and_batching": ("b1_uncached", "b64_cached"),
}


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


def bench_decode(name: str | None, samples: dict, device: torch.device) -> dict[int, float]:
    """Seconds per image of ``tokenizer.decode`` at batch 1 and at the samples' batch size."""
    if name is None or name not in list_tokenizers():
        return {}
    tokenizer = create_tokenizer(name).to(device).eval()
    tokens = Tokens(samples["primary"].to(device), samples["secondary"].to(device))
    one = Tokens(tokens.indices[:1], tokens.secondary[:1])
    per_image = {}
    with torch.inference_mode():
        for t in (one, tokens):
            batch = t.indices.shape[0]
            per_image[batch] = timed(lambda t=t: tokenizer.decode(t), device, 0.5, (3, 50))[0]
            per_image[batch] /= batch
    return per_image


def time_samplers(case: tuple, args: argparse.Namespace, prior, device: torch.device) -> dict:
    """Best and median seconds per image of the four samplers; None where not run."""
    _, _, _, images, batches, _ = case
    gen = torch.Generator(device).manual_seed(0)
    naive, cached, B = sample_autoregressive_naive, sample_autoregressive, args.batch
    calls = {  # name: (sampler, images per call, batch size, (min runs, max runs))
        "b1_uncached": (naive, 1, 1, (images, images)),  # best of `images` single images
        "b1_cached": (cached, 1, 1, (images, images)),
        "b64_uncached": (naive, B, B, (max(batches, 1), max(batches, 1))),
        "b64_cached": (cached, B, B, (3, 100)),
    }
    out: dict[str, float | None] = {}
    for name, (sampler, n, batch, runs) in calls.items():
        skip = args.no_naive and sampler is naive
        skip |= name == "b64_uncached" and batches == 0 and not args.full
        if skip:
            out[name] = out[f"{name}_median"] = None
            continue
        call = functools.partial(sampler, prior, n, batch_size=batch, generator=gen)
        call()  # warm-up
        min_time = args.min_time if name == "b64_cached" else 0.0
        best, median = timed(call, device, min_time, runs)
        out[name], out[f"{name}_median"] = best / n, median / n
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing."""
    return None if a is None or b is None else a / b


def run_case(case: tuple, args: argparse.Namespace, device: torch.device, peak: dict) -> dict:
    """All figures of one token length."""
    tokens, preset, side, _, _, tokenizer = case
    prior = create_prior(preset, primary_grid=(side, side)).to(device, args.dtype).eval()
    gen = torch.Generator(device).manual_seed(0)
    samples = sample_autoregressive(prior, args.batch, generator=gen)  # tokens to decode
    seconds = time_samplers(case, args, prior, device)
    c = prior.config
    flops = sampler_flops(prior)
    dim = prior.primary.dim
    if dim not in peak:
        peak[dim] = gemm_gflops(args.batch, dim, device, args.dtype)
    paper = TABLE6[tokens][0 if device.type == "cuda" else 1]
    decode = bench_decode(tokenizer, samples, device)
    row: dict[str, object] = {
        "tokens": tokens,
        "prior": preset,
        "params_m": round(sum(p.numel() for p in prior.parameters()) / 1e6, 3),
        "nothing_to_cache": c.primary_len == 1 and c.secondary_len == 1,
        "table6_s": paper,
        "seconds_per_image": {n: seconds[n] for n in SAMPLERS},
        "median_seconds_per_image": {n: seconds[f"{n}_median"] for n in SAMPLERS},
        "speedups": {k: ratio(seconds[a], seconds[b]) for k, (a, b) in SPEEDUPS.items()},
        "speedup_vs_table6": {n: ratio(paper, seconds[n]) for n in SAMPLERS},
        "decode_s": {f"b{b}": t for b, t in decode.items()} or None,
        "gflop_per_image": flops / 1e9,
        "achieved_gflops_b64_cached": flops / seconds["b64_cached"] / 1e9,
        "gemm_peak_gflops": peak[dim],
    }
    if decode:
        with_decode = {}  # decode at the sampler's own batch size
        for n in SAMPLERS:
            decode_s = decode[1 if n.startswith("b1_") else args.batch]
            with_decode[n] = None if seconds[n] is None else seconds[n] + decode_s
        row["tokens_plus_decode_s"] = with_decode
        row["speedup_vs_table6_with_decode"] = {n: ratio(paper, with_decode[n]) for n in SAMPLERS}
    return row


def fmt(x: float | None, spec: str) -> str:
    """``x`` formatted, or "-" when it was not measured."""
    return "-" if x is None else format(x, spec)


def print_table(rows: list[dict]) -> None:
    """Human-readable summary: seconds per image and speedups vs Table 6, then the speedups."""
    print(
        f"{'tokens':>6} {'sampler':>12} {'table6 s':>9} {'tokens s':>10} {'x table6':>9} "
        f"{'+decode s':>10} {'x table6':>9}"
    )
    for r in rows:
        for n in SAMPLERS:
            plus = r.get("tokens_plus_decode_s", {}).get(n)
            plus_x = r.get("speedup_vs_table6_with_decode", {}).get(n)
            print(
                f"{r['tokens']:>6} {n:>12} {r['table6_s']:>9.4g} "
                f"{fmt(r['seconds_per_image'][n], '.3g'):>10} "
                f"{fmt(r['speedup_vs_table6'][n], '.1f'):>9} {fmt(plus, '.3g'):>10} "
                f"{fmt(plus_x, '.1f'):>9}"
            )
    print(f"\n{'tokens':>6} " + " ".join(f"{k:>20}" for k in SPEEDUPS) + f" {'of GEMM':>8}")
    for r in rows:
        note = "  (1+1: nothing to cache)" if r["nothing_to_cache"] else ""
        speed = " ".join(f"{fmt(r['speedups'][k], '.1f'):>20}" for k in SPEEDUPS)
        share = r["achieved_gflops_b64_cached"] / r["gemm_peak_gflops"]
        print(f"{r['tokens']:>6} {speed} {share:>8.0%}{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds per cached timing")
    parser.add_argument("--cases", nargs="*", default=[c[0] for c in CASES], help="e.g. 1+1 16+1")
    parser.add_argument("--no-naive", action="store_true", help="skip the uncached samplers")
    parser.add_argument("--full", action="store_true", help="also b64_uncached at 256+1")
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
    b64 = [r["speedup_vs_table6"]["b64_cached"] for r in rows]
    b64_decode = [
        r["speedup_vs_table6_with_decode"]["b64_cached"]
        for r in rows
        if "speedup_vs_table6_with_decode" in r
    ]
    summary = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "dtype": str(args.dtype).replace("torch.", ""),
        "table6_column": "GPU RTX2080" if device.type == "cuda" else "CPU i9-9900",
        "baselines": {
            "speedup_vs_table6": "the paper's Table 6 seconds per image (tokens only)",
            **{k: f"{a} / {b}, both measured in this run" for k, (a, b) in SPEEDUPS.items()},
        },
        "decode": "random-init 64x64 mvqvae tokenizers, decoding at the sampler's batch size",
        "cases": {r["tokens"]: r for r in rows},
        "min_speedup_vs_table6_b64_cached": min(b64),
        "min_speedup_vs_table6_with_decode_b64_cached": min(b64_decode, default=None),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
