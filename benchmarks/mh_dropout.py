"""Cost of MH-Dropout: one MVQVAE training step against a VQ step and the all-in-graph search.

Setting (issue "Foundation"): B = 32, 28x28 input, primary grid 2x2 (F = 14), D = D' = 16, the
Table 3 networks and f, K = 16 (8 + 8 entries), J in {16, 64, 256, 1024, 2048}; CPU with 2
threads by default. Columns: per-instance masks (the default search, then the compiled bf16
one), per-code masks, one shared set, the all-in-graph reference (per-instance masks, the
authors' formulation); speedups are the reference's step time over ours; peak memory counts
every live tensor (MemTracker / CUDA) of the eager default search and of the reference.

Steps of the variants being compared are interleaved round by round in one process (each
round times one step of every variant), so drifting load hits all of them alike. A speedup is
the median over ``--repeats`` rounds of the per-round ratio; step times are medians too. At
J = 2048 the benchmark also times the search alone and the bf16-first-pass search, counts the
FLOPs of the search and of whole steps (torch's FlopCounterMode: matrix products), and divides
their rates by the GEMM peak measured here for the dtype (fp32 and bf16), and gives the
search's share of our step and the speedup a search costing nothing would reach (the
reference's step over ours without the search: the ceiling of any faster search).

Two exact per-instance searches are timed: ``chunked`` (the default: fp32, eager) and
``compiled_bf16`` (``search="chunked_bf16"`` with ``compile_search=True``: the first pass's
products in bf16, fast on CPUs with AMX and on GPUs, its norms and activations fused by
``torch.compile``; same winners). The headline figures (``speedup_vs_all_in_graph_j*``,
``mvq_over_vq_j*``) are those of the faster of the two in this run, named in
``best_search_j*``; both are also reported under their own names.

    python benchmarks/mh_dropout.py [--device cuda] [--repeats 5] [--js 256,2048]

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
KINDS = ("chunked", "compiled_bf16", "per_code", "shared", "all_in_graph")
PER_INSTANCE = ("chunked", "compiled_bf16")  # exact per-instance searches (the paper's masks)


def build(kind: str, j: int, device: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A tokenizer and its Adam, fixed seed, in train mode."""
    torch.manual_seed(0)
    if kind == "vq":
        model = create_tokenizer("vqvae2_fmnist_s4_k16")
    else:  # "chunked", "chunked_bf16", "compiled_bf16" = per-instance masks; "per_code",
        # "shared" (chunked search), "all_in_graph"
        search = {
            "all_in_graph": "all_in_graph",
            "chunked_bf16": "chunked_bf16",
            "compiled_bf16": "chunked_bf16",
        }.get(kind, "chunked")
        model = create_tokenizer(
            "mvqvae_fmnist_s4_k16",
            num_hypotheses=j,
            search=search,
            compile_search=kind == "compiled_bf16",
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


def time_steps(kinds: list[str], j: int, x: torch.Tensor, repeats: int) -> dict[str, list[float]]:
    """Seconds per training step of each kind, ``repeats`` interleaved rounds after 2 warm-ups."""
    runs = {k: build(k, j, x.device.type) for k in kinds}
    for model, opt in runs.values():
        for _ in range(2):
            step(model, opt, x)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(repeats):
        for k, (model, opt) in runs.items():
            sync(x.device.type)
            t0 = time.perf_counter()
            step(model, opt, x)
            sync(x.device.type)
            times[k].append(time.perf_counter() - t0)
    return times


def median_ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of ``num / den`` (one ratio per interleaved round)."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


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


def _addmm_inplace_flop(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """FlopCounterMode has no formula for the in-place ``addmm_`` (f's residual sums)."""
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter (matrix products, convolutions), ``addmm_`` included."""
    return FlopCounterMode(
        display=False, custom_mapping={torch.ops.aten.addmm_: _addmm_inplace_flop}
    )


def step_flops(kind: str, j: int, x: torch.Tensor) -> float:
    """FLOPs of matrix products and convolutions in one training step."""
    model, opt = build(kind, j, x.device.type)
    with flop_counter() as counter:
        step(model, opt, x)
    return float(counter.get_total_flops())


def search_cost(kind: str, j: int, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(median seconds, FLOPs) of the search alone, on the inputs it gets in a training step."""
    model, opt = build(kind, j, x.device.type)
    q, seen = model.quantizer, []
    search = q.search_winner
    q.search_winner = lambda *a: seen.append(a) or search(*a)  # capture one call's inputs
    step(model, opt, x)
    q.search_winner = search
    compiled, q.compile_search = q.compile_search, False  # torch.compile refuses the counter's
    with flop_counter() as counter:  # dispatch mode: count the same products eagerly
        search(*seen[0])
    q.compile_search = compiled
    times = []
    for _ in range(repeats):
        sync(x.device.type)
        t0 = time.perf_counter()
        search(*seen[0])
        sync(x.device.type)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), float(counter.get_total_flops())


def gemm_peak_gflops(device: str, dtype: torch.dtype) -> float:
    """Best GEMM throughput over 5 tries, on f's shapes (2048 x 129 @ 129 x 128)."""
    a = torch.randn(2048, 129, device=device, dtype=dtype)
    b = torch.randn(129, 128, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(6):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(20):
            a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * 2048 * 129 * 128 * 20 / best / 1e9


def report_j2048(x: torch.Tensor, repeats: int, res: dict, peaks: dict[str, float]) -> None:
    """Search time, FLOPs and share of the GEMM peak at J = 2048 (fp32 and bf16 first pass)."""
    for kind, dtype, tag in (
        ("chunked", "fp32", ""),
        ("chunked_bf16", "bf16", "_bf16"),
        ("compiled_bf16", "bf16", "_compiled_bf16"),
    ):
        t, flops = search_cost(kind, 2048, x, repeats)
        res[f"search{tag}_ms_j2048"] = 1e3 * t
        res[f"search{tag}_gflop_j2048"] = flops / 1e9
        res[f"search{tag}_gflops_j2048"] = flops / t / 1e9
        res[f"search{tag}_fraction_of_gemm_peak_j2048"] = flops / t / 1e9 / peaks[dtype]
    for kind in ("chunked", "all_in_graph"):
        flops = step_flops(kind, 2048, x)
        rate = flops / (res[f"{kind}_step_ms_j2048"] / 1e3) / 1e9
        res[f"{kind}_step_gflop_j2048"] = flops / 1e9
        res[f"{kind}_step_fraction_of_gemm_peak_j2048"] = rate / peaks["fp32"]
    # What the search leaves: the step without it, and the speedup a free search would give.
    rest = res["chunked_step_ms_j2048"] - res["search_ms_j2048"]
    res["search_share_of_step_j2048"] = res["search_ms_j2048"] / res["chunked_step_ms_j2048"]
    res["speedup_ceiling_free_search_j2048"] = res["all_in_graph_step_ms_j2048"] / rest
    print(
        f"J=2048 search alone: {res['search_ms_j2048']:.1f} ms, {res['search_gflop_j2048']:.2f}"
        f" GFLOP, {100 * res['search_fraction_of_gemm_peak_j2048']:.0f}% of the fp32 GEMM peak"
        f" ({peaks['fp32']:.0f} GFLOP/s); bf16 products: {res['search_bf16_ms_j2048']:.1f} ms,"
        f" {100 * res['search_bf16_fraction_of_gemm_peak_j2048']:.0f}% of the bf16 peak"
        f" ({peaks['bf16']:.0f} GFLOP/s); bf16 products compiled:"
        f" {res['search_compiled_bf16_ms_j2048']:.1f} ms,"
        f" {100 * res['search_compiled_bf16_fraction_of_gemm_peak_j2048']:.0f}% of the bf16 peak."
        f" Whole steps: ours (eager fp32)"
        f" {100 * res['chunked_step_fraction_of_gemm_peak_j2048']:.0f}%, all-in-graph"
        f" {100 * res['all_in_graph_step_fraction_of_gemm_peak_j2048']:.0f}% of the fp32 peak."
        f" The search is {100 * res['search_share_of_step_j2048']:.0f}% of our step; with a free"
        f" search the step would be {res['speedup_ceiling_free_search_j2048']:.1f}x the reference"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds (medians)")
    ap.add_argument("--js", default=",".join(map(str, JS)), help="comma-separated J values")
    args = ap.parse_args()
    js = [int(v) for v in args.js.split(",")]
    torch.set_num_threads(args.threads)
    x = torch.rand(32, 1, 28, 28, device=args.device) * 2 - 1
    res: dict[str, float | str | list] = {
        "device": args.device,
        "threads": args.threads,
        "repeats": args.repeats,
    }
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {k: gemm_peak_gflops(args.device, d) for k, d in dtypes.items()}
    res |= {f"gemm_peak_gflops_{k}": v for k, v in peaks.items()}
    res["vq_peak_mb"] = peak_memory("vq", 0, x) / 2**20
    heads = (
        "inst ms",
        "inst+c ms",
        "code ms",
        "shared ms",
        "graph ms",
        "speedup",
        "spd code",
        "MVQ/VQ",
        "peak MiB",
        "graph MiB",
    )
    print(f"{'J':>5} " + " ".join(f"{h:>9}" for h in heads))
    for j in js:
        t = time_steps(["vq", *KINDS], j, x, args.repeats)
        med = {k: statistics.median(v) for k, v in t.items()}
        graph = t["all_in_graph"]
        best = min(PER_INSTANCE, key=lambda k: med[k])  # the faster exact per-instance search
        m_c, m_g = peak_memory("chunked", j, x), peak_memory("all_in_graph", j, x)
        res |= {
            f"vq_step_ms_j{j}": 1e3 * med["vq"],
            f"chunked_step_ms_j{j}": 1e3 * med["chunked"],
            f"compiled_bf16_step_ms_j{j}": 1e3 * med["compiled_bf16"],
            f"per_code_step_ms_j{j}": 1e3 * med["per_code"],
            f"shared_masks_step_ms_j{j}": 1e3 * med["shared"],
            f"all_in_graph_step_ms_j{j}": 1e3 * med["all_in_graph"],
            f"best_search_j{j}": best,
            f"speedup_vs_all_in_graph_j{j}": median_ratio(graph, t[best]),
            f"speedup_runs_j{j}": [round(a / b, 3) for a, b in zip(graph, t[best], strict=True)],
            f"mvq_over_vq_j{j}": median_ratio(t[best], t["vq"]),
            **{
                f"speedup_vs_all_in_graph_j{j}_{k}": median_ratio(graph, t[k]) for k in PER_INSTANCE
            },
            **{f"mvq_over_vq_j{j}_{k}": median_ratio(t[k], t["vq"]) for k in PER_INSTANCE},
            f"speedup_vs_all_in_graph_j{j}_per_code": median_ratio(graph, t["per_code"]),
            f"mvq_over_vq_j{j}_per_code": median_ratio(t["per_code"], t["vq"]),
            f"peak_mb_j{j}": m_c / 2**20,
            f"all_in_graph_peak_mb_j{j}": m_g / 2**20,
        }
        cells = [1e3 * med[k] for k in KINDS] + [
            res[f"speedup_vs_all_in_graph_j{j}"],
            res[f"speedup_vs_all_in_graph_j{j}_per_code"],
            res[f"mvq_over_vq_j{j}"],
            m_c / 2**20,
            m_g / 2**20,
        ]
        print(f"{j:>5} " + " ".join(f"{v:>9.2f}" for v in cells))
    if 16 in js and 2048 in js:
        res["mem_ratio_j2048_over_j16"] = res["peak_mb_j2048"] / res["peak_mb_j16"]
    if 2048 in js:
        report_j2048(x, args.repeats, res, peaks)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}))


if __name__ == "__main__":
    main()
