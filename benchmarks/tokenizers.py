"""Training throughput of the tokenizers at 4+1 tokens, K = 16, on Fashion-MNIST-sized input.

One optimizer step (forward, backward, Adam) at batch 32 with the paper's Table 3 networks;
images per second for VQVAE2 (the baseline), MVQVAE at several J and mask modes, and FSQVAE.

    python benchmarks/tokenizers.py [--device cuda] [--repeats 20]

Prints a table, then one JSON line (the last line) with every figure and the ratios to VQVAE2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mvq.tokenizers import create_tokenizer

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


def images_per_second(name: str, overrides: dict, x: torch.Tensor, repeats: int) -> float:
    """Median training throughput over ``repeats`` steps after 3 warm-up steps."""
    torch.manual_seed(0)
    model = create_tokenizer(name, **overrides).to(x.device).train()
    opt = torch.optim.Adam(model.parameters(), 5e-4, betas=(0.5, 0.9))
    times = []
    for i in range(3 + repeats):
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
    return len(x) / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.rand(32, 1, 28, 28, device=args.device) * 2 - 1
    res: dict[str, float | str] = {"device": args.device, "threads": args.threads}
    res["baseline"] = "vqvae2, measured in this run (every *_over_vqvae2 divides by it)"
    print(f"{'tokenizer':>22} {'img/s':>8} {'vs VQVAE2':>10}")
    for key, (name, overrides) in VARIANTS.items():
        rate = images_per_second(name, overrides, x, args.repeats)
        res[f"{key}_images_per_s"] = rate
        res[f"{key}_over_vqvae2"] = rate / res["vqvae2_images_per_s"]
        print(f"{key:>22} {rate:>8.0f} {res[f'{key}_over_vqvae2']:>10.2f}")
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}))


if __name__ == "__main__":
    main()
