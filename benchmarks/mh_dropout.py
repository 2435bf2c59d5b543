"""Cost of MH-Dropout: one MVQVAE training step against a VQ step and the all-in-graph search.

Setting (issue "Foundation"): B = 32, 28x28 input, primary grid 2x2 (F = 14), D = D' = 16, the
Table 3 networks and f, K = 16 (8 + 8 entries), J in {16, 64, 256, 1024, 2048}; CPU with 2
threads by default. Columns: per-instance masks (the default), per-code masks, one shared set,
the all-in-graph reference (per-instance masks, the authors' formulation); speedups are the
reference's step time over ours; peak memory counts every live tensor (MemTracker / CUDA).

    python benchmarks/mh_dropout.py [--device cuda] [--repeats 5]

Prints a table, then one JSON line with every figure (the last line).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.distributed._tools.mem_tracker import MemTracker
from torch.utils.flop_counter import FlopCounterMode

from mvq.tokenizers import create_tokenizer

JS = (16, 64, 256, 1024, 2048)


def build(kind: str, j: int, device: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A tokenizer and its Adam, fixed seed, in train mode."""
    torch.manual_seed(0)
    if kind == "vq":
        model = create_tokenizer("vqvae2_fmnist_s4_k16")
    else:  # "chunked" = per-instance masks (the default), "per_code", "shared", "all_in_graph"
        search = "all_in_graph" if kind == "all_in_graph" else "chunked"
        model = create_tokenizer(
            "mvqvae_fmnist_s4_k16",
            num_hypotheses=j,
            search=search,
            mask_mode=kind if kind in ("per_code", "shared") else "per_instance",
        )
    model.to(device).train()
    return model, torch.optim.Adam(model.parameters(), 5e-4, betas=(0.5, 0.9))


def step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    loss, _ = model.loss((x, None))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_step(kind: str, j: int, x: torch.Tensor, repeats: int) -> float:
    """Median seconds per training step after two warm-up steps."""
    model, opt = build(kind, j, x.device.type)
    for _ in range(2):
        step(model, opt, x)
    times = []
    for _ in range(repeats):
        sync(x.device.type)
        t0 = time.perf_counter()
        step(model, opt, x)
        sync(x.device.type)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_memory(kind: str, j: int, x: torch.Tensor) -> int:
    """Peak bytes of live tensors (params, grads, optimizer, activations) during one step."""
    model, opt = build(kind, j, x.device.type)
    step(model, opt, x)  # optimizer state exists before we measure
    if x.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step(model, opt, x)
        return torch.cuda.max_memory_allocated()
    tracker = MemTracker()
    tracker.track_external(model, opt)
    with tracker:
        step(model, opt, x)
    return int(tracker.get_tracker_snapshot("peak")[x.device]["Total"])


def search_flops(j: int, batch: int) -> float:
    """FLOPs of f on B*J masked codes, counted by torch's FlopCounterMode on 1024 rows."""
    model, _ = build("chunked", j, "cpu")
    code = torch.randn(1024, model.config.secondary_dim, 1, 1)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.quantizer.f(code)
    return counter.get_total_flops() / 1024 * batch * j


def gemm_gflops(device: str) -> float:
    """Achieved fp32 GEMM throughput for f-like shapes (8192 x 128 x 128): the practical limit."""
    a, b = torch.randn(8192, 128, device=device), torch.randn(128, 128, device=device)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(50):
        a @ b
    sync(device)
    return 2 * 8192 * 128 * 128 * 50 / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.rand(32, 1, 28, 28, device=args.device) * 2 - 1
    res: dict[str, float | str] = {"device": args.device, "threads": args.threads}
    t_vq = time_step("vq", 0, x, args.repeats)
    res["vq_step_ms"] = 1e3 * t_vq
    res["vq_peak_mb"] = peak_memory("vq", 0, x) / 2**20
    print(f"VQ (VQVAE2) step: {1e3 * t_vq:.1f} ms, peak {res['vq_peak_mb']:.1f} MiB")
    heads = ("inst ms", "code ms", "shared ms", "graph ms", "speedup", "spd code", "MVQ/VQ",
             "peak MiB", "graph MiB")  # fmt: skip
    print(f"{'J':>5} " + " ".join(f"{h:>9}" for h in heads) + f" {'GFLOP/s':>8}")
    limit = gemm_gflops(args.device)
    for j in JS:
        t_c = time_step("chunked", j, x, args.repeats)
        t_p = time_step("per_code", j, x, args.repeats)
        t_s = time_step("shared", j, x, args.repeats)
        t_g = time_step("all_in_graph", j, x, args.repeats)
        m_c, m_g = peak_memory("chunked", j, x), peak_memory("all_in_graph", j, x)
        # the search's share of the step: what the chunked step costs beyond a VQ step
        extra = t_c - t_vq  # too small to time at small J: reported as NaN
        gflops = search_flops(j, 32) / extra / 1e9 if extra > 0.1 * t_vq else float("nan")
        res |= {
            f"chunked_step_ms_j{j}": 1e3 * t_c,
            f"per_code_step_ms_j{j}": 1e3 * t_p,
            f"shared_masks_step_ms_j{j}": 1e3 * t_s,
            f"all_in_graph_step_ms_j{j}": 1e3 * t_g,
            f"speedup_vs_all_in_graph_j{j}": t_g / t_c,
            f"speedup_vs_all_in_graph_j{j}_per_code": t_g / t_p,
            f"mvq_over_vq_j{j}": t_c / t_vq,
            f"mvq_over_vq_j{j}_per_code": t_p / t_vq,
            f"peak_mb_j{j}": m_c / 2**20,
            f"all_in_graph_peak_mb_j{j}": m_g / 2**20,
            f"search_gflops_j{j}": gflops,
        }
        cells = (1e3 * t_c, 1e3 * t_p, 1e3 * t_s, 1e3 * t_g, t_g / t_c, t_g / t_p, t_c / t_vq,
                 m_c / 2**20, m_g / 2**20)  # fmt: skip
        print(f"{j:>5} " + " ".join(f"{v:>9.2f}" for v in cells) + f" {gflops:>8.1f}")
    res["mem_ratio_j2048_over_j16"] = res["peak_mb_j2048"] / res["peak_mb_j16"]
    res["gemm_limit_gflops"] = limit
    res["search_fraction_of_gemm_limit_j2048"] = res["search_gflops_j2048"] / limit
    share = res["search_fraction_of_gemm_limit_j2048"]
    print(
        f"GEMM limit (8192x128x128 fp32): {limit:.1f} GFLOP/s; the J=2048 search runs at "
        f"{res['search_gflops_j2048']:.1f} GFLOP/s ({100 * share:.0f}% of it)"
    )
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}))


if __name__ == "__main__":
    main()
