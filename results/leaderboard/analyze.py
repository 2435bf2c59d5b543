"""Tables, Pareto fronts, plots and the M1, M2, F1-F3 verdicts of the quantizer leaderboard.

Reads each leaderboard sweep's ``results.csv`` (``mvq sweep results/leaderboard/<name>.yaml``
collects it as cells finish) and the study's cells that the leaderboard reuses
(``results/fmnist``: VQ-VAE-2 as the paper trains it and healthy, FSQ-VAE, MVQVAE with random
masks and with the mask-aware prior), groups the cells by family x rate (tokens, K) over seeds,
draws the Pareto plots, rewrites the part of ``README.md`` between the ``leaderboard`` markers
and the answer of the top-level README's "Which quantizer at N bits?". Run it from anywhere::

    .venv/bin/python results/leaderboard/analyze.py                       # the committed cells
    .venv/bin/python results/leaderboard/analyze.py --runs DIR --out OUT  # a rerun's, elsewhere

Two rates per cell: ``bits_per_image``, every bit the decoder reads (indices, MVQ's mask or
mask index), and the **NLL rate**: the prior's NLL on the test tokens in bits per image
(``prior_bits_per_image``, what an entropy coder would spend), plus the mask's raw bits where
the prior does not model the mask (the decoder still reads them).

Every verdict is ``mvq.metrics.verdict``'s rule, with the study's floor and helpers
(``results/fmnist/analyze.py``): the difference of means (method minus baseline) with its 95%
Welch interval over per-seed values against a margin δ of 5% of the baseline's mean, never
below 3x the floor for fd_fmnist (``results/fmnist/floor.json``; no floor for MSE, usage and
perplexity). A side with fewer than 2 seeds is **not yet run**. "At no more bits" compares
with the best baseline (lowest mean, at least 2 seeds) among the cells that read no more bits
per image, picked after the fact: that favours the baseline.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mvq.metrics import verdict as rule

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
STUDY = ROOT / "results" / "fmnist"
START, END = "<!-- leaderboard:start -->", "<!-- leaderboard:end -->"
ANSWER_START, ANSWER_END = "<!-- quantizer-answer:start -->", "<!-- quantizer-answer:end -->"
ANSWER_FILE = "answer.md"  # where the answer goes when --out is not this folder
REUSED = {"grid": ("vqvae2", "fsqvae", "mvqvae"), "healthy": ("vqvae2",), "mask_prior": ("mvqvae",)}
SCREENS = ("vq_screen", "lfq_screen")  # name the best VQ-VAE-2 and the leaderboard's LFQ
CLAIMS = "fsq_claims"  # F1/F2: tokenizer-only cells by codebook size per level
CLAIMS_DRAWS = 10_000 * 4  # primary codes F1's usage counts: the test split x 4 tokens per image
OFF_BOARD = (*SCREENS, CLAIMS)  # short or tokenizer-only: not on the Pareto plots
SAMPLERS = {
    "mask_prior": "mask-aware prior",
    "masked_prior": "mask-aware prior",
    "fsq_maskgit": "MaskGIT",
}
DEFAULT_SAMPLER = "transformer"  # the Table 4 transformer; the decoder draws an unmodelled mask
METHOD_NAMES = {
    "vqvae2": "VQ-VAE-2",
    "fsqvae": "FSQ",
    "mvqvae": "MVQ",
    "mfsqvae": "Masked FSQ",
    "simvqvae": "SimVQ",
    "lfqvae": "LFQ",
    "bsqvae": "BSQ",
    "rvqvae": "residual VQ",
}
MASKED = ("MVQ", "Masked FSQ")
FAMILY_ORDER = (
    "VQ-VAE-2 (paper)",
    "VQ-VAE-2 (healthy)",
    "SimVQ",
    "residual VQ",
    "FSQ",
    "LFQ",
    "BSQ",
    "MVQ (random masks)",
    "MVQ (mask codebook)",
    "Masked FSQ (random masks)",
    "Masked FSQ (mask codebook)",
)
MARKERS = {DEFAULT_SAMPLER: "o", "mask-aware prior": "s", "MaskGIT": "^"}
# metric: (name in the verdicts, scale, lower is better, judged against the fd_fmnist floor)
METRICS = {
    "fd_fmnist": ("recon fd_fmnist", 1.0, True, True),
    "sample_fd_fmnist": ("sample fd_fmnist", 1.0, True, True),
    "mse": ("recon MSE x10^3", 1000.0, True, False),
    "usage_primary": ("usage %", 100.0, False, False),
    "perplexity_primary": ("perplexity", 1.0, False, False),
}
TABLE = (
    ("bits_per_image", "bits/image", "{:.1f}"),
    ("nll_bits", "NLL bits/image", "{:.1f}"),
    ("mse", "recon MSE", "{:.4f}"),
    ("fd_fmnist", "recon fd_fmnist", "{:.1f}"),
    ("sample_fd_fmnist", "sample fd_fmnist", "{:.1f}"),
    ("usage_primary", "usage 1°", "{:.2f}"),
    ("usage_secondary", "usage 2°", "{:.2f}"),
    ("perplexity_primary", "perpl. 1°", "{:.1f}"),
    ("perplexity_secondary", "perpl. 2°", "{:.1f}"),
)
DECIDED = ("better", "worse", "equivalent")
Row = dict[str, Any]
T = TypeVar("T")


@functools.cache
def study() -> Any:
    """The replication study's ``analyze.py`` as a module: its row readers, ``Stat``, ``fmt``,
    ``read_floor`` and ``replace_between`` are the leaderboard's too."""
    spec = importlib.util.spec_from_file_location("study_analyze", STUDY / "analyze.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


# --- reading the cells ------------------------------------------------------------------------


@contextmanager
def _inside(folder: Path) -> Iterator[None]:
    """Run a block with ``folder`` as the working directory (sweep files name configs from
    the repository root)."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


@functools.cache
def planned(path: Path) -> tuple[dict[str, str], ...]:
    """The axes of every cell a sweep file plans (``mvq sweep FILE --list``)."""
    from mvq.experiments.sweep import expand, load_sweep

    with _inside(ROOT):
        return tuple(dict(cell.axes) for cell in expand(load_sweep(path)))


def finished_cells(sweep_dir: Path) -> dict[frozenset, Path]:
    """The folders of a sweep's finished cells (``cell.json`` status ``done``) by their axes."""
    out = {}
    for record in sorted(sweep_dir.glob("cells/*/cell.json")):
        cell = json.loads(record.read_text())
        if cell.get("status") == "done":
            out[frozenset(cell.get("axes", {}).items())] = record.parent
    return out


def unmodelled_mask_bits(cell_dir: Path | None) -> float | None:
    """The mask bits the decoder reads but the cell's prior does not model (0 without a mask),
    from ``prior/model/config.json``; None when that file is missing."""
    path = None if cell_dir is None else cell_dir / "prior" / "model" / "config.json"
    if path is None or not path.is_file():
        return None
    config = json.loads(path.read_text()).get("config", {})
    return 0.0 if config.get("model_mask") else float(config.get("mask_bits") or 0)


def family(row: Row) -> str:
    """The quantizer family of a cell, from its axes: ``VQ-VAE-2 (paper)``, ``VQ-VAE-2
    (healthy)``, ``VQ-VAE-2 (healthy + cosine)``, ``MVQ (mask codebook)``, ``FSQ``, ..."""
    method, _, variant = str(row.get("method", "")).partition("_")
    name = METHOD_NAMES.get(method, method)
    if name == "VQ-VAE-2":
        options = row.get("options")
        if options:
            return "VQ-VAE-2 (healthy)" if options == "none" else f"VQ-VAE-2 (healthy + {options})"
        variant = row.get("variant") or variant or "paper"  # fsq_claims: healthy+all
        return f"VQ-VAE-2 ({variant.replace('+', ' + ')})"
    if name in MASKED:
        codebook = row.get("masks") == "codebook"
        return f"{name} ({'mask codebook' if codebook else 'random masks'})"
    return name


def label(fam: str, sampler: str) -> str:
    """A family with its sampler, the default transformer left unsaid."""
    return fam if sampler == DEFAULT_SAMPLER else f"{fam}, {sampler}"


def annotate(rows: list[Row], sweep: str, sweep_dir: Path) -> list[Row]:
    """Rows with ``_family``, ``_sampler``, ``_label`` and the NLL rate ``nll_bits``."""
    cells = finished_cells(sweep_dir)
    out = []
    for r in rows:
        fam, sampler = family(r), SAMPLERS.get(sweep, DEFAULT_SAMPLER)
        cell = next((d for axes, d in cells.items() if all(r.get(k) == v for k, v in axes)), None)
        mask = unmodelled_mask_bits(cell)
        if mask is None and not fam.startswith(MASKED):
            mask = 0.0  # no mask to add
        nll = study().values([r], "prior_bits_per_image")
        extra = {"nll_bits": nll[0] + mask} if nll and mask is not None else {}
        out.append(r | extra | {"_family": fam, "_sampler": sampler, "_label": label(fam, sampler)})
    return out


@dataclass
class Board:
    """What the page reads: the leaderboard's cells (``rows``), the option screens, the
    tokenizer-only F1/F2 cells, and per sweep the planned cells and the finished ones."""

    rows: list[Row]
    screens: dict[str, list[Row]]
    claims: list[Row]
    plan: dict[str, tuple[dict[str, str], ...]]
    done: dict[str, list[Row]]
    uncollected: dict[str, int]  # finished cells that results.csv does not list yet
    reused: dict[str, list[Row]]


def read_board(runs: Path = HERE, study_runs: Path = STUDY, sweeps: Path = HERE) -> Board:
    """Every leaderboard sweep's finished cells under ``runs`` (sweep files in ``sweeps``) and
    the study's reused cells under ``study_runs``."""
    plan = {p.stem: planned(p) for p in sorted(sweeps.glob("*.yaml"))}
    done = {name: study().read_rows(name, runs) for name in plan}
    uncollected = {
        name: len(finished_cells(runs / name)) - len(rows) for name, rows in done.items()
    }
    reused = {
        name: [r for r in study().read_rows(name, study_runs) if r.get("method") in methods]
        for name, methods in REUSED.items()
    }
    rows = [r for name, rs in reused.items() for r in annotate(rs, name, study_runs / name)]
    for name, rs in done.items():
        if name not in OFF_BOARD:
            rows += annotate(rs, name, runs / name)
    screens = {name: done.get(name, []) for name in SCREENS}
    return Board(rows, screens, done.get(CLAIMS, []), plan, done, uncollected, reused)


# --- family x rate ----------------------------------------------------------------------------


@dataclass
class Point:
    """One family (with its sampler) at one rate, over seeds: one row per seed. A tokenizer
    point's NLL rate is its best prior's (``nll_rows``: the sampler with the lowest mean)."""

    name: str
    family: str
    sampler: str
    tokens: str
    k: str
    rows: list[Row]
    nll_rows: list[Row] | None = None

    def stat(self, metric: str) -> Any:
        """``Stat`` (mean, sd, n) of ``metric`` over the seeds, None when none has it."""
        rows = self.nll_rows if metric == "nll_bits" and self.nll_rows else self.rows
        return study().stat(rows, metric)

    def values(self, metric: str) -> list[float]:
        """Per-seed values of ``metric``."""
        return study().values(self.rows, metric)

    def mean(self, metric: str) -> float | None:
        """The mean of ``metric`` over the seeds, None when none has it."""
        s = self.stat(metric)
        return None if s is None else s.mean

    @property
    def rate(self) -> str:
        return f"{self.tokens}, K = {self.k}"


def points(rows: list[Row], tokenizer: bool = False) -> list[Point]:
    """Family x rate groups, one row per seed (the sweeps overlap: the first row of a seed).
    ``tokenizer``: one point per tokenizer family, whose sampler variants read the same
    tokenizers (the default sampler's rows first); else one per family and sampler."""
    if tokenizer:
        by_label = points(rows)
        rows = sorted(rows, key=lambda r: r["_sampler"] != DEFAULT_SAMPLER)
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for r in rows:
        name = r["_family"] if tokenizer else r["_label"]
        group = groups.setdefault((name, r.get("tokens", ""), r.get("K", "")), [])
        if all(g.get("seed") != r.get("seed") for g in group):
            group.append(r)
    out = []
    for (name, tokens, k), group in groups.items():
        p = Point(
            name,
            group[0]["_family"],
            group[0]["_sampler"],
            tokens,
            k,
            sorted(group, key=lambda r: int(r.get("seed") or 0)),
        )
        if tokenizer:
            p.sampler = DEFAULT_SAMPLER
            same = [q for q in by_label if (q.family, q.tokens, q.k) == (name, tokens, k)]
            rated = [q for q in same if q.mean("nll_bits") is not None]
            p.nll_rows = min(rated, key=lambda q: q.mean("nll_bits") or 0).rows if rated else None
        out.append(p)
    return sorted(out, key=_point_order)


def _family_rank(name: str) -> tuple[int, str]:
    fam = name.split(", ")[0]
    return (FAMILY_ORDER.index(fam) if fam in FAMILY_ORDER else len(FAMILY_ORDER), name)


def _point_order(p: Point) -> tuple:
    return (*_family_rank(p.name), p.mean("bits_per_image") or math.inf, p.tokens, p.k)


def pareto_front(pts: Sequence[tuple[float, float, T]]) -> list[tuple[float, float, T]]:
    """The points no other point dominates (lower is better on both axes: no more x and no
    more y, one of them less), by increasing x; of points equal on both axes the first."""
    front: list[tuple[float, float, T]] = []
    for x, y, item in sorted(pts, key=lambda p: (p[0], p[1])):
        if not front or y < front[-1][1]:
            front.append((x, y, item))
    return front


def front_of(pts: list[Point], x: str, y: str) -> list[tuple[float, float, Point]]:
    """The Pareto front of family x rate means on metrics ``x`` and ``y``."""
    means = [(p.mean(x), p.mean(y), p) for p in pts]
    return pareto_front([(a, b, p) for a, b, p in means if a is not None and b is not None])


def _bits(x: float) -> str:
    return f"{x:.0f}" if abs(x - round(x)) < 0.05 else f"{x:.1f}"


def _seeds(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def front_text(front: list[tuple[float, float, Point]], y: str) -> str:
    """``6 → FSQ (1+1, K = 16; 163.4 ± 15.2, 5 seeds); 22 → ...`` or a dash."""
    items = [
        f"{_bits(x)} → {p.name} ({p.rate}; {study().fmt(p.stat(y))}, {_seeds(p.stat(y).n)})"
        for x, _, p in front
    ]
    return "; ".join(items) if items else "— (no finished cell yet)"


# --- the verdicts -----------------------------------------------------------------------------


class Judge:
    """The rule with the study's floor; keeps every comparison's word for the answer."""

    def __init__(self, floor: float) -> None:
        self.floor = floor
        self.decided: list[tuple[str, str]] = []  # (comparison, word)

    def __call__(
        self, what: str, method: Sequence[float], baseline: Sequence[float], metric: str
    ) -> str:
        """``Δ +1.2 [-0.3, +2.7] (2 seeds), δ 4.5: **word**``: method minus baseline in the
        units of ``METRICS[metric]``; **not yet run** below 2 seeds a side."""
        _, scale, lower, floored = METRICS[metric]
        if len(method) < 2 or len(baseline) < 2:
            self.decided.append((what, "not yet run"))
            return f"**not yet run** ({len(method)} vs {len(baseline)} seeds)"
        a, b = [scale * v for v in method], [scale * v for v in baseline]
        v = rule.compare(a, b, self.floor if floored else 0.0, lower_is_better=lower)
        self.decided.append((what, v.word))
        return v.text()


def _side(p: Point | None, metric: str) -> str:
    """``FSQ (4+1, K = 16, 15 bits) 80.1 ± 2.0`` or a dash."""
    if p is None:
        return "—"
    bits = p.mean("bits_per_image")
    where = f"{p.rate}, {_bits(bits)} bits" if bits is not None else p.rate
    return f"{p.name} ({where}) {study().fmt(p.stat(metric))}"


def best_at_no_more_bits(cands: list[Point], bits: float, metric: str) -> Point | None:
    """The candidate with the lowest mean ``metric`` among those with at least 2 seeds of it
    that read no more bits per image than ``bits``."""
    ok = [
        p
        for p in cands
        if len(p.values(metric)) >= 2
        and (b := p.mean("bits_per_image")) is not None
        and b <= bits + 1e-9
    ]
    return min(ok, key=lambda p: p.mean(metric) or 0.0, default=None)


def rates_of(board: Board, fam: str) -> list[tuple[str, str]]:
    """The (tokens, K) a family is planned or measured at, by tokens then K."""
    axes = [a for cells in board.plan.values() for a in cells] + board.rows
    got = {(a.get("tokens", ""), a.get("K", "")) for a in axes if a.get("K") and family(a) == fam}
    return sorted(got, key=lambda t: [int(x) for x in re.findall(r"\d+", " ".join(t))])


def no_more_bits_lines(
    board: Board, judge: Judge, claim: str, fam: str, rivals: Callable[[Point], bool], what: str
) -> list[str]:
    """One line per rate of ``fam``: its reconstruction, and its samples with each sampler,
    against the best rival (``rivals``; for samples with the transformer prior) at no more bits
    per image."""
    recon, samples = points(board.rows, tokenizer=True), points(board.rows)
    fmt = study().fmt
    out = []
    for tokens, k in rates_of(board, fam):
        at = (fam, tokens, k)
        mine = next((p for p in recon if (p.family, p.tokens, p.k) == at), None)
        bits = mine.mean("bits_per_image") if mine else None
        head = f"- **{claim}** ({fam}, {tokens}, K = {k}"
        if mine is None or bits is None:
            judge.decided.append((f"{claim} {tokens}/{k}", "not yet run"))
            out.append(f"{head}): **not yet run** (no finished cell).")
            continue
        rival = best_at_no_more_bits([p for p in recon if rivals(p)], bits, "fd_fmnist")
        v = judge(
            f"{claim} {tokens}/{k} reconstruction",
            mine.values("fd_fmnist"),
            rival.values("fd_fmnist") if rival else [],
            "fd_fmnist",
        )
        parts = [
            f"reconstruction {fmt(mine.stat('fd_fmnist'))} vs {what} "
            f"{_side(rival, 'fd_fmnist')}: {v}"
        ]
        base = [p for p in samples if rivals(p) and p.sampler == DEFAULT_SAMPLER]
        rival = best_at_no_more_bits(base, bits, "sample_fd_fmnist")
        for p in [p for p in samples if (p.family, p.tokens, p.k) == at]:
            how = f"samples ({p.sampler})"
            if p.sampler == DEFAULT_SAMPLER:  # the decoder draws the mask (index) at random
                how = "samples (random mask)" if fam.startswith(MASKED) else "samples"
            v = judge(
                f"{claim} {tokens}/{k} {how}",
                p.values("sample_fd_fmnist"),
                rival.values("sample_fd_fmnist") if rival else [],
                "sample_fd_fmnist",
            )
            parts.append(
                f"{how} {fmt(p.stat('sample_fd_fmnist'))} vs "
                f"{_side(rival, 'sample_fd_fmnist')}: {v}"
            )
        out.append(f"{head}, {_bits(bits)} bits): " + "; ".join(parts) + ".")
    return out


def size_lines(
    board: Board, judge: Judge, claim: str, metrics: Sequence[str], vq: Callable[[str], bool]
) -> list[str]:
    """F1/F2: per codebook size, FSQ against each VQ-VAE-2 method of ``fsq_claims`` that
    ``vq`` keeps, on each metric."""
    cells = [*board.plan.get(CLAIMS, ()), *board.claims]
    sizes = sorted(
        {a["per_level"] for a in cells if a.get("per_level")}, key=lambda s: int(s.split("^")[-1])
    )
    methods = sorted(
        {a["method"] for a in cells if a.get("method", "").startswith("vqvae2") and vq(a["method"])}
    )
    sel, st, fmt, values = study().select, study().stat, study().fmt, study().values
    out = []
    for size in sizes:
        fsq = sel(board.claims, method="fsqvae", per_level=size)
        parts = []
        for metric in metrics:
            name = METRICS[metric][0]
            vs = []
            for m in methods:
                rows = sel(board.claims, method=m, per_level=size)
                v = judge(
                    f"{claim} {size} {name} vs {family({'method': m})}",
                    values(fsq, metric),
                    values(rows, metric),
                    metric,
                )
                vs.append(f"vs {family({'method': m})} {fmt(st(rows, metric), '{:.3g}')}: {v}")
            parts.append(f"{name}: FSQ {fmt(st(fsq, metric), '{:.3g}')} " + "; ".join(vs))
        head = f"- **{claim}** ({size} entries per level, 4+1 tokens"
        if not any(sel(board.claims, per_level=size)):
            out.append(f"{head}): **not yet run**.")
        else:
            out.append(f"{head}): " + "; ".join(parts) + ".")
    return out


def f3_lines(board: Board, judge: Judge) -> list[str]:
    """F3: FSQ against VQ-VAE-2 samples at 4+1, K = 256, with MaskGIT and the transformer."""
    pts = {(p.name, p.tokens, p.k): p for p in points(board.rows)}
    fmt = study().fmt
    out = []
    for sampler, rivals in (
        ("MaskGIT", ("VQ-VAE-2 (paper)",)),
        (DEFAULT_SAMPLER, ("VQ-VAE-2 (paper)", "VQ-VAE-2 (healthy)")),
    ):
        fsq = pts.get((label("FSQ", sampler), "4+1", "256"))
        mine = fsq.values("sample_fd_fmnist") if fsq else []
        parts = []
        for rival in rivals:
            vq = pts.get((label(rival, sampler), "4+1", "256"))
            theirs = vq.values("sample_fd_fmnist") if vq else []
            v = judge(f"F3 {sampler} vs {rival}", mine, theirs, "sample_fd_fmnist")
            parts.append(f"vs {rival} {fmt(vq.stat('sample_fd_fmnist') if vq else None)}: {v}")
        s = fmt(fsq.stat("sample_fd_fmnist") if fsq else None)
        out.append(
            f"- **F3** (sample fd_fmnist, 4+1, K = 256, {sampler} prior): FSQ {s} "
            + "; ".join(parts)
            + "."
        )
    return out


def verdict_lines(board: Board, judge: Judge) -> list[str]:
    """M1, M2, F1, F2, F3: one line per rate or size with the numbers that decide it."""
    lines = no_more_bits_lines(
        board,
        judge,
        "M1",
        "MVQ (mask codebook)",
        lambda p: not p.family.startswith(MASKED),
        "the best non-masked family at no more bits,",
    )
    for fam in ("Masked FSQ (random masks)", "Masked FSQ (mask codebook)"):
        lines += no_more_bits_lines(
            board, judge, "M2", fam, lambda p: p.family == "FSQ", "the best FSQ at no more bits,"
        )
    lines += size_lines(board, judge, "F1", ("usage_primary", "perplexity_primary"), bool)
    lines += size_lines(board, judge, "F2", ("mse", "fd_fmnist"), lambda m: m != "vqvae2")
    return lines + f3_lines(board, judge)


# --- the option screens -----------------------------------------------------------------------


def screen_lines(
    rows: list[Row], plan: Sequence[dict[str, str]], name: str, what: str, floor: float
) -> list[str]:
    """A screen's table (options x K, the planned ones) and the option set it names: the lowest
    recon fd_fmnist averaged over K, against every other complete option set (2 seeds at each
    planned K) by the rule's interval of the difference of the averages."""
    sel, st, fmt, values = study().select, study().stat, study().fmt, study().values
    ks = sorted({r["K"] for r in [*plan, *rows]}, key=int)
    options = list(dict.fromkeys(r["options"] for r in [*plan, *rows]))
    lines = [
        f"**{what}** (`{name}.yaml`, a short tokenizer-only screen; recon fd_fmnist, mean ± sd "
        "over seeds):",
        "",
        "| options | " + " | ".join(f"K = {k}" for k in ks) + " | mean over K |",
        "|---|" + "---|" * (len(ks) + 1),
    ]
    complete = {}
    for o in options:
        per_k = [values(sel(rows, options=o, K=k), "fd_fmnist") for k in ks]
        if all(len(v) >= 2 for v in per_k):
            complete[o] = per_k
        avg = f"{_average(per_k):.1f}" if all(per_k) else "—"
        cells = [
            fmt(st(sel(rows, options=o, K=k), "fd_fmnist")) + (f" (n {len(v)})" if v else "")
            for k, v in zip(ks, per_k, strict=True)
        ]
        lines.append(f"| {o} | " + " | ".join(cells) + f" | {avg} |")
    if not complete:
        why = f"no option set has 2 seeds at each K = {', '.join(ks)} yet"
        return [*lines, "", f"{what}: **not yet run** ({why}).", ""]
    ranked = sorted(complete, key=lambda o: _average(complete[o]))
    best, w = ranked[0], 1.0 / len(ks)
    vs, tied = [], []
    for o in ranked[1:]:
        groups = [(w, v) for v in complete[best]] + [(-w, v) for v in complete[o]]
        v = rule.decide(rule.contrast(groups), rule.margin(_average(complete[o]), floor))
        vs.append(f"vs {o}: {v.text()}")
        tied += [] if v.word == "better" else [f"{o} ({v.word})"]
    if len(ranked) == 1:
        verdict = "the only complete option set"
    elif not tied:
        verdict = "better than every other complete option set"
    else:
        verdict = "lowest by mean only, not separated by the rule from " + ", ".join(tied)
    missing = [o for o in options if o not in complete]
    tail = f" Not complete yet (under 2 seeds at a K): {', '.join(missing)}." if missing else ""
    named = f"{what}: **{best}** ({_average(complete[best]):.1f} averaged over K; {verdict})"
    return [*lines, "", named + "".join(f"; {x}" for x in vs) + "." + tail, ""]


def _average(per_k: list[list[float]]) -> float:
    """The mean over K of the per-K means."""
    return math.fsum(math.fsum(v) / len(v) for v in per_k) / len(per_k)


# --- tables, plots, status --------------------------------------------------------------------


def board_table(board: Board) -> list[str]:
    """Family (with sampler) x rate, mean ± sd over seeds."""
    head = ["family", "tokens", "K", "seeds", *(t for _, t, _ in TABLE)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in points(board.rows):
        cells = [study().fmt(p.stat(m), f) for m, _, f in TABLE]
        lines.append(
            f"| {p.name} | {p.tokens} | {p.k} | {len(p.rows)} | " + " | ".join(cells) + " |"
        )
    return lines


def usage_ceiling(entries: int, draws: int = CLAIMS_DRAWS) -> float:
    """Expected fraction of ``entries`` codes that ``draws`` uniform draws use at least once: the
    most usage a perfectly uniform quantizer shows on a split of that size."""
    return -math.expm1(draws * math.log1p(-1 / entries))


def claims_table(board: Board) -> list[str]:
    """F1/F2's cells: method x codebook size per level, mean ± sd over seeds; beside usage, its
    ceiling at the test split's size (0.91 at 2^14 entries: 40,000 codes cannot fill 16,384
    entries)."""
    sel, st, fmt = study().select, study().stat, study().fmt
    keys = sorted(
        {(r["method"], r["per_level"]) for r in board.claims},
        key=lambda t: (t[0], int(t[1].split("^")[-1])),
    )
    metrics = (
        ("usage_primary", "usage 1°", "{:.3f}"),
        ("perplexity_primary", "perpl. 1°", "{:.1f}"),
        ("mse", "recon MSE", "{:.4f}"),
        ("fd_fmnist", "recon fd_fmnist", "{:.1f}"),
    )
    lines = [
        "| family | entries per level | seeds | "
        + " | ".join(t for _, t, _ in metrics)
        + " | usage ceiling |",
        "|" + "---|" * (4 + len(metrics)),
    ]
    for method, size in keys:
        rows = sel(board.claims, method=method, per_level=size)
        cells = [fmt(st(rows, m), f) for m, _, f in metrics]
        ceiling = usage_ceiling(2 ** int(size.split("^")[-1]))
        lines.append(
            f"| {family(rows[0])} | {size} | {len(rows)} | "
            + " | ".join(cells)
            + f" | {ceiling:.3f} |"
        )
    return lines


def status_lines(board: Board) -> list[str]:
    """Cells finished / planned and cell-hours, per sweep."""
    lines = ["| sweep | finished / planned | cell-hours |", "|---|---|---|"]
    total_done = total_plan = 0
    hours = 0.0
    notes = []
    for name, plan in board.plan.items():
        rows = board.done.get(name, [])
        h = math.fsum(float(r.get("total_wall_s") or 0.0) for r in rows) / 3600
        total_done, total_plan, hours = total_done + len(rows), total_plan + len(plan), hours + h
        lines.append(f"| `{name}.yaml` | {len(rows)} / {len(plan)} | {h:.1f} |")
        if board.uncollected.get(name, 0) > 0:
            notes.append(
                f"{board.uncollected[name]} finished cells of `{name}` are not in its "
                f"results.csv yet (`mvq sweep results/leaderboard/{name}.yaml "
                "--collect`)."
            )
    reused = ", ".join(f"{name} {len(rows)}" for name, rows in board.reused.items())
    head = (
        f"**Status** (generated by `analyze.py`): {total_done} of {total_plan} planned "
        f"leaderboard cells finished, {hours:.1f} cell-hours so far; reused from the "
        f"study's sweeps: {reused} cells."
    )
    return [head, "", *lines, "", *notes, *([""] if notes else [])]


def plots(board: Board, out: Path) -> list[str]:
    """The Pareto plots against bits per image and against the NLL rate (PNGs in ``out``);
    returns the markdown images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recon, samples = points(board.rows, tokenizer=True), points(board.rows)
    import matplotlib.ticker

    others = sorted({p.family for p in recon + samples} - set(FAMILY_ORDER))
    tab20 = plt.get_cmap("tab20")  # the 10 strong hues first, then their light twins
    colour = {
        f: tab20((2 * i) % 20 + (i // 10) % 2) for i, f in enumerate(FAMILY_ORDER + tuple(others))
    }
    images = []
    for x, xlabel, file in (
        ("bits_per_image", "bits per image (what the decoder reads)", "pareto_bits.png"),
        ("nll_bits", "NLL rate: prior's bits per image on the test tokens", "pareto_nll.png"),
    ):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, pts, y, ylabel in (
            (axes[0], recon, "fd_fmnist", "reconstruction fd_fmnist"),
            (axes[1], samples, "sample_fd_fmnist", "sample fd_fmnist"),
        ):
            seen = set()
            for p in pts:
                sx, sy = p.stat(x), p.stat(y)
                if sx is None or sy is None:
                    continue
                name = label(p.family, p.sampler)
                ax.errorbar(
                    sx.mean,
                    sy.mean,
                    yerr=sy.std,
                    xerr=sx.std,
                    capsize=2,
                    ls="none",
                    marker=MARKERS.get(p.sampler, "D"),
                    color=colour[p.family],
                    label=None if name in seen else name,
                )
                seen.add(name)
                ax.annotate(
                    f"{p.tokens}/{p.k}",
                    (sx.mean, sy.mean),
                    fontsize=6,
                    xytext=(3, 3),
                    textcoords="offset points",
                    color=colour[p.family],
                )
            front = front_of(pts, x, y)
            if front:  # the last level drawn a little further, so that its step shows
                ax.plot(
                    [f[0] for f in front] + [front[-1][0] * 1.2],
                    [f[1] for f in front] + [front[-1][1]],
                    "k--",
                    lw=1,
                    drawstyle="steps-post",
                    label="Pareto front",
                )
            ax.set(xlabel=xlabel, ylabel=f"{ylabel} (lower is better)", xscale="log")
            ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            if seen:
                ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / file, dpi=110)
        plt.close(fig)
        images.append(f"![Pareto: {xlabel}]({file})")
    return images


# --- the page ---------------------------------------------------------------------------------


def fronts(board: Board) -> dict[str, list[tuple[float, float, Point]]]:
    """The four fronts: reconstruction and samples, against bits per image and the NLL rate."""
    recon, samples = points(board.rows, tokenizer=True), points(board.rows)
    return {
        "reconstruction vs bits per image": front_of(recon, "bits_per_image", "fd_fmnist"),
        "samples vs bits per image": front_of(samples, "bits_per_image", "sample_fd_fmnist"),
        "reconstruction vs NLL rate": front_of(recon, "nll_bits", "fd_fmnist"),
        "samples vs NLL rate": front_of(samples, "nll_bits", "sample_fd_fmnist"),
    }


def _by_claim(comparisons: list[str]) -> str:
    """``M1 x2, F3`` of comparisons named ``M1 ...``, ``M1 ...``, ``F3 ...``."""
    counts: dict[str, int] = {}
    for what in comparisons:
        counts[what.split(" ")[0]] = counts.get(what.split(" ")[0], 0) + 1
    return ", ".join(c + (f" x{n}" if n > 1 else "") for c, n in counts.items())


def answer(board: Board, judge: Judge, found: dict[str, list]) -> str:
    """The three sentences of "Which quantizer at N bits?", from the results."""
    recon, samples = found["reconstruction vs bits per image"], found["samples vs bits per image"]

    def run(front: list[tuple[float, float, Point]]) -> str:
        return ", ".join(f"{_bits(x)} bits → {p.name} ({p.tokens}, K = {p.k})" for x, _, p in front)

    n_done = sum(len(r) for r in board.done.values())
    n_plan = sum(len(p) for p in board.plan.values())
    first = (
        f"On the means of the finished cells ({n_done} of {n_plan} planned leaderboard cells "
        "and the replication study's reused ones), the lowest reconstruction fd_fmnist at no "
        f"more bits per image goes {run(recon)}."
        if recon
        else "No finished cell has reconstruction results yet."
    )
    second = (
        f"For samples (sample fd_fmnist of 10,000) the front goes {run(samples)}; both fronts "
        "are means over seeds, not verdicts."
        if samples
        else "No finished cell has sample results yet."
    )
    words: dict[str, list[str]] = {}
    for what, word in judge.decided:
        words.setdefault(word, []).append(what)
    total = len(judge.decided)
    name = {"equivalent": "equivalent within ±δ"}
    decided = [
        f"**{name.get(w, w)}** in {len(words[w])} ({_by_claim(words[w])})"
        for w in DECIDED
        if words.get(w)
    ]
    rest = total - sum(len(words.get(w, [])) for w in DECIDED)
    if decided:
        third = (
            f"Of the {total} comparisons behind M1, M2 and F1-F3, the rule finds the new side "
            "(MVQ with a mask codebook in M1, Masked FSQ in M2, FSQ in F1-F3) "
            f"{'; '.join(decided)}, and the other {rest} are unresolved or not yet run."
        )
    else:
        third = (
            f"Nothing is decided yet: of the {total} comparisons behind M1, M2 and F1-F3, "
            f"{len(words.get('not yet run', []))} are not yet run and "
            f"{len(words.get('unresolved', []))} unresolved."
        )
    return f"{first} {second} {third}"


def page(board: Board, floor: float, out: Path | None) -> tuple[list[str], Judge, dict]:
    """The markdown between the page's markers (figures drawn into ``out`` unless None), the
    judge that kept the verdicts' words, and the fronts."""
    lines = ["## Results (generated)", "", *status_lines(board), "### The option screens", ""]
    for name, what in zip(SCREENS, ("Best VQ-VAE-2", "Leaderboard's LFQ"), strict=True):
        lines += screen_lines(board.screens[name], board.plan.get(name, ()), name, what, floor)
    found = fronts(board)
    lines += [
        "### Pareto fronts (bits → family)",
        "",
        "Family x rate means over seeds; lower is better on both axes. Reconstruction points "
        "are tokenizers (a family's sampler variants share them; their NLL rate is the best "
        "prior's). The NLL rate: the prior's NLL on the test tokens in bits per image, plus "
        "the mask's raw bits where the prior does not model the mask.",
        "",
    ]
    for name, front in found.items():
        y = "fd_fmnist" if name.startswith("reconstruction") else "sample_fd_fmnist"
        lines.append(f"- **{name}**: {front_text(front, y)}")
    lines.append("")
    if out is not None:
        lines += [
            *plots(board, out),
            "",
            "Error bars: sd over seeds (none with one seed); labels: tokens/K; circles: the "
            "transformer prior, squares: a prior that models the mask, triangles: MaskGIT; "
            "dashed: the front.",
            "",
        ]
    judge = Judge(floor)
    lines += [
        "### Verdicts",
        "",
        "Each: method minus baseline (Δ in the metric's units: fd_fmnist; MSE x10^3; usage "
        "in % of the codebook), its 95% interval and the seeds per side, the margin δ (5% of "
        f"the baseline's mean; for fd_fmnist at least 3 x the floor {floor:.2f}) and the "
        "word.",
        "",
        *verdict_lines(board, judge),
        "",
        "### Family x rate (mean ± sd over seeds)",
        "",
        *board_table(board),
        "",
        "### F1/F2 cells (4+1 tokens, tokenizer only)",
        "",
        *claims_table(board),
        "",
    ]
    return lines, judge, found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="analyze.py",
        description="Tables, Pareto fronts and plots, and the M1, M2, F1-F3 verdicts of the "
        "quantizer leaderboard.",
    )
    p.add_argument(
        "--runs",
        type=Path,
        default=HERE,
        help="folder holding the sweeps' outputs as <sweep>/results.csv and "
        "<sweep>/cells (default: this folder)",
    )
    p.add_argument(
        "--study",
        type=Path,
        default=STUDY,
        help="folder of the study's sweeps whose cells the leaderboard reuses "
        "(default: results/fmnist)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=HERE,
        help="folder for README.md's results and the plots (default: this folder; "
        "there the top-level README's answer is rewritten too, elsewhere it "
        f"goes to {ANSWER_FILE})",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the figures")
    return p.parse_args(argv)


def write_between(path: Path, start: str, end: str, body: str) -> None:
    """Replace what lies between the markers in ``path`` (added at its end when missing)."""
    text = path.read_text() if path.is_file() else ""
    if start not in text or end not in text:
        text += ("\n" if text and not text.endswith("\n") else "") + f"{start}\n{end}\n"
    path.write_text(study().replace_between(text, start, end, body))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name, folder in (("--runs", args.runs), ("--study", args.study)):
        if not folder.is_dir():
            print(
                f"analyze.py: error: {name} {folder} is not a folder (give the one that holds "
                "the sweeps' output folders)",
                file=sys.stderr,
            )
            return 2
    board = read_board(args.runs, args.study)
    args.out.mkdir(parents=True, exist_ok=True)
    lines, judge, found = page(
        board, study().read_floor()["fd_fmnist_10000"], None if args.no_plots else args.out
    )
    body = "\n".join(lines)
    write_between(args.out / "README.md", START, END, body)
    top = ROOT / "README.md"
    to_top = args.out.resolve() == HERE and ANSWER_START in top.read_text()
    target = top if to_top else args.out / ANSWER_FILE
    image = os.path.relpath(args.out.resolve() / "pareto_bits.png", target.parent.resolve())
    sentences = answer(board, judge, found)
    drawn = (args.out / "pareto_bits.png").is_file()  # (by an earlier run with --no-plots)
    text = f"![Pareto fronts]({image})\n\n{sentences}" if drawn else sentences
    write_between(target, ANSWER_START, ANSWER_END, text)
    print(body + "\n\n" + sentences)
    return 0


if __name__ == "__main__":
    sys.exit(main())
