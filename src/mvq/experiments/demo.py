"""The main job (``make demo``): MVQVAE against VQ-VAE-2 on Fashion-MNIST at 4+1 tokens, K=16.

1. trains both tokenizers for the same number of steps with the paper's Adam (Table 2: betas
   0.5/0.9, batch 32) at a short run's learning rate (1e-3 decayed to 0 on a cosine: 800 steps
   reach what 1,000 constant-lr 5e-4 steps did, over 3 seeds; see ``DEMO_LR``);
2. encodes Fashion-MNIST with each (``mvq encode``) and trains a Table 4 transformer prior
   (``transformer_4p1``) on each token set for the same number of steps: one epoch of the
   training images it reads (600 steps x 64 = the first 38,400; only those are encoded) and the
   NLL on all 10,000 test images;
3. samples images from each pair and evaluates everything on the test split, with
   ``mvq eval``: reconstruction MSE/PSNR/SSIM and ``fd_fmnist`` (also with a random mask for
   MVQ), and ``fd_fmnist`` and the PRD F-scores of 5,000 samples (``--subset`` of them in quick
   runs). ``fd_fmnist`` uses the Fashion-MNIST classifier that mvq ships (nothing to train).

On a CPU the two models' steps 1-3 run at once, each in its own process on one thread
(``side_by_side``: 0.8x the wall time of one after the other on two threads, Zen 5 EPYC);
``--one-at-a-time`` (and any GPU) runs them in turn.

Writes to ``--out`` (default ``runs/demo``):

- ``<model>.log``: what that model's steps printed, when they ran side by side;
- ``<model>/``: the tokenizer run (checkpoints, logs, ``model/``); ``<model>_tokens/``;
  ``<model>_prior/`` (the prior run, ``model/``);
- ``reconstructions.png``: the same test images, rows: originals, VQ-VAE-2, MVQVAE;
- ``samples_<model>.png``: 64 sampled images per tokenizer;
- ``eval_<model>/`` and ``eval_<model>_samples/``: ``mvq eval``'s ``eval.json`` / ``eval.csv``;
- ``metrics.md`` / ``metrics.json``: test MSE, codebook usage, bits per image, prior NLL,
  training throughput, sampling time, reconstruction and sample ``fd_fmnist`` (with the floor of
  two real halves) and the F-scores.

    mvq demo [--steps 1500] [--prior-steps 1000] [--out runs/demo]

Re-running resumes unfinished runs from their checkpoints and reuses finished ones.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset
from torchvision.utils import make_grid, save_image

from mvq.core.device import resolve_device
from mvq.core.pixels import to_unit
from mvq.core.token_files import read_token_meta, tokenizer_identity
from mvq.data import build_dataset, dataset_info
from mvq.experiments.side_by_side import run_side_by_side
from mvq.priors import load_prior
from mvq.report.page import write_report as write_page
from mvq.sampling.pipeline import SampleOptions, sample_images
from mvq.tokenizers import MVQVAE, TOKENIZERS, Tokenizer, load_tokenizer
from mvq.tokenizers.apply import encode_dataset
from mvq.training import checkpoint_path
from mvq.training.config import DEVICE_HELP
from mvq.training.prior_job import train_prior
from mvq.training.runconfig import RunConfig
from mvq.training.tokenizer_job import (
    build_splits,
    first_images,
    train_tokenizer,
)

MODELS = {"vqvae2": "vqvae2_fmnist_s4_k16", "mvqvae": "mvqvae_fmnist_s4_k16"}
# The demo's tokenizer schedule: Table 2's 5e-4 is for long runs; a short run does better with
# twice the rate decayed to 0. Seeds 0-2, Xeon, 800 steps: VQ-VAE-2 recon / sample fd_fmnist
# 92.8 / 100.2 and MVQVAE 93.8 / 114.6 (means) against 1,000 constant-5e-4 steps' 88.7 ± 7.1 /
# 96.1 ± 6.5 and 93.1 ± 10.3 / 120.1 ± 16.3 (Zen 5): within a seed, for 20% fewer steps.
DEMO_LR = {"lr": 1e-3, "lr_schedule": "cosine"}
DEMO_STEPS = 800
PRIOR = "transformer_4p1"


def demo_config(
    model: str,
    steps: int,
    num_hypotheses: int,
    data_root: str | None,
    device: str = "auto",
    seed: int = 0,
) -> RunConfig:
    """Run config of one demo tokenizer: Table 2's Adam at the demo's schedule (``DEMO_LR``),
    ``steps`` steps, J masks for MVQ, training seed ``seed``."""
    masked = issubclass(TOKENIZERS.entry(model).cls, MVQVAE)
    model_config = {"num_hypotheses": num_hypotheses} if masked else {}
    train = {
        "max_steps": steps,
        "batch_size": 32,
        "log_every": 50,
        "ckpt_every": 250,
        "sample_every": steps,
        "val_every": steps,
        "val_batches": 50,
        "seed": seed,
        "device": device,
        **DEMO_LR,
        "fused_optimizer": True,  # one Adam kernel: ~3x faster updates on a CPU, rounding aside
    }
    # Debian's files when installed, else torchvision downloads into the user cache
    data = {"name": "fashion_mnist", "root": data_root, "download": True}
    return RunConfig(model, model_config, data, train)


PRIOR_BATCH = 64


def prior_config(steps: int, device: str = "auto", seed: int = 0) -> RunConfig:
    """Run config of a demo prior: Table 4's 4+1 transformer, GPT-style Adam, batch 64."""
    train = {
        "max_steps": steps,
        "batch_size": PRIOR_BATCH,
        "lr": 1e-3,
        "betas": [0.9, 0.95],
        "log_every": 50,
        "ckpt_every": 250,
        "val_every": steps,
        "seed": seed,
        "device": device,
        "fused_optimizer": True,
    }
    return RunConfig(PRIOR, {}, {}, train)


def finished(run_dir: Path) -> bool:
    return (run_dir / "model" / "config.json").is_file()


def splits(cfg: RunConfig, model: Tokenizer, subset: int | None) -> tuple[Dataset, Dataset]:
    """Train and test splits, cut to their first ``subset`` images when given."""
    parts = build_splits(cfg, model)
    if subset is None:
        return parts
    return tuple(Subset(p, range(min(subset, len(p)))) for p in parts)  # type: ignore[return-value]


def run_tokenizer(name: str, cfg: RunConfig, out: Path) -> dict[str, float]:
    """Train (or resume / reuse) one tokenizer; its training images/s."""
    run_dir = out / name
    previous = out / "metrics.json"  # a reused run keeps the throughput measured when it trained
    old = json.loads(previous.read_text()).get(name, {}) if previous.is_file() else {}
    throughput = old.get("images_per_s", float("nan"))
    if not finished(run_dir):
        _, result = train_tokenizer(cfg, run_dir, resume=checkpoint_path(run_dir).is_file())
        throughput = result.items_per_second
    return {"images_per_s": throughput}  # its test metrics: mvq eval's (evaluate_models)


def run_prior(
    name: str, cfg: RunConfig, steps: int, out: Path, subset: int | None
) -> dict[str, float]:
    """Encode the data with the trained tokenizer, train the prior, sample 64 images (all on
    the device of ``cfg.train``, with its seed). Only the training images the prior reads are
    encoded (``steps`` x ``PRIOR_BATCH``, one epoch of them, instead of all 60,000): a third of
    this stage's time went to encoding; over seeds 0-2 the prior's NLL moved by < 0.01
    nats/token and sample fd_fmnist by less than a seed's spread."""
    device = resolve_device(cfg.train.get("device", "auto"))
    seed = int(cfg.train.get("seed", 0))
    tok_dir, tokens, run_dir = out / name / "model", out / f"{name}_tokens", out / f"{name}_prior"
    tokenizer = load_tokenizer(tok_dir).to(device)
    if not (tokens / "meta.json").is_file():
        train_set, val_set = splits(cfg, tokenizer, subset)
        read = min(len(train_set), steps * PRIOR_BATCH)  # (steps x batch) sequences, one epoch
        train_set = Subset(train_set, range(read))
        encode_dataset(
            tokenizer,
            {"train": train_set, "val": val_set},
            tokens,
            tokenizer_identity(tokenizer, tok_dir),
            cfg.data,
            dataset_info("fashion_mnist").num_classes,
        )
    if not finished(run_dir):
        train_prior(
            prior_config(steps, str(device), seed),
            tokens,
            run_dir,
            checkpoint_path(run_dir).is_file(),
        )
    csv = (run_dir / "metrics.csv").read_text().splitlines()
    val = {r.split(",")[2]: float(r.split(",")[3]) for r in csv if ",val," in r}
    prior = load_prior(run_dir / "model").to(device)
    t0 = time.perf_counter()
    images, _ = sample_images(tokenizer, prior, 64, SampleOptions(), seed=seed)
    seconds = time.perf_counter() - t0
    save_big(
        make_grid(to_unit(images), nrow=16, padding=2, pad_value=1.0), out / f"samples_{name}.png"
    )
    h, w = read_token_meta(tokens)["layout"]["primary_grid"]
    return {
        "prior_val_nll": val["nll"],
        "prior_val_bits_per_image": val["bits_per_image"],
        "sample_seconds_per_image": seconds / 64,
        "tokens_per_image": h * w + 1,
    }


def evaluate_models(name: str, out: Path, args: argparse.Namespace) -> dict[str, float]:
    """``mvq eval`` of the tokenizer (reconstructions) and of its prior's samples."""
    from mvq.eval.evaluate import EvalRequest, run_eval
    from mvq.metrics.fd_fmnist import classifier_label

    tokenizer, prior = out / name / "model", out / f"{name}_prior" / "model"
    common = {"root": args.data_root, "seed": args.seed, "device": args.device}
    # no FID/LPIPS: minutes on a CPU
    recon_metrics = "mse,psnr,ssim,fd_fmnist,usage,bits_per_image"
    if issubclass(TOKENIZERS.entry(MODELS[name]).cls, MVQVAE):
        recon_metrics += ",random_mask"  # only MVQ has a mask
    recon = run_eval(
        EvalRequest(out / f"eval_{name}", tokenizer, n=args.subset, metrics=recon_metrics, **common)
    )
    samples = run_eval(
        EvalRequest(
            out / f"eval_{name}_samples",
            tokenizer,
            prior,
            n=args.subset or args.eval_samples,
            metrics="fd_fmnist,f_scores",
            **common,
        )
    )
    keys = (
        "mse",
        "bits_per_image",
        "psnr",
        "ssim",
        "fd_fmnist",
        "fd_fmnist_floor",
        "random_mask_mse",
        "random_mask_fd_fmnist",
    )
    picked = {k: recon[k] for k in keys if k in recon}
    picked |= {f"{part}_usage": recon[f"usage_{part}"] for part in ("primary", "secondary")}
    picked |= {k: samples[k] for k in ("sample_fd_fmnist", "sample_f8", "sample_f1_8")}
    others = {classifier_label(r["meta"].get("fd_fmnist_classifier")) for r in (recon, samples)}
    if others - {None}:  # not mvq's shipped classifier: the table names it
        picked["fd_classifier"] = ", ".join(sorted(others - {None}))
    return picked | {"sample_fd_fmnist_floor": samples["fd_fmnist_floor"]}


def write_report(out: Path, metrics: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    """``metrics.json`` and a Markdown table; returns the table."""
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    from mvq.metrics.fd_fmnist import SHIPPED_KEY

    first = next(iter(metrics.values()))
    others = sorted({m["fd_classifier"] for m in metrics.values() if m.get("fd_classifier")})
    which = (
        f"classifier {', '.join(others)}, NOT mvq's shipped one"
        if others
        else f"mvq's shipped Fashion-MNIST classifier {SHIPPED_KEY}"
    )
    lines = [
        f"Fashion-MNIST test split ({args.subset or 10_000} images), 4+1 tokens, K=16 (8+8); "
        f"tokenizers {args.steps} steps, priors ({PRIOR}) {args.prior_steps} steps, "
        f"seed {args.seed}. "
        f"fd_fmnist: Fréchet distance on the features of {which} (not FID); "
        f"two real halves of the test split are {first['fd_fmnist_floor']:.3g} apart, "
        f"{first['sample_fd_fmnist_floor']:.3g} at the samples' size. "
        f"F_8 / F_1/8: PRD recall / precision of {args.subset or args.eval_samples} samples.",
        "",
        "| model | test MSE | primary usage | secondary usage | bits/image | train img/s "
        "| prior val NLL (nats/token) | prior bits/image | sampling s/image | recon fd_fmnist "
        "| random-mask fd_fmnist | sample fd_fmnist | F_8 | F_1/8 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in metrics.items():
        random_mask = f"{m['random_mask_fd_fmnist']:.2f}" if "random_mask_fd_fmnist" in m else "—"
        lines.append(
            f"| {name} | {m['mse']:.4f} | {m['primary_usage']:.2f} | {m['secondary_usage']:.2f} "
            f"| {m['bits_per_image']:.0f} | {m['images_per_s']:.0f} | {m['prior_val_nll']:.3f} "
            f"| {m['prior_val_bits_per_image']:.2f} | {m['sample_seconds_per_image']:.5f} "
            f"| {m['fd_fmnist']:.2f} | {random_mask} "
            f"| {m['sample_fd_fmnist']:.2f} | {m['sample_f8']:.3f} | {m['sample_f1_8']:.3f} |"
        )
    table = "\n".join(lines) + "\n"
    (out / "metrics.md").write_text(table)
    return table


def write_grid(out: Path, cfg: RunConfig, n: int = 12) -> None:
    """Rows: test originals, VQ-VAE-2 reconstructions, MVQVAE reconstructions."""
    rows = []
    for name in MODELS:
        model = load_tokenizer(out / name / "model")
        _, test = build_splits(cfg, model)
        x = first_images(test, n)
        with torch.no_grad():  # MVQ's mask search seeded with 0
            rows.append(model(x, torch.Generator(x.device).manual_seed(0)).recon)
    grid = make_grid(to_unit(torch.cat([x, *rows])), nrow=n, padding=2, pad_value=1.0)
    save_big(grid, out / "reconstructions.png")


def save_big(grid: torch.Tensor, path: Path, scale: int = 3) -> None:
    """Save a grid of 28-pixel images enlarged ``scale`` times (nearest) to be readable."""
    save_image(F.interpolate(grid[None], scale_factor=scale, mode="nearest")[0], path)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The demo's options (``mvq demo``)."""
    ap.add_argument("--out", default="runs/demo", help="output directory")
    ap.add_argument("--steps", type=int, default=DEMO_STEPS, help="training steps per tokenizer")
    ap.add_argument("--prior-steps", type=int, default=600, help="training steps per prior")
    ap.add_argument("--eval-samples", type=int, default=5000, help="samples per prior for mvq eval")
    ap.add_argument("--num-hypotheses", type=int, default=64, help="MH-Dropout J")
    ap.add_argument("--data-root", default=None, help="Fashion-MNIST folder (default: Debian's)")
    ap.add_argument(
        "--subset", type=int, help="encode/evaluate only the first N images (quick runs)"
    )
    ap.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default: auto)")
    ap.add_argument(
        "--one-at-a-time",
        action="store_true",
        help="train the two models one after the other on all threads (default on a CPU: "
        "side by side, one thread each, which finishes sooner at batch 32)",
    )
    ap.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the tokenizers' and priors' training, the samples and mvq eval (default 0; "
        "rerun with others into other --out folders to see how far one seed decides)",
    )


def cpu_model() -> str:
    """The CPU's model name and its widest vector extension (``/proc/cpuinfo`` on Linux:
    "AMD EPYC, AVX-512" and "AMD EPYC, AVX2" are machines 2-3x apart), else ``platform``'s."""
    import platform

    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")),
        platform.machine(),
    )
    flags = set(
        next(
            (ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []
        )
    )
    isa = next(
        (
            label
            for flag, label in (("amx_tile", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))
            if flag in flags
        ),
        None,
    )
    return f"{name}, {isa}" if isa else name


def stage_table(stages: dict[str, float], device: str, how: str, total: float) -> str:
    """The demo's wall time per stage and in all, for the end of its output."""
    rows = [f"| {stage} | {seconds:.0f} |" for stage, seconds in stages.items()]
    head = [f"Stage times on {device} ({how}):", "", "| stage | seconds |", "|---|---|"]
    return "\n".join([*head, *rows, f"| total | {total:.0f} |"])


def _timed(stages: dict[str, float], key: str, fn: Callable[..., Any], *a: Any) -> Any:
    """``fn(*a)``, its wall time recorded as ``stages[key]`` (also when it raises)."""
    start = time.perf_counter()
    try:
        return fn(*a)
    finally:
        stages[key] = time.perf_counter() - start


def pipeline(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One model's part of the demo: its tokenizer, encode + prior + 64 samples, ``mvq eval``.
    Returns ``[metrics, stage times]`` (JSON, so that it can run in a process of its own)."""
    out, registered = Path(args.out), MODELS[name]
    stages: dict[str, float] = {}

    def timed(stage: str, fn: Callable[..., Any], *a: Any) -> Any:
        return _timed(stages, f"{name} {stage}", fn, *a)

    print(f"== {name} ({registered}): tokenizer {args.steps} steps", flush=True)
    cfg = demo_config(
        registered, args.steps, args.num_hypotheses, args.data_root, args.device, args.seed
    )
    metrics = timed("tokenizer", run_tokenizer, name, cfg, out)
    print(f"== {name}: encode, prior {PRIOR} {args.prior_steps} steps, sample", flush=True)
    stage = "encode + prior + 64 samples"
    metrics |= timed(stage, run_prior, name, cfg, args.prior_steps, out, args.subset)
    print(f"== {name}: mvq eval (reconstructions, samples)", flush=True)
    metrics |= timed("mvq eval", evaluate_models, name, out, args)
    return [metrics, stages]


def side_by_side(args: argparse.Namespace) -> bool:
    """Whether the two models train at once, one thread each: on a CPU with 2 or more cores
    unless ``--one-at-a-time`` (a GPU runs them one after the other)."""
    return (
        not args.one_at_a_time
        and resolve_device(args.device).type == "cpu"
        and (os.cpu_count() or 1) >= 2
    )


def run(args: argparse.Namespace) -> None:
    """Train, evaluate and report both tokenizers and their priors; print the stage times."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    out = Path(args.out)
    t0 = time.perf_counter()
    for split in ("train", "val"):  # bad data fails here, before anything is written
        build_dataset("fashion_mnist", args.data_root, split, download=True)
    if side_by_side(args):
        print(f"== both models at once, one thread each; their output: {out}/<model>.log")
        jobs = {name: (pipeline, (name, args)) for name in MODELS}
        parts = run_side_by_side(jobs, out, lambda line: print(f"   {line}", flush=True))
        how = "the two models side by side, one thread each"
    else:
        parts = {name: pipeline(name, args) for name in MODELS}
        how = f"{torch.get_num_threads()} threads, one model after the other"
    metrics = {name: part[0] for name, part in parts.items()}
    stages = {stage: t for part in parts.values() for stage, t in part[1].items()}
    cfg = demo_config(MODELS["vqvae2"], args.steps, args.num_hypotheses, args.data_root)
    _timed(stages, "reconstruction grid", write_grid, out, cfg)
    print(write_report(out, metrics, args))
    page = _timed(stages, "report page", write_page, out)  # the runs on one HTML page
    device = cpu_model() if resolve_device(args.device).type == "cpu" else args.device
    print(stage_table(stages, device, how, time.perf_counter() - t0))
    print(
        f"wrote {out}/reconstructions.png, {out}/samples_*.png, {out}/metrics.md "
        f"in {time.perf_counter() - t0:.0f} s; open {page}"
    )
