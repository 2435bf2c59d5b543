"""Training throughput of the shared trainer: images/s with fp32, bf16, fp16 and torch.compile.

Also fp32 with ``train.fused_optimizer`` (torch's fused Adam) against the default Adam loop.
Runs ``mvq.training.train`` on random 28x28 images (B = 32, the Fashion-MNIST tokenizers) for
``--steps`` steps per setting and reports the trainer's own ``items_per_second`` (the first 3
steps are warm-up; host syncs only every ``log_every`` = ``--steps`` steps). On a CPU, bf16 only
pays off with AMX/AVX512-BF16 GEMMs and the quantizers stay fp32; TF32 is on for CUDA runs.

    python benchmarks/train_step.py [--device cuda] [--compile] [--model vqvae2_fmnist_s4_k16]

Prints a table, then one JSON line with every figure (the last line).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import torch
from torch.utils.data import TensorDataset

from mvq.tokenizers import create_tokenizer
from mvq.training import TrainConfig, train


def images_per_second(
    args: argparse.Namespace, precision: str, compiled: bool, fused: bool = False
) -> tuple[float, bool]:
    """The trainer's throughput over ``args.steps`` steps of one setting, and whether the run
    ended compiled (the trainer falls back to eager when inductor's stride check fails)."""
    torch.manual_seed(0)
    extra = {"num_hypotheses": args.j} if args.model.startswith("mvqvae") else {}
    model = create_tokenizer(args.model, **extra)
    x = torch.rand(args.batch_size * args.steps, 1, 28, 28) * 2 - 1
    data = TensorDataset(x, torch.zeros(len(x), dtype=torch.long))
    cfg = TrainConfig(
        batch_size=args.batch_size,
        max_steps=args.steps,
        log_every=args.steps,
        ckpt_every=10**9,
        sample_every=10**9,
        device=args.device,
        precision=precision,
        compile=compiled,
        tf32=True,
        fused_optimizer=fused,
    )
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(model, data, None, cfg, os.path.join(run_dir, "run"))
    return result.items_per_second, result.compiled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="mvqvae_fmnist_s4_k16")
    ap.add_argument("--j", type=int, default=256, help="MVQ hypotheses per pass")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--precisions", default="fp32,bf16,fp16")
    ap.add_argument("--compile", action="store_true", help="also each precision compiled")
    args = ap.parse_args()
    res: dict[str, object] = {
        "model": args.model,
        "device": args.device,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
    }
    print(f"{'setting':<16}{'images/s':>10}")
    for compiled in (False, True) if args.compile else (False,):
        for precision in args.precisions.split(","):
            name = f"{precision}{'_compile' if compiled else ''}"
            rate, ran_compiled = images_per_second(args, precision, compiled)
            res[f"images_per_s_{name}"] = round(rate, 1)
            if compiled:  # False: the compiled graph failed its first step, this ran eager
                res[f"ran_compiled_{name}"] = ran_compiled
            note = "" if ran_compiled == compiled else "  (fell back to eager)"
            print(f"{name:<16}{rate:>10.1f}{note}")
    if "fp32" in args.precisions.split(","):  # train.fused_optimizer, against the loop above
        rate, _ = images_per_second(args, "fp32", False, fused=True)
        res["images_per_s_fp32_fused_adam"] = round(rate, 1)
        res["fused_adam_over_loop_fp32"] = round(rate / res["images_per_s_fp32"], 3)
        print(f"{'fp32_fused_adam':<16}{rate:>10.1f}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
