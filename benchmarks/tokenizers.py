"""Training throughput of the tokenizers at 4+1 tokens, K = 16, on Fashion-MNIST-sized input.

One optimizer step (forward, backward, Adam) at batch 32 with the paper's Table 3 networks, in
the trainer's default memory format (channels-last weights and activations);
images per second for VQVAE2 (the baseline), MVQVAE at several J and mask modes, and FSQVAE.
Against the arithmetic limit: each step's matrix-product and convolution FLOPs (torch's
``FlopCounterMode``, the MH-Dropout search included; Adam's elementwise work not counted) give
its GFLOP/s, and ``gemm_fraction_*`` divides that by the rate of a 1024^3 fp32 matrix product
measured in the same run (the machine's practical GEMM peak on these threads). Like the
trainer, it keeps freed host memory mapped (``mvq.core.host_memory``); ``faults_per_step_*``
counts the minor page faults of a timed step, and ``MVQ_KEEP_FREED_MEMORY=0`` measures glibc's
defaults (the baseline of that change: run both on an idle machine).

    python benchmarks/tokenizers.py [--device cuda] [--repeats 20]

Prints a table, then one JSON line (the last line) with every figure and the ratios to VQVAE2.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from mvq.core.host_memory import keep_freed_memory
from mvq.tokenizers import create_tokenizer
from mvq.training.config import TrainConfig
from mvq.training.trainer import memory_format

VARIANTS = {
    "vqvae2": ("vqvae2_fmnist_s4_k16", {}),
    "fsqvae": ("fsqvae_fmnist_s4_k16", {}),
    "mvqvae_j64": ("mvqvae_fmnist_s4_k16", {"num_hypotheses": 64}),
    "mvqvae_j256": ("mvqvae_fmnist_s4_k16", {"num_hypotheses": 256}),
    "mvqvae_j256_per_code": (
        "mvqvae_fmnist_s4_k16",
        {"num_hypotheses": 256, "mask_mode": "per_code"},
    ),
}


def images_per_second(
    name: str, overrides: dict, x: torch.Tensor, repeats: int
) -> tuple[float, float]:
    """Median training throughput over ``repeats`` steps after 3 warm-up steps, and the minor
    page faults per timed step."""
    torch.manual_seed(0)
    fmt = memory_format(TrainConfig())  # the layout the trainer trains in by default
    model = create_tokenizer(name, **overrides).to(x.device, memory_format=fmt).train()
    opt = torch.optim.Adam(model.parameters(), 5e-4, betas=(0.5, 0.9))
    times = []
    for i in range(3 + repeats):
        if i == 3:
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss, _ = model.loss((x, None))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return len(x) / statistics.median(times), faults / repeats


def step_flops(name: str, overrides: dict, x: torch.Tensor) -> int:
    """FLOPs of one training step's forward and backward (matrix products, convolutions)."""
    torch.manual_seed(0)
    model = create_tokenizer(name, **overrides).to(x.device).train()
    with FlopCounterMode(display=False) as counter:
        loss, _ = model.loss((x, None))
        loss.backward()
    return counter.get_total_flops()


def gemm_gflops(device: str, n: int = 1024, repeats: int = 30) -> float:
    """GFLOP/s of an ``n x n x n`` fp32 matrix product (the best of ``repeats`` after two
    warm-ups: the machine's practical peak, what a step's products could reach)."""
    a, b = (torch.randn(n, n, device=device) for _ in range(2))
    times = []
    for i in range(repeats + 2):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kept = keep_freed_memory()  # as the trainer does
    x = torch.rand(32, 1, 28, 28, device=args.device) * 2 - 1
    res: dict[str, float | str | bool] = {"device": args.device, "threads": args.threads}
    res["keep_freed_memory"] = kept
    res["baseline"] = "vqvae2, measured in this run (every *_over_vqvae2 divides by it)"
    gemm = gemm_gflops(args.device)
    print(f"{'tokenizer':>22} {'img/s':>8} {'vs VQVAE2':>10} {'GFLOP/s':>8}")
    for key, (name, overrides) in VARIANTS.items():
        rate, res[f"faults_per_step_{key}"] = images_per_second(name, overrides, x, args.repeats)
        flops = step_flops(name, overrides, x)
        res[f"{key}_images_per_s"] = rate
        res[f"{key}_over_vqvae2"] = rate / res["vqvae2_images_per_s"]
        res[f"{key}_gflop_per_step"] = flops / 1e9
        res[f"gflops_{key}"] = flops * rate / len(x) / 1e9
        ratio, gflops = res[f"{key}_over_vqvae2"], res[f"gflops_{key}"]
        print(f"{key:>22} {rate:>8.0f} {ratio:>10.2f} {gflops:>8.1f}")
    gemm = res["gemm_gflops"] = max(gemm, gemm_gflops(args.device))  # before and after the steps
    print(f"fp32 GEMM 1024^3: {gemm:.1f} GFLOP/s ({args.threads} threads); of that rate:")
    for key in VARIANTS:
        res[f"gemm_fraction_{key}"] = res[f"gflops_{key}"] / gemm
        print(f"{key:>22} {res[f'gemm_fraction_{key}']:>8.0%}")
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}))


if __name__ == "__main__":
    main()
