"""Tables, plots and the C1-C6 verdicts of the Fashion-MNIST replication study.

Reads the sweeps' ``results.csv`` (``mvq sweep results/fmnist/<name>.yaml``), groups the cells
over seeds (mean ± std), draws the figures and rewrites the part of ``README.md`` between the
``analyze`` markers, and the two verdict sentences of the top-level README. Run from the
repository root::

    .venv/bin/python results/fmnist/analyze.py                  # the study's own cells
    .venv/bin/python results/fmnist/analyze.py --runs DIR --out OUT   # a rerun's, elsewhere

Every verdict is ``mvq.metrics.verdict``'s rule: the difference of means (method minus
baseline, in the metric's units) with its 95% Welch interval over per-seed values (paired by
seed where both sides share their tokenizers: C6), judged against a margin δ stated before the
new seeds ran: 5% of the baseline's mean, never below 3× the floor (fd_fmnist of 10,000
training against the 10,000 test images, ``floor.json``). Words: **better** / **worse** (the
interval excludes 0 on that side), **equivalent within ±δ** (the interval lies inside ±δ),
**unresolved** (neither; with the seeds per side the observed spread would need).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from mvq.metrics import verdict as rule

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SWEEPS = ("grid", "healthy", "j_ablation", "longer", "mask_prior")
METHODS = ("mvqvae", "vqvae2", "fsqvae")
START, END = "<!-- analyze:start -->", "<!-- analyze:end -->"
SUMMARY_START, SUMMARY_END = "<!-- verdicts:start -->", "<!-- verdicts:end -->"
FLOOR_FILE = HERE / "floor.json"
TABLE_METRICS = (
    ("bits_per_image", "bits/image", "{:.0f}"),
    ("mse", "recon MSE", "{:.4f}"),
    ("psnr", "PSNR", "{:.2f}"),
    ("fd_fmnist", "recon fd_fmnist", "{:.1f}"),
    ("usage_primary", "usage 1°", "{:.2f}"),
    ("usage_secondary", "usage 2°", "{:.2f}"),
    ("perplexity_primary", "perpl. 1°", "{:.2f}"),
    ("sample_fd_fmnist", "sample fd_fmnist", "{:.1f}"),
    ("sampling_sd", "sampling sd", "{:.1f}"),
    ("sample_f8", "F_8", "{:.3f}"),
    ("sample_f1_8", "F_1/8", "{:.3f}"),
    ("prior_nll_nats_per_token", "prior NLL nats/token", "{:.3f}"),
)
SAMPLING_SEEDS = (0, 1)  # eval.sample_seeds of the sweeps


@dataclass
class Stat:
    """Mean, standard deviation (0 for one seed) and the number of seeds of one metric."""

    mean: float
    std: float
    n: int

    def text(self, fmt: str) -> str:
        return fmt.format(self.mean) + (f" ± {fmt.format(self.std)}" if self.n > 1 else "")


def read_rows(sweep: str, runs: Path = HERE) -> list[dict[str, str]]:
    """The finished cells of one sweep under ``runs`` (empty before it has run), by seed."""
    path = runs / sweep / "results.csv"
    if not path.is_file():
        return []
    with open(path) as f:
        rows = [r | {"_sweep": sweep} for r in csv.DictReader(f)]
    return sorted(rows, key=lambda r: int(r.get("seed") or 0))


def values(rows: list[dict[str, str]], metric: str) -> list[float]:
    """``metric`` of each row that has it, in the rows' (seed) order."""
    return [float(r[metric]) for r in rows if r.get(metric) not in (None, "", "nan")]


def sampling_sd(rows: list[dict[str, str]]) -> float | None:
    """The sampling spread of sample fd_fmnist: the standard deviation between a cell's
    sampling seeds, pooled (root mean variance) over the cells sampled more than once."""
    variances = []
    for r in rows:
        seeds = values([r], "sample_fd_fmnist_sampling_seed0") + values(
            [r], "sample_fd_fmnist_sampling_seed1"
        )
        if len(seeds) == 2:
            variances.append(statistics.variance(seeds))
    return math.sqrt(statistics.fmean(variances)) if variances else None


def stat(rows: list[dict[str, str]], metric: str) -> Stat | None:
    """Mean ± std of ``metric`` over the rows that have it (``sampling_sd``: pooled, n cells)."""
    if metric == "sampling_sd":
        sd = sampling_sd(rows)
        n = sum(1 for r in rows if r.get("sampling_seeds") == "2")
        return None if sd is None else Stat(sd, 0.0, 1 if n else 0)
    vals = values(rows, metric)
    if not vals:
        return None
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return Stat(statistics.fmean(vals), std, len(vals))


def select(rows: list[dict[str, str]], **labels: str) -> list[dict[str, str]]:
    """Rows whose axes equal all ``labels``."""
    return [r for r in rows if all(r.get(k) == v for k, v in labels.items())]


def read_floor(path: Path = FLOOR_FILE) -> dict:
    """``floor.json``: fd_fmnist between real image sets of the comparisons' sizes."""
    return json.loads(path.read_text())


def measure_floor(path: Path = FLOOR_FILE, draws: int = 5) -> dict:
    """fd_fmnist of 10,000 training images (``draws`` seeded subsets) against the 10,000 test
    images, and of two 5,000-image halves of the test split (what ``mvq eval`` reports as
    ``fd_fmnist_floor``), with the study's committed classifier; writes ``path``."""
    import numpy as np
    from safetensors.torch import load_file

    from mvq.data import build_dataset
    from mvq.metrics.fd_fmnist import (
        ClassifierConfig,
        FMNISTClassifier,
        classifier_features,
        fd_floor,
    )
    from mvq.metrics.frechet import frechet_distance

    (weights,) = sorted((HERE / "cache" / "fd_fmnist").glob("*.safetensors"))
    model = FMNISTClassifier(ClassifierConfig())
    model.load_state_dict(load_file(str(weights)))
    train = classifier_features(model, build_dataset("fashion_mnist", None, "train").images)
    test = classifier_features(model, build_dataset("fashion_mnist", None, "val").images)
    fds = []
    for seed in range(draws):
        order = np.random.default_rng(seed).permutation(len(train))[: len(test)]
        fds.append(frechet_distance(train[order], test))
    floor = {
        "classifier": weights.stem,
        "fd_fmnist_10000_train_vs_10000_test": [round(v, 4) for v in fds],
        "fd_fmnist_10000": round(statistics.fmean(fds), 4),
        "fd_fmnist_10000_sd": round(statistics.stdev(fds), 4),
        "fd_fmnist_5000_test_halves": round(fd_floor(test, 0), 4),
        "command": "python results/fmnist/analyze.py --measure-floor",
    }
    path.write_text(json.dumps(floor, indent=2) + "\n")
    return floor


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


# --- the verdicts -----------------------------------------------------------------------------


class Judge:
    """The rule with the study's floor: ``judge(method_rows, baseline_rows)`` -> verdict text."""

    def __init__(self, floor: float, metric: str = "sample_fd_fmnist") -> None:
        self.floor = floor
        self.metric = metric
        self.decided: list[tuple[str, rule.Verdict]] = []  # (what, verdict) for the summary
        self.cells: dict[str, dict[tuple[str, str], float]] = {}  # claim -> cell -> hours

    def use(self, what: str, *groups: list[dict[str, str]]) -> None:
        """Count the cells a verdict reads (and their wall hours) for its claim."""
        claim = self.cells.setdefault(what.split(" ")[0], {})
        for rows in groups:
            for r in rows:
                hours = float(r.get("total_wall_s") or 0.0) / 3600
                claim[(r.get("_sweep", ""), r.get("cell", ""), r.get("J", ""))] = hours

    def __call__(
        self,
        what: str,
        method: list[dict[str, str]],
        baseline: list[dict[str, str]],
        metric: str | None = None,
        paired: bool = False,
    ) -> str:
        m = metric or self.metric
        self.use(what, method, baseline)
        a, b = values(method, m), values(baseline, m)
        if paired:  # by seed: only the seeds both sides have
            seeds = {r["seed"] for r in method} & {r["seed"] for r in baseline}
            a = values([r for r in method if r["seed"] in seeds], m)
            b = values([r for r in baseline if r["seed"] in seeds], m)
        v = rule.compare(a, b, self.floor, paired_=paired)
        return self.record(what, v)

    def record(self, what: str, v: rule.Verdict) -> str:
        self.decided.append((what, v))
        return v.text()


def verdicts(
    grid, healthy, j_ablation, mask_prior, longer, floor: float
) -> tuple[list[str], Judge]:
    """One line per claim C1-C6 with the numbers that decide it, and the judge that kept them."""
    m = "sample_fd_fmnist"
    judge = Judge(floor, m)
    out = []

    def rows(sweep_rows, **labels):
        return select(sweep_rows, **labels)

    def s(sweep_rows, metric=m, **labels):
        return stat(select(sweep_rows, **labels), metric)

    for tokens in ("1+1", "4+1", "16+1"):  # the paper's Figure 5 stops at 4+1 (F = 14)
        mvq, vq, fsq = (rows(grid, method=x, tokens=tokens, K="16") for x in METHODS)
        mvqh, vqh = (rows(healthy, method=x, tokens=tokens, K="16") for x in ("mvqvae", "vqvae2"))
        beyond = ", beyond the paper's 1+1 and 4+1" if tokens == "16+1" else ""
        c = f"C1 {tokens}"
        out.append(
            f"- **C1** ({tokens}, K = 16, sample fd_fmnist, lower is better{beyond}): MVQVAE "
            f"{fmt(stat(mvq, m))} vs VQ-VAE-2 {fmt(stat(vq, m))}: "
            f"{judge(f'{c} vs VQ-VAE-2', mvq, vq)}; vs FSQ-VAE {fmt(stat(fsq, m))}: "
            f"{judge(f'{c} vs FSQ-VAE', mvq, fsq)}; vs the healthy VQ-VAE-2 "
            f"{fmt(stat(vqh, m))}: {judge(f'{c} vs the healthy VQ-VAE-2', mvq, vqh)}; both "
            f"healthy {fmt(stat(mvqh, m))} vs {fmt(stat(vqh, m))}: "
            f"{judge(f'{c} both healthy', mvqh, vqh)}."
        )
    for tokens in ("1+1", "4+1"):
        mvq, vq = (rows(longer, method=x, tokens=tokens, K="16") for x in ("mvqvae", "vqvae2"))
        short = [rows(grid, method=x, tokens=tokens, K="16") for x in ("mvqvae", "vqvae2")]
        out.append(
            f"- **C1 after 10 epochs** ({tokens}, K = 16): MVQVAE {fmt(stat(mvq, m))} vs "
            f"VQ-VAE-2 {fmt(stat(vq, m))}: {judge(f'C1 {tokens} after 10 epochs', mvq, vq)} "
            f"(after 2 epochs {fmt(stat(short[0], m))} vs {fmt(stat(short[1], m))})."
        )
    mvq1, mvq1h = (rows(r, method="mvqvae", tokens="1+1", K="16") for r in (grid, healthy))
    vq4, vq4h = (rows(r, method="vqvae2", tokens="4+1", K="16") for r in (grid, healthy))
    out.append(
        f"- **C2** (MVQVAE 1+1 vs VQ-VAE-2 4+1, K = 16): {fmt(stat(mvq1, m))} vs "
        f"{fmt(stat(vq4, m))}: {judge('C2', mvq1, vq4)}; vs healthy {fmt(stat(vq4h, m))}: "
        f"{judge('C2 vs healthy', mvq1, vq4h)}; both healthy {fmt(stat(mvq1h, m))} vs "
        f"{fmt(stat(vq4h, m))}: {judge('C2 both healthy', mvq1h, vq4h)}."
    )
    for tokens in ("1+1", "4+1"):
        out.append(c3_line(judge, select(j_ablation, tokens=tokens), tokens))
    for tokens in ("1+1", "4+1", "16+1"):
        out.append(c4_line(judge, grid, healthy, tokens))
    out += c5_lines(grid, healthy, floor, judge)
    for tokens in ("1+1", "4+1"):
        modelled = rows(mask_prior, method="mvqvae", tokens=tokens, K="16")
        rand = rows(grid, method="mvqvae", tokens=tokens, K="16")
        f8 = [s(r, "sample_f8", method="mvqvae", tokens=tokens, K="16") for r in (mask_prior, grid)]
        bits = [s(r, "prior_bits_per_image", method="mvqvae", tokens=tokens, K="16")
                for r in (mask_prior, grid)]  # fmt: skip
        out.append(
            f"- **C6** ({tokens}, K = 16, sample fd_fmnist): prior with the mask bits "
            f"{fmt(stat(modelled, m))} vs random masks {fmt(stat(rand, m))}: "
            f"{judge(f'C6 {tokens}', modelled, rand, paired=True)} (same tokenizers, paired "
            f"by seed; F_8 {fmt(f8[0], '{:.3f}')} vs {fmt(f8[1], '{:.3f}')}; the prior spends "
            f"{fmt(bits[0])} bits per image on codes and mask vs {fmt(bits[1])} on the codes "
            "alone)."
        )
    return out, judge


def c3_line(judge: Judge, rows: list[dict[str, str]], tokens: str) -> str:
    """C3: the slope of sample fd_fmnist per doubling of J (margin δ/8: at most δ over the
    whole range J = 1..256) and J >= 16 pooled against J <= 4."""
    m = judge.metric
    by_j = {j: stat(select(rows, J=j), m) for j in ("1", "4", "16", "64", "256")}
    trend = ", ".join(f"J={j}: {fmt(v)}" for j, v in by_j.items())
    high = [r for r in rows if int(r["J"]) >= 16]
    low = [r for r in rows if int(r["J"]) <= 4]
    pooled = judge(f"C3 {tokens} J >= 16 vs J <= 4", high, low)
    judge.use("C3", rows)
    pts = [(math.log2(float(r["J"])), float(r[m])) for r in rows
           if r.get(m) not in (None, "", "nan")]  # fmt: skip
    low_mean = statistics.fmean(values(low, m)) if values(low, m) else math.nan
    iv = rule.slope(*zip(*pts, strict=True)) if pts else None
    v = rule.decide(iv, rule.margin(low_mean, judge.floor) / 8)
    slope = judge.record(f"C3 {tokens} slope per doubling of J", v)
    return (
        f"- **C3** ({tokens}, K = 16): {trend}. Slope per doubling of J (over "
        f"{len(pts)} cells): {slope}; J >= 16 pooled vs J <= 4: {pooled}."
    )


def c4_line(judge: Judge, grid, healthy, tokens: str) -> str:
    """C4: the gain of MVQ over VQ-VAE-2 (VQ-VAE-2's sample fd_fmnist minus MVQVAE's) at
    K = 16 minus the gain at K = 256, with the interval of that difference of differences
    (higher is better: the claim is a larger gain with fewer entries); δ: 5% of the two
    VQ-VAE-2 cells' mean, never below 3 floors."""
    m = judge.metric
    parts = []
    for name, rows in (("", grid), ("both healthy ", healthy)):
        g = {k: [values(select(rows, method=x, tokens=tokens, K=k), m)
                 for x in ("vqvae2", "mvqvae")] for k in ("16", "256")}  # fmt: skip
        judge.use("C4", *(select(rows, tokens=tokens, method=x) for x in ("vqvae2", "mvqvae")))
        iv = rule.contrast([(1.0, g["16"][0]), (-1.0, g["16"][1]),
                            (-1.0, g["256"][0]), (1.0, g["256"][1])])  # fmt: skip
        vq = g["16"][0] + g["256"][0]
        delta_margin = rule.margin(statistics.fmean(vq) if vq else math.nan, judge.floor)
        v = judge.record(f"C4 {tokens} {name}".strip(), rule.decide(iv, delta_margin, False))
        gains = [_gain(g[k]) for k in ("16", "256")]
        parts.append(f"{name}gain at K = 16 {gains[0]} vs K = 256 {gains[1]}: {v}")
    return f"- **C4** ({tokens}, sample fd_fmnist, gain of MVQ over VQ-VAE-2): " + "; ".join(
        parts
    ) + "."


def _gain(pair: list[list[float]]) -> str:
    vq, mvq = pair
    if not (vq and mvq):
        return "—"
    return f"{statistics.fmean(vq) - statistics.fmean(mvq):.1f}"


def _groups(rows, method: str) -> list[tuple[str, str, Stat, list[dict[str, str]]]]:
    """``(tokens, K, bits, rows)`` of each measured (tokens, K) group of a method."""
    out = []
    for tokens, k in sorted({(r["tokens"], r["K"]) for r in select(rows, method=method)}):
        group = select(rows, method=method, tokens=tokens, K=k)
        bits = stat(group, "bits_per_image")
        if bits and values(group, "fd_fmnist"):
            out.append((tokens, k, bits, group))
    return out


def _cell(c) -> str:
    if c is None:
        return "—"
    return f"{fmt(stat(c[3], 'fd_fmnist'))} ({c[0]}, K = {c[1]}, {c[2].mean:.0f} bits)"


def c5_lines(grid, healthy, floor: float, judge: Judge | None = None) -> list[str]:
    """C5: MVQ's reconstruction against each baseline at equal bits, mask bits counted.

    Bits per image differ between cells, so each MVQVAE cell is bracketed by the baseline's
    cells: MVQ against the baseline cell with the fewest bits at or above its own (``hi``: a
    baseline that reads at least as many bits) and against the best baseline cell at or below
    its bits (``lo``: one that reads no more). **better** when MVQ beats ``hi``; **worse** when
    ``lo`` beats MVQ; **equivalent** when it is equivalent to both; **unresolved** otherwise
    (also when both happen, the baseline not being monotone in bits, and when no finished
    baseline cell reads as many bits as MVQ: winning against fewer bits decides nothing).
    """
    judge = judge or Judge(floor)
    out = []
    for tokens, k, bits, mvq in _groups(grid, "mvqvae"):
        parts = []
        for name, rows, method in (("VQ-VAE-2", grid, "vqvae2"),
                                   ("healthy VQ-VAE-2", healthy, "vqvae2"),
                                   ("FSQ-VAE", grid, "fsqvae")):  # fmt: skip
            cells = _groups(rows, method)
            below = [c for c in cells if c[2].mean <= bits.mean]
            above = [c for c in cells if c[2].mean >= bits.mean]
            fd = lambda c: statistics.fmean(values(c[3], "fd_fmnist"))  # noqa: E731
            lo = min(below, key=fd, default=None)  # best with <= bits
            hi = min(above, key=lambda c: (c[2].mean, fd(c)), default=None)  # nearest >=
            judge.use("C5", mvq, *(c[3] for c in (lo, hi) if c is not None))
            vs = {}
            for side, cell in (("hi", hi), ("lo", lo)):
                if cell is not None and not (side == "lo" and cell is hi):
                    vs[side] = rule.compare(values(mvq, "fd_fmnist"),
                                            values(cell[3], "fd_fmnist"), floor)  # fmt: skip
            wins = "hi" in vs and vs["hi"].word == "better"
            loses = "lo" in vs and vs["lo"].word == "worse"
            if wins and loses:
                word = "unresolved (the baseline is not monotone in bits)"
            elif wins or loses:
                word = "better" if wins else "worse"
            elif not vs:
                word = "not measured yet"
            elif hi is None:
                word = "unresolved: no finished baseline cell reads as many bits"
            elif all(v.word == "equivalent" for v in vs.values()):
                word = "equivalent within ±δ"
            else:
                word = "unresolved"
            judge.decided.append(
                (f"C5 {tokens}, K = {k} vs {name}", rule.Verdict(None, math.nan, word))
            )
            sign = {"hi": "≥" if lo is not hi else "=", "lo": "≤"}
            detail = "; ".join(f"vs {sign[side]} {v.text()}" for side, v in vs.items())
            parts.append(f"{name}: best at ≤ its bits {_cell(lo)}, nearest at ≥ {_cell(hi)}: "
                         f"**{word}**" + (f" ({detail})" if detail else ""))  # fmt: skip
        out.append(
            f"- **C5** (reconstruction fd_fmnist at equal bits) MVQVAE {tokens}, K = {k} "
            f"({bits.mean:.0f} bits, mask bits counted) {fmt(stat(mvq, 'fd_fmnist'))} vs "
            + "; ".join(parts) + "."
        )
    return out


def cost_lines(judge: Judge, cpu: str) -> list[str]:
    """Cell-hours per claim: the finished cells its verdicts read and their wall time."""
    lines = ["### Cell-hours per verdict", "",
             f"The finished cells each claim's verdicts read and their summed wall time ({cpu}; "
             "one thread per cell, two cells at a time; a cell read by several claims counts "
             "in each).", "", "| claim | cells | cell-hours |", "|---|---|---|"]  # fmt: skip
    for claim, cells in sorted(judge.cells.items()):
        lines.append(f"| {claim} | {len(cells)} | {sum(cells.values()):.1f} |")
    return [*lines, ""]


def summary(judge: Judge) -> str:
    """The two sentences of the top-level README: what the rule decided, what it did not."""
    by_word: dict[str, list[str]] = {}
    needs = []
    for what, v in judge.decided:
        w = v.word.split(" ")[0].split(":")[0]
        by_word.setdefault(w, []).append(what)
        if v.word == "unresolved" and v.seeds_needed is not None:
            needs.append(v.seeds_needed)
    n = len(judge.decided)
    decided = [
        f"**{w}** in {len(by_word[w])} ({', '.join(by_word[w])})"
        for w in ("better", "worse", "equivalent")
        if by_word.get(w)
    ]
    first = (
        f"Of the study's {n} comparisons (C1-C6; each decided by the 95% interval of the "
        "difference against a margin δ of 5% of the baseline), the method side (MVQ; for C3 "
        "the larger J, for C4 the gain at K = 16, for C6 the prior that models the mask) is "
        + ("; ".join(decided) if decided else "decided in none")
        + "."
    )
    rest = n - sum(len(by_word.get(w, [])) for w in ("better", "worse", "equivalent"))
    need = (
        f", the observed spreads needing about {min(needs)} to {max(needs)} seeds per side"
        if needs
        else ""
    )
    second = f"The other {rest} are unresolved at the seeds run so far{need}."
    return f"{first} {second}"


def plots(grid, healthy, j_ablation, out: Path = HERE) -> list[str]:
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
        fig.savefig(out / "fd_vs_tokens.png", dpi=120)
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
        fig.savefig(out / "rate_distortion.png", dpi=120)
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
        fig.savefig(out / "fd_vs_j.png", dpi=120)
        images.append("![sample fd_fmnist vs J](fd_vs_j.png)")
    plt.close("all")
    return images


def timing(runs: Path = HERE) -> list[str]:
    """Wall time per finished cell (the stage markers' ``wall_s``), per sweep: a table."""
    lines = ["### Time per cell (wall clock, from the stage markers)", "",
             "| sweep | finished cells | median h/cell | total h | train | prior | evals |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    hours = []
    for sweep in SWEEPS:
        cells = []
        for cell in sorted((runs / sweep / "cells").glob("*")):
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="analyze.py",
        description="Tables, plots and verdicts of the Fashion-MNIST replication study.",
    )
    p.add_argument("--runs", type=Path, default=HERE,
                   help="folder holding each sweep's --out as <sweep>/results.csv "
                        "(default: the study folder)")  # fmt: skip
    p.add_argument("--out", type=Path, default=HERE,
                   help="folder for README.md's results and the figures (default: the study "
                        "folder; a README.md there is updated between its markers, else "
                        "written)")  # fmt: skip
    p.add_argument("--measure-floor", action="store_true",
                   help="measure floor.json first (needs Fashion-MNIST; seconds)")  # fmt: skip
    p.add_argument("--no-plots", action="store_true", help="skip the figures")
    return p.parse_args(argv)


def results_lines(rows: dict, floor: dict, out: Path | None, runs: Path) -> tuple[list[str], Judge]:
    """The markdown between the README's markers (figures drawn into ``out`` unless None)."""
    done = ", ".join(f"{name}: {len(r)} cells" for name, r in rows.items())
    # J = 256 is the grid's MVQVAE default: the ablation reads those cells instead of rerunning
    # the same commands (same config, seeds and budget).
    rows = dict(rows)
    rows["j_ablation"] = rows["j_ablation"] + [
        {**r, "J": "256"}
        for r in rows["grid"]
        if r["method"] == "mvqvae" and r["K"] == "16" and r["tokens"] in ("1+1", "4+1")
    ]
    f10 = floor["fd_fmnist_10000"]
    claims, judge = verdicts(
        rows["grid"], rows["healthy"], rows["j_ablation"], rows["mask_prior"], rows["longer"],
        f10,
    )  # fmt: skip
    lines = ["### Verdicts", "",
             "Each line: MVQ minus the baseline (Δ, in fd_fmnist; negative is better), its 95% "
             "interval over per-seed values and the seeds per side, the margin δ (5% of the "
             f"baseline's mean, at least 3 × the floor {f10:.2f}) and the word.", "",
             *claims, ""]  # fmt: skip
    lines += [
        f"Finished cells so far: {done} (the J ablation also reads the grid's J = 256 cells).",
        "",
        f"**Floors** (what two real image sets score): fd_fmnist of 10,000 training images "
        f"against the 10,000 test images {f10:.2f} ± {floor['fd_fmnist_10000_sd']:.2f} "
        f"({len(floor['fd_fmnist_10000_train_vs_10000_test'])} draws; the size of every "
        f"comparison below), of two 5,000-image halves of the test split "
        f"{floor['fd_fmnist_5000_test_halves']:.2f} (`fd_fmnist_floor` in each eval.json). "
        "\"sampling sd\": the spread of a cell's sample fd_fmnist between its two sampling "
        "seeds (pooled over the cells sampled twice; cells before issue 24 were sampled once), "
        "beside the training spread (± over seeds).",
        "",
    ]
    for name, axes in (("grid", ["method", "tokens", "K"]),
                       ("healthy", ["method", "tokens", "K"]),
                       ("j_ablation", ["tokens", "J"]),
                       ("longer", ["method", "tokens", "K"]),
                       ("mask_prior", ["method", "tokens", "K"])):  # fmt: skip
        if rows[name]:
            lines += [f"### {name} (mean ± std over seeds)", "", *group_table(rows[name], axes), ""]
    lines += timing(runs)
    lines += cost_lines(judge, "Intel Xeon and AMD EPYC 2-core machines, see Set-up")
    if out is not None:
        images = plots(rows["grid"], rows["healthy"], rows["j_ablation"], out)
        if images:
            lines += ["Error bars: std over seeds; a point without one has a single seed so far.",
                      ""]  # fmt: skip
        lines += images
    return lines, judge


def replace_between(text: str, start: str, end: str, body: str) -> str:
    """``text`` with what lies between the markers ``start`` and ``end`` replaced by ``body``."""
    head, rest = text.split(start, 1)
    return f"{head}{start}\n{body}\n{end}{rest.split(end, 1)[1]}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not any((args.runs / s / "results.csv").is_file() for s in SWEEPS):
        print(f"analyze.py: error: no <sweep>/results.csv under {args.runs}: give the folder "
              "that holds the sweeps' --out folders with --runs", file=sys.stderr)  # fmt: skip
        return 2
    floor = measure_floor() if args.measure_floor else read_floor()
    rows = {name: read_rows(name, args.runs) for name in SWEEPS}
    args.out.mkdir(parents=True, exist_ok=True)
    lines, judge = results_lines(rows, floor, None if args.no_plots else args.out, args.runs)
    readme = args.out / "README.md"
    body = "\n".join(lines)
    text = readme.read_text() if readme.is_file() else f"{START}\n{END}\n"
    readme.write_text(replace_between(text, START, END, body))
    sentences = summary(judge)
    top = ROOT / "README.md"
    if args.out.resolve() == HERE and SUMMARY_START in top.read_text():
        top.write_text(replace_between(top.read_text(), SUMMARY_START, SUMMARY_END, sentences))
    else:
        (args.out / "verdicts.md").write_text(sentences + "\n")
    print(body + "\n\n" + sentences)
    return 0


if __name__ == "__main__":
    sys.exit(main())
