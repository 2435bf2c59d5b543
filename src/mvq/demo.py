"""The main job (``make demo``): MVQVAE against VQ-VAE-2 on Fashion-MNIST at 4+1 tokens, K=16.

Trains both tokenizers for the same number of steps with the paper's optimiser (Table 2), then
writes to ``--out`` (default ``runs/demo``):

- ``mvqvae/`` and ``vqvae2/``: run directories (checkpoints, logs, ``model/`` to load),
- ``reconstructions.png``: the same test images, rows: originals, VQ-VAE-2, MVQVAE,
- ``metrics.md`` / ``metrics.json``: test MSE, codebook usage, bits per image, throughput.

    mvq demo [--steps 1500] [--out runs/demo]

Re-running resumes the two runs from their checkpoints (a finished run is only re-evaluated).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from mvq.runconfig import RunConfig
from mvq.tokenizers import load_tokenizer
from mvq.train_tokenizer import (
    build_splits,
    evaluate_tokenizer,
    first_images,
    to_unit,
    train_tokenizer,
)
from mvq.training import checkpoint_path

MODELS = {"vqvae2": "vqvae2_fmnist_s4_k16", "mvqvae": "mvqvae_fmnist_s4_k16"}


def demo_config(model: str, steps: int, num_hypotheses: int, data_root: str | None) -> RunConfig:
    """Run config of one demo model: Table 2 optimiser, ``steps`` steps, J masks for MVQ."""
    model_config = {"num_hypotheses": num_hypotheses} if model.startswith("mvqvae") else {}
    train = {"max_steps": steps, "batch_size": 32, "log_every": 50, "ckpt_every": 250,
             "sample_every": steps, "val_every": steps, "val_batches": 50, "seed": 0}  # fmt: skip
    # Debian's files when installed, else torchvision downloads into the user cache
    data = {"name": "fashion_mnist", "root": data_root, "download": True}
    return RunConfig(model, model_config, data, train)


def run_one(name: str, cfg: RunConfig, out: Path) -> dict[str, float]:
    """Train (or resume / reuse) one model, then evaluate it on the whole test split."""
    run_dir = out / name
    done = (run_dir / "model" / "config.json").is_file()
    t0 = time.perf_counter()
    throughput = float("nan")
    if not done:
        resume = checkpoint_path(run_dir).is_file()
        _, result = train_tokenizer(cfg, run_dir, resume=resume)
        throughput = result.items_per_second
    model = load_tokenizer(run_dir / "model")
    _, test = build_splits(cfg, model)
    metrics = evaluate_tokenizer(model, test)
    metrics |= {"train_seconds": time.perf_counter() - t0, "images_per_s": throughput}
    return metrics


def write_report(out: Path, metrics: dict[str, dict[str, float]], steps: int) -> str:
    """``metrics.json`` and a Markdown table; returns the table."""
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    lines = [
        f"Fashion-MNIST test split (10,000 images), 4+1 tokens, K=16, {steps} steps each.",
        "",
        "| model | test MSE | primary usage | secondary usage | bits/image | train img/s |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in metrics.items():
        lines.append(
            f"| {name} | {m['mse']:.4f} | {m['primary_usage']:.2f} | {m['secondary_usage']:.2f} "
            f"| {m['bits_per_image']:.0f} | {m['images_per_s']:.0f} |"
        )
    table = "\n".join(lines) + "\n"
    (out / "metrics.md").write_text(table)
    return table


def write_grid(out: Path, cfg: RunConfig, n: int = 12) -> None:
    """Rows: test originals, VQ-VAE-2 reconstructions, MVQVAE reconstructions."""
    rows = []
    for name in MODELS:
        model = load_tokenizer(out / name / "model").eval()
        _, test = build_splits(cfg, model)
        x = first_images(test, n)
        torch.manual_seed(0)
        with torch.no_grad():
            rows.append(model(x).recon)
    grid = make_grid(to_unit(torch.cat([x, *rows])), nrow=n, padding=2, pad_value=1.0)
    save_image(grid, out / "reconstructions.png")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The demo's options (shared by ``mvq demo`` and ``python -m mvq.demo``)."""
    ap.add_argument("--out", default="runs/demo", help="output directory")
    ap.add_argument("--steps", type=int, default=1500, help="training steps per model")
    ap.add_argument("--num-hypotheses", type=int, default=64, help="MH-Dropout J")
    ap.add_argument("--data-root", default=None, help="Fashion-MNIST folder (default: Debian's)")


def run(args: argparse.Namespace) -> None:
    """Train, evaluate and report both models."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    out = Path(args.out)
    metrics = {}
    for name, registered in MODELS.items():
        print(f"== {name} ({registered}), {args.steps} steps", flush=True)
        cfg = demo_config(registered, args.steps, args.num_hypotheses, args.data_root)
        metrics[name] = run_one(name, cfg, out)
    write_grid(out, cfg)
    print(write_report(out, metrics, args.steps))
    print(f"wrote {out}/reconstructions.png, {out}/metrics.md")


if __name__ == "__main__":
    from mvq.cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))
