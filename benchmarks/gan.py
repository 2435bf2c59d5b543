"""One MVQGAN training step on 64x64 images, batch 32: throughput and where the time goes.

A step is what the trainer does per batch for a GAN tokenizer: the generator's pass (L1 + LPIPS
+ codebook + adaptive-weighted generator loss), backward, Adam; then the discriminator's hinge
loss on the detached reconstruction, backward, Adam. Table 3 widths (128/64), a 3-layer PatchGAN
of width 64, ``mvqgan_celeba64_s4_k16`` (4 + 1 tokens, K = 16). Shares of the step:

- MH-Dropout search: time inside the quantizer's no-grad search (measured directly);
- LPIPS: step time with LPIPS minus with ``perceptual="none"`` (its forward, and its backward
  twice: once for the loss, once more for the adaptive weight's ``autograd.grad`` of the nll);
- discriminator: without LPIPS, step time with the adversarial term on minus off
  (``disc_start`` not reached: no discriminator forward, no adaptive weight, its Adam step
  on zero gradients);
- the rest: the tokenizer's forward and backward (without the search), Adam, L1.

The four add up to the step.

LPIPS uses the VGG16 weights when ``build_lpips`` finds them, else a random backbone (same
cost, meaningless distances; labelled in the output). FLOPs come from
``torch.utils.flop_counter`` over one step (matmuls and convolutions).

    python benchmarks/gan.py                          # CPU, J = 256
    python benchmarks/gan.py --device cuda            # GPU, J = 2048

Prints a table, then one JSON line (the last line).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from mvq.losses.perceptual import WeightsUnavailable, build_lpips
from mvq.tokenizers import MVQGAN, create_tokenizer

NAME = "mvqgan_celeba64_s4_k16"


def sync(device: torch.device) -> None:
    """Wait for the GPU (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_model(j: int, adversarial: bool, lpips: torch.nn.Module | None, device) -> MVQGAN:
    """The benchmarked MVQGAN: adversarial term on (``disc_start=0``) or off; LPIPS or none."""
    torch.manual_seed(0)
    perceptual = "lpips" if lpips is not None else "none"
    model = create_tokenizer(
        NAME, num_hypotheses=j, perceptual=perceptual, disc_start=0 if adversarial else 10**9
    )
    if lpips is not None:
        model.gan_loss.set_perceptual(lpips)
    return model.to(device).train()


def step_fn(model: MVQGAN, x: torch.Tensor) -> Callable[[], None]:
    """One training step of both optimizers, as the trainer runs it."""
    groups = model.optimizer_groups()
    opts = {k: torch.optim.Adam(v, 5e-4, betas=(0.5, 0.9)) for k, v in groups.items()}

    def step() -> None:
        for name, opt in opts.items():
            opt.zero_grad(set_to_none=True)
            loss, _ = model.loss((x, None), 0, name)
            loss.backward()
            opt.step()

    return step


def time_steps(model: MVQGAN, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median step seconds after one warm-up step, and the median seconds of MH search."""
    quantizer, search = model.quantizer, model.quantizer.search_winner
    spent: list[float] = []

    def timed_search(*args, **kwargs):
        sync(x.device)
        t0 = time.perf_counter()
        out = search(*args, **kwargs)
        sync(x.device)
        spent.append(time.perf_counter() - t0)
        return out

    quantizer.search_winner = timed_search  # instance attribute: this model only
    step, times = step_fn(model, x), []
    for _ in range(1 + repeats):
        spent.clear()
        sync(x.device)
        t0 = time.perf_counter()
        step()
        sync(x.device)
        times.append((time.perf_counter() - t0, sum(spent)))
    del quantizer.search_winner
    measured = times[1:]
    return statistics.median(t for t, _ in measured), statistics.median(s for _, s in measured)


def step_flops(model: MVQGAN, x: torch.Tensor) -> int:
    """Matmul and convolution FLOPs of one step (forward and backward)."""
    step = step_fn(model, x)
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def lpips_network(device: torch.device) -> tuple[torch.nn.Module, str]:
    """LPIPS with the VGG16 weights if they can be found, else with a random backbone."""
    try:
        return build_lpips().to(device), "vgg16 weights"
    except WeightsUnavailable:
        return build_lpips(random_backbone=True).to(device), "random backbone (weights missing)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hypotheses", type=int, default=None, help="J (cpu 256, cuda 2048)")
    ap.add_argument("--repeats", type=int, default=None, help="timed steps (cpu 3, cuda 20)")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    j = args.hypotheses or (2048 if device.type == "cuda" else 256)
    repeats = args.repeats or (20 if device.type == "cuda" else 3)
    x = torch.rand(args.batch_size, 3, 64, 64, device=device) * 2 - 1
    lpips, backbone = lpips_network(device)
    full, search = time_steps(make_model(j, True, lpips, device), x, repeats)
    no_lpips, _ = time_steps(make_model(j, True, None, device), x, repeats)
    base, _ = time_steps(make_model(j, False, None, device), x, repeats)
    flops = step_flops(make_model(j, True, lpips, device), x)
    res = {
        "device": str(device),
        "threads": args.threads,
        "J": j,
        "batch": len(x),
        "lpips_backbone": backbone,
        "step_s": full,
        "images_per_s": len(x) / full,
        "search_share": search / full,
        "lpips_share": (full - no_lpips) / full,
        "discriminator_share": (no_lpips - base) / full,
        "rest_share": (base - search) / full,
        "step_gflop": flops / 1e9,
        "achieved_gflop_per_s": flops / 1e9 / full,
    }
    print(f"MVQGAN step, 64x64, batch {len(x)}, J = {j}, {device} ({args.threads} threads)")
    print(f"  {len(x) / full:8.1f} images/s   ({full * 1e3:.0f} ms per step)")
    print(f"  {res['search_share']:8.1%} MH-Dropout search")
    print(f"  {res['lpips_share']:8.1%} LPIPS ({backbone})")
    print(f"  {res['discriminator_share']:8.1%} discriminator and adaptive weight")
    print(f"  {res['rest_share']:8.1%} the rest (tokenizer forward/backward, Adam)")
    print(f"  {flops / 1e9:8.1f} GFLOP per step, {res['achieved_gflop_per_s']:.1f} GFLOP/s")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}))


if __name__ == "__main__":
    main()
