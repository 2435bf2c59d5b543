"""Tables, plots and the C1-C6 verdicts of the Fashion-MNIST replication study.

Reads the sweeps' ``results.csv`` (``mvq sweep results/fmnist/<name>.yaml``), groups the cells
over seeds (mean ± std), draws the figures and rewrites the part of ``README.md`` between the
``analyze`` markers. Run from the repository root::

    .venv/bin/python results/fmnist/analyze.py

A claim is **held** when the two sides' mean ± std ranges (over >= 2 seeds each) do not
overlap in the claimed direction, **not held** when they do not overlap the other way, and
**unclear at this budget** otherwise; cells that have not run yet say so.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SWEEPS = ("grid", "healthy", "j_ablation", "longer", "mask_prior")
METHODS = ("mvqvae", "vqvae2", "fsqvae")
START, END = "<!-- analyze:start -->", "<!-- analyze:end -->"
TABLE_METRICS = (
    ("bits_per_image", "bits/image", "{:.0f}"),
    ("mse", "recon MSE", "{:.4f}"),
    ("psnr", "PSNR", "{:.2f}"),
    ("fd_fmnist", "recon fd_fmnist", "{:.1f}"),
    ("usage_primary", "usage 1°", "{:.2f}"),
    ("usage_secondary", "usage 2°", "{:.2f}"),
    ("perplexity_primary", "perpl. 1°", "{:.2f}"),
    ("sample_fd_fmnist", "sample fd_fmnist", "{:.1f}"),
    ("sample_f8", "F_8", "{:.3f}"),
    ("sample_f1_8", "F_1/8", "{:.3f}"),
    ("prior_nll_nats_per_token", "prior NLL nats/token", "{:.3f}"),
)


@dataclass
class Stat:
    """Mean, standard deviation (0 for one seed) and the number of seeds of one metric."""

    mean: float
    std: float
    n: int

    def text(self, fmt: str) -> str:
        return fmt.format(self.mean) + (f" ± {fmt.format(self.std)}" if self.n > 1 else "")


def read_rows(sweep: str) -> list[dict[str, str]]:
    """The finished cells of one sweep (empty before it has run)."""
    path = HERE / sweep / "results.csv"
    if not path.is_file():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def stat(rows: list[dict[str, str]], metric: str) -> Stat | None:
    """Mean ± std of ``metric`` over the rows that have it."""
    values = [float(r[metric]) for r in rows if r.get(metric) not in (None, "", "nan")]
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return Stat(statistics.fmean(values), std, len(values))


def select(rows: list[dict[str, str]], **labels: str) -> list[dict[str, str]]:
    """Rows whose axes equal all ``labels``."""
    return [r for r in rows if all(r.get(k) == v for k, v in labels.items())]


def compare(better: Stat | None, worse: Stat | None, lower_is_better: bool = True) -> str:
    """The verdict that ``better`` beats ``worse`` (see the module docstring)."""
    if better is None or worse is None:
        return "not measured yet"
    if min(better.n, worse.n) < 2:
        return "unclear at this budget (fewer than 2 seeds)"
    sign = 1.0 if lower_is_better else -1.0
    b_hi, w_lo = sign * better.mean + better.std, sign * worse.mean - worse.std
    b_lo, w_hi = sign * better.mean - better.std, sign * worse.mean + worse.std
    if b_hi < w_lo:
        return "held"
    if w_hi < b_lo:
        return "not held"
    return "unclear at this budget"


def fmt(s: Stat | None, f: str = "{:.1f}") -> str:
    return "—" if s is None else s.text(f)


def group_table(rows: list[dict[str, str]], axes: list[str]) -> list[str]:
    """A markdown table: one line per group of ``axes``, mean ± std over seeds."""
    keys = sorted({tuple(r[a] for a in axes) for r in rows}, key=_axis_order)
    head = "| " + " | ".join([*axes, "seeds", *(t for _, t, _ in TABLE_METRICS)]) + " |"
    lines = [head, "|" + "---|" * (len(axes) + 1 + len(TABLE_METRICS))]
    for key in keys:
        group = select(rows, **dict(zip(axes, key, strict=True)))
        cells = [fmt(stat(group, m), f) for m, _, f in TABLE_METRICS]
        lines.append("| " + " | ".join([*key, str(len(group)), *cells]) + " |")
    return lines


def _axis_order(key: tuple[str, ...]) -> tuple:
    return tuple(float(k.split("+")[0]) if k.split("+")[0].isdigit() else k for k in key)


def verdicts(grid, healthy, j_ablation, mask_prior, longer) -> list[str]:
    """One line per claim C1-C6 with the numbers that decide it."""
    m = "sample_fd_fmnist"
    out = []

    def s(rows, metric=m, **labels):
        return stat(select(rows, **labels), metric)

    for tokens in ("1+1", "4+1", "16+1"):  # the paper's Figure 5 stops at 4+1 (F = 14)
        mvq, vq, fsq = (s(grid, method=x, tokens=tokens, K="16") for x in METHODS)
        mvqh, vqh = (s(healthy, method=x, tokens=tokens, K="16") for x in ("mvqvae", "vqvae2"))
        beyond = ", beyond the paper's 1+1 and 4+1" if tokens == "16+1" else ""
        out.append(
            f"- **C1** ({tokens}, K = 16, sample fd_fmnist, lower is better{beyond}): MVQVAE "
            f"{fmt(mvq)} vs VQ-VAE-2 {fmt(vq)}: **{compare(mvq, vq)}**; vs FSQ-VAE "
            f"{fmt(fsq)}: **{compare(mvq, fsq)}**; vs the healthy "
            f"VQ-VAE-2 {fmt(vqh)}: **{compare(mvq, vqh)}**; both healthy {fmt(mvqh)} vs "
            f"{fmt(vqh)}: **{compare(mvqh, vqh)}**."
        )
    for tokens in ("1+1", "4+1"):
        short, long_ = (
            [s(rows, method=x, tokens=tokens, K="16") for x in ("mvqvae", "vqvae2")]
            for rows in (grid, longer)
        )
        out.append(
            f"- **C1 after 10 epochs** ({tokens}, K = 16): MVQVAE {fmt(long_[0])} vs VQ-VAE-2 "
            f"{fmt(long_[1])}: **{compare(*long_)}** (after 2 epochs {fmt(short[0])} vs "
            f"{fmt(short[1])}: {compare(*short)})."
        )
    mvq1, mvq1h = (s(r, method="mvqvae", tokens="1+1", K="16") for r in (grid, healthy))
    vq4, vq4h = (s(r, method="vqvae2", tokens="4+1", K="16") for r in (grid, healthy))
    out.append(
        f"- **C2** (MVQVAE 1+1 vs VQ-VAE-2 4+1, K = 16): {fmt(mvq1)} vs {fmt(vq4)}: "
        f"**{compare(mvq1, vq4)}**; vs healthy {fmt(vq4h)}: **{compare(mvq1, vq4h)}**; both "
        f"healthy {fmt(mvq1h)} vs {fmt(vq4h)}: **{compare(mvq1h, vq4h)}**."
    )
    for tokens in ("1+1", "4+1"):
        by_j = {j: s(j_ablation, tokens=tokens, J=j) for j in ("1", "4", "16", "64", "256")}
        best_low = min(
            (v for j, v in by_j.items() if j in ("1", "4") and v),
            default=None,
            key=lambda v: v.mean,
        )
        high = [v for j, v in by_j.items() if j in ("16", "64", "256") and v]
        worst_high = max(high, default=None, key=lambda v: v.mean)
        trend = ", ".join(f"J={j}: {fmt(v)}" for j, v in by_j.items())
        if not all(by_j.values()):  # the claim is about the whole curve: every J must be in
            best_low = worst_high = None
        out.append(
            f"- **C3** ({tokens}, K = 16): {trend}. J >= 16 all better than J <= 4: "
            f"**{compare(worst_high, best_low)}**{_rank_trend(select(j_ablation, tokens=tokens))}."
        )

    def gain(rows, tokens, k):
        """VQ-VAE-2's sample fd_fmnist minus MVQVAE's (positive: MVQ better), spreads added."""
        mvq, vq = (s(rows, method=x, tokens=tokens, K=k) for x in ("mvqvae", "vqvae2"))
        if not (mvq and vq):
            return None
        return Stat(vq.mean - mvq.mean, math.hypot(vq.std, mvq.std), min(vq.n, mvq.n))

    for tokens in ("1+1", "4+1", "16+1"):
        gains = [gain(grid, tokens, k) for k in ("16", "256")]
        healthy_gains = [gain(healthy, tokens, k) for k in ("16", "256")]
        out.append(
            f"- **C4** ({tokens}): gain of MVQ over VQ-VAE-2 in sample fd_fmnist at K = 16 "
            f"{fmt(gains[0])} vs K = 256 {fmt(gains[1])}: **"
            f"{compare(gains[0], gains[1], lower_is_better=False)}**; both healthy "
            f"{fmt(healthy_gains[0])} vs {fmt(healthy_gains[1])}: **"
            f"{compare(*healthy_gains, lower_is_better=False)}**."
        )
    out += c5_lines(grid, healthy)
    for tokens in ("1+1", "4+1"):
        modelled = s(mask_prior, method="mvqvae", tokens=tokens, K="16")
        rand = s(grid, method="mvqvae", tokens=tokens, K="16")
        f8 = [s(r, "sample_f8", method="mvqvae", tokens=tokens, K="16") for r in (mask_prior, grid)]
        pairs = {r["seed"]: float(r[m]) for r in select(mask_prior, tokens=tokens, K="16")}
        diffs = [
            pairs[r["seed"]] - float(r[m])
            for r in select(grid, method="mvqvae", tokens=tokens, K="16")
            if r["seed"] in pairs
        ]
        paired = ", ".join(f"{d:+.1f}" for d in diffs)
        bits = [s(r, "prior_bits_per_image", method="mvqvae", tokens=tokens, K="16")
                for r in (mask_prior, grid)]  # fmt: skip
        out.append(
            f"- **C6** ({tokens}, K = 16, sample fd_fmnist): prior with the mask bits "
            f"{fmt(modelled)} vs random masks {fmt(rand)}: **{compare(modelled, rand)}** "
            f"(F_8 {fmt(f8[0], '{:.3f}')} vs {fmt(f8[1], '{:.3f}')}; same tokenizers, so per "
            f"seed the change is {paired or '—'}; the prior spends {fmt(bits[0])} bits per "
            f"image on codes and mask vs {fmt(bits[1])} on the codes alone)."
        )
    return out


def _rank_trend(rows) -> str:
    """Supporting figure for C3 (not the verdict): Spearman's rank correlation between J and
    sample fd_fmnist over every finished cell, with its two-sided p-value."""
    pts = [(float(r["J"]), float(r["sample_fd_fmnist"])) for r in rows
           if r.get("sample_fd_fmnist") not in (None, "", "nan")]  # fmt: skip
    if len({j for j, _ in pts}) < 3:
        return ""
    from scipy.stats import spearmanr

    rho, p = spearmanr(*zip(*pts, strict=True))
    n = len(pts)
    return f" (Spearman's rank correlation of J and fd over the {n} cells: {rho:+.2f}, p = {p:.2g})"


def _groups(rows, method: str) -> list[tuple[str, str, Stat, Stat]]:
    """``(tokens, K, bits, recon fd_fmnist)`` of each measured (tokens, K) group of a method."""
    out = []
    for tokens, k in sorted({(r["tokens"], r["K"]) for r in select(rows, method=method)}):
        group = select(rows, method=method, tokens=tokens, K=k)
        bits, fd = stat(group, "bits_per_image"), stat(group, "fd_fmnist")
        if bits and fd:
            out.append((tokens, k, bits, fd))
    return out


def _cell(c) -> str:
    return "—" if c is None else f"{fmt(c[3])} ({c[0]}, K = {c[1]}, {c[2].mean:.0f} bits)"


def c5_lines(grid, healthy) -> list[str]:
    """C5: MVQ's reconstruction against each baseline at equal bits, mask bits counted.

    Bits per image differ between cells, so each MVQVAE cell is bracketed by the baseline's
    cells: **held** if MVQ beats the baseline cell with the fewest bits at or above its own (a
    baseline that reads at least as many bits), **not held** if the best baseline cell at or
    below its bits beats MVQ (a baseline that reads no more bits), unclear otherwise (and when
    both happen: the baseline is then not monotone in bits at this budget, or when no finished
    baseline cell reads as many bits as MVQ: winning against fewer bits decides nothing).
    """
    out = []
    for tokens, k, bits, mvq in _groups(grid, "mvqvae"):
        parts = []
        for name, rows, method in (("VQ-VAE-2", grid, "vqvae2"),
                                   ("healthy VQ-VAE-2", healthy, "vqvae2"),
                                   ("FSQ-VAE", grid, "fsqvae")):  # fmt: skip
            cells = _groups(rows, method)
            below = [c for c in cells if c[2].mean <= bits.mean]
            above = [c for c in cells if c[2].mean >= bits.mean]
            lo = min(below, key=lambda c: c[3].mean, default=None)  # best with <= bits
            hi = min(above, key=lambda c: (c[2].mean, c[3].mean), default=None)  # nearest >=
            wins = hi is not None and compare(mvq, hi[3]) == "held"
            loses = lo is not None and compare(lo[3], mvq) == "held"
            if wins and loses:  # a baseline with fewer bits beats one with more
                v = "unclear at this budget (the baseline is not monotone in bits)"
            elif wins or loses:
                v = "held" if wins else "not held"
            elif lo is None and hi is None:
                v = "not measured yet"
            elif hi is None:  # MVQ beats every baseline cell that reads fewer bits
                v = "unclear: no finished baseline cell reads as many bits"
            else:
                v = "unclear at this budget"
            parts.append(f"{name}: best at ≤ its bits {_cell(lo)}, nearest at ≥ {_cell(hi)}: "
                         f"**{v}**")  # fmt: skip
        out.append(
            f"- **C5** (reconstruction fd_fmnist at equal bits) MVQVAE {tokens}, K = {k} "
            f"({bits.mean:.0f} bits, mask bits counted) {fmt(mvq)} vs " + "; ".join(parts) + "."
        )
    return out


def plots(grid, healthy, j_ablation) -> list[str]:
    """Figure 5's layout, fd_fmnist vs J and rate-distortion; returns the markdown images."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = []
    if grid:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
        for ax, k in zip(axes, ("16", "256"), strict=True):
            for method in ("vqvae2", "mvqvae", "fsqvae"):
                xs, ys, es = [], [], []
                for tokens in ("1+1", "4+1", "16+1"):
                    st = stat(select(grid, method=method, tokens=tokens, K=k), "sample_fd_fmnist")
                    if st:
                        xs.append(int(tokens.split("+")[0]) + 1)
                        ys.append(st.mean)
                        es.append(st.std)
                if xs:
                    ax.errorbar(xs, ys, es, marker="o", capsize=3, label=method)
            ax.set(title=f"K = {k}", xlabel="tokens per image (primary + secondary)",
                   xscale="log", xlim=(1.7, 20))  # fmt: skip
            ax.set_xticks([2, 5, 17], ["1+1", "4+1", "16+1"])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.legend()
        axes[0].set_ylabel("sample fd_fmnist (lower is better)")
        fig.tight_layout()
        fig.savefig(HERE / "fd_vs_tokens.png", dpi=120)
        images.append("![sample fd_fmnist vs tokens](fd_vs_tokens.png)")
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        series = [(m, select(grid, method=m)) for m in ("vqvae2", "mvqvae", "fsqvae")]
        series += [(f"healthy {m}", select(healthy, method=m)) for m in ("vqvae2", "mvqvae")]
        for ax, metric, label in zip(axes, ("mse", "fd_fmnist"),
                                     ("reconstruction MSE", "reconstruction fd_fmnist"),
                                     strict=True):  # fmt: skip
            for name, rows in series:  # points, not lines: cells of one method differ in S and K
                keys = sorted({(r["tokens"], r["K"]) for r in rows})
                pts = [(t, k, stat(select(rows, tokens=t, K=k), "bits_per_image"),
                        stat(select(rows, tokens=t, K=k), metric)) for t, k in keys]  # fmt: skip
                pts = [(t, k, b.mean, e.mean, e.std) for t, k, b, e in pts if b and e]
                if not pts:
                    continue
                bar = ax.errorbar([p[2] for p in pts], [p[3] for p in pts], [p[4] for p in pts],
                                  marker="o" if name.startswith("healthy") else "s", capsize=3,
                                  ls="none", mfc="none" if name.startswith("healthy") else None,
                                  label=name)  # fmt: skip
                for t, k, b, e, _ in pts:
                    ax.annotate(f"{t}/{k}", (b, e), fontsize=6, xytext=(3, 3),
                                textcoords="offset points", color=bar[0].get_color())  # fmt: skip
            ax.set(xlabel="bits per image (mask bits counted; labels: tokens/K)", ylabel=label,
                   xscale="log")  # fmt: skip
            ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(HERE / "rate_distortion.png", dpi=120)
        images.append("![rate-distortion](rate_distortion.png)")
    if j_ablation:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for tokens in ("1+1", "4+1"):
            pts = [(int(j), stat(select(j_ablation, tokens=tokens, J=j), "sample_fd_fmnist"))
                   for j in ("1", "4", "16", "64", "256")]  # fmt: skip
            pts = [(j, s.mean, s.std) for j, s in pts if s]
            if pts:
                ax.errorbar(*zip(*pts, strict=True), marker="o", capsize=3, label=tokens)
        ax.set(xlabel="J (masks per instance)", ylabel="sample fd_fmnist", xscale="log")
        ax.legend()
        fig.tight_layout()
        fig.savefig(HERE / "fd_vs_j.png", dpi=120)
        images.append("![sample fd_fmnist vs J](fd_vs_j.png)")
    plt.close("all")
    return images


def timing() -> list[str]:
    """Wall time per finished cell (the stage markers' ``wall_s``), per sweep: a table."""
    lines = ["### Time per cell (wall clock, from the stage markers)", "",
             "| sweep | finished cells | median h/cell | total h | train | prior | evals |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    hours = []
    for sweep in SWEEPS:
        cells = []
        for cell in sorted((HERE / sweep / "cells").glob("*")):
            marks = {m.stem: json.loads(m.read_text()) for m in (cell / "markers").glob("*.json")}
            if "sample_eval" in marks:
                cells.append({k: v.get("wall_s", 0.0) / 3600 for k, v in marks.items()})
        if cells:
            total = [sum(c.values()) for c in cells]
            hours += total
            part = {k: statistics.median(c.get(k, 0.0) for c in cells) for k in
                    ("train", "prior", "eval", "sample_eval")}  # fmt: skip
            lines.append(
                f"| {sweep} | {len(cells)} | {statistics.median(total):.2f} | "
                f"{sum(total):.1f} | {part['train']:.2f} | {part['prior']:.2f} | "
                f"{part['eval'] + part['sample_eval']:.2f} |"
            )
    lines += [
        "",
        f"All {len(hours)} finished cells took {sum(hours):.1f} cell-hours (one thread each, "
        "two cells at a time on the 2 cores, so about half that in wall-clock time). "
        "Stage times are medians over cells, in hours, with 1 thread per cell and two "
        "cells (or other work) sharing the 2 cores; a resumed stage counts only its last "
        "attempt.",
        "",
    ]
    return lines


def main() -> None:
    rows = {name: read_rows(name) for name in SWEEPS}
    done = ", ".join(f"{name}: {len(r)} cells" for name, r in rows.items())
    # J = 256 is the grid's MVQVAE default: the ablation reads those cells instead of rerunning
    # the same commands (same config, seeds and budget).
    rows["j_ablation"] += [
        {**r, "J": "256"}
        for r in rows["grid"]
        if r["method"] == "mvqvae" and r["K"] == "16" and r["tokens"] in ("1+1", "4+1")
    ]
    claims = verdicts(
        rows["grid"], rows["healthy"], rows["j_ablation"], rows["mask_prior"], rows["longer"]
    )
    lines = ["### Verdicts", "", *claims, ""]
    lines += [
        f"Finished cells so far: {done} (the J ablation also reads the grid's J = 256 cells).",
        "",
    ]
    for name, axes in (("grid", ["method", "tokens", "K"]),
                       ("healthy", ["method", "tokens", "K"]),
                       ("j_ablation", ["tokens", "J"]),
                       ("longer", ["method", "tokens", "K"]),
                       ("mask_prior", ["method", "tokens", "K"])):  # fmt: skip
        if rows[name]:
            lines += [f"### {name} (mean ± std over seeds)", "", *group_table(rows[name], axes), ""]
    lines += timing()
    images = plots(rows["grid"], rows["healthy"], rows["j_ablation"])
    if images:
        lines += ["Error bars: std over seeds; a point without one has a single seed so far.", ""]
    lines += images
    readme = HERE / "README.md"
    text = readme.read_text()
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    readme.write_text(f"{head}{START}\n" + "\n".join(lines) + f"\n{END}{tail}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
