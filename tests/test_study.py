"""The replication study's files (``results/fmnist/``): the sweeps are the issue's design, the
run queue finishes every cell, and ``analyze.py`` turns numbers into the right verdicts."""

from __future__ import annotations

import collections
import importlib.util
import sys
from pathlib import Path

import pytest

from mvq.sweep import expand, load_sweep

STUDY = Path(__file__).resolve().parents[1] / "results" / "fmnist"
# cells per sweep: the grid 3 methods x 3 token counts x 2 K x 2 seeds; the healthy baselines
# 2 methods x 3 x 2 x 2; the J ablation J in {1, 4, 16, 64} x 2 token counts x 2 seeds (J = 256
# is read from the grid); the longer pair 2 methods x 2 token counts x 2 seeds; C6 2 x 2.
CELLS = {"grid": 36, "healthy": 24, "j_ablation": 16, "longer": 8, "mask_prior": 4}
STEPS = {"grid": 3750, "healthy": 3750, "j_ablation": 3750, "longer": 18750, "mask_prior": 3750}


def _analyze():
    spec = importlib.util.spec_from_file_location("study_analyze", STUDY / "analyze.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", list(CELLS))
def test_sweep_is_the_issues_design_with_one_budget(name):
    cells = expand(load_sweep(STUDY / f"{name}.yaml"))
    assert len(cells) == CELLS[name]
    assert {c.axes["seed"] for c in cells} == {"0", "1"}
    for cell in cells:  # the same training budget and a prior + 10,000-sample eval in every cell
        assert f"train.max_steps={STEPS[name]}" in cell.sets
        assert "train.batch_size=32" in cell.sets
        assert cell.prior_config is not None
    sweep = load_sweep(STUDY / f"{name}.yaml")
    assert sweep.eval.n == 10000 and sweep.eval.split == "val"
    assert sweep.prior.max_steps == 3000


def test_j_ablation_covers_every_j_below_the_grids():
    cells = expand(load_sweep(STUDY / "j_ablation.yaml"))
    got = collections.Counter((c.axes["tokens"], c.axes["J"]) for c in cells)
    assert got == {(t, j): 2 for t in ("1+1", "4+1") for j in ("1", "4", "16", "64")}


def test_queue_runs_every_cell_of_every_sweep_exactly_once():
    lines = [ln.split() for ln in (STUDY / "queue.txt").read_text().splitlines()]
    queued = collections.Counter(
        (s, int(i)) for s, i in (ln for ln in lines if ln and ln[0][0] != "#")
    )
    want = {(s, c.index) for s in CELLS for c in expand(load_sweep(STUDY / f"{s}.yaml"))}
    assert set(queued) == want
    assert max(queued.values()) == 1


@pytest.mark.parametrize(
    ("better", "worse", "lower", "verdict"),
    [
        ((10.0, 1.0), (20.0, 1.0), True, "held"),
        ((20.0, 1.0), (10.0, 1.0), True, "not held"),
        ((10.0, 4.0), (16.0, 3.0), True, "unclear at this budget"),  # ranges overlap
        ((30.0, 1.0), (20.0, 1.0), False, "held"),  # higher is better
    ],
)
def test_a_difference_inside_the_spread_is_unclear(better, worse, lower, verdict):
    analyze = _analyze()
    a, b = (analyze.Stat(m, s, 2) for m, s in (better, worse))
    assert analyze.compare(a, b, lower_is_better=lower) == verdict
    assert analyze.compare(a, None) == "not measured yet"
    assert analyze.compare(analyze.Stat(*better, 1), b).startswith("unclear")


def _rows(method, tokens, k, fd, **extra):
    """Two seeds of a cell whose sample fd_fmnist is ``fd`` ± 1."""
    return [
        {"method": method, "tokens": tokens, "K": k, "seed": str(seed),
         "sample_fd_fmnist": str(fd + d), "fd_fmnist": str(fd + d), **extra}
        for seed, d in ((0, -1.0), (1, 1.0))
    ]  # fmt: skip


def test_verdicts_read_the_longer_pair_and_the_healthy_baselines():
    analyze = _analyze()
    grid = _rows("mvqvae", "1+1", "16", 100) + _rows("vqvae2", "1+1", "16", 150)
    grid += _rows("mvqvae", "1+1", "256", 100) + _rows("vqvae2", "1+1", "256", 110)
    healthy = _rows("mvqvae", "1+1", "16", 90) + _rows("vqvae2", "1+1", "16", 80)
    healthy += _rows("mvqvae", "1+1", "256", 90) + _rows("vqvae2", "1+1", "256", 70)
    longer = _rows("mvqvae", "1+1", "16", 60) + _rows("vqvae2", "1+1", "16", 50)
    lines = {ln.split("**")[1] + ln.split("(")[1].split(")")[0]: ln for ln in
             analyze.verdicts(grid, healthy, [], [], longer)}  # fmt: skip
    c1 = lines["C11+1, K = 16, sample fd_fmnist, lower is better"]
    assert c1.count("**held**") == 1 and c1.endswith(
        "both healthy 90.0 ± 1.4 vs 80.0 ± 1.4: **not held**."
    )
    late = lines["C1 after 10 epochs1+1, K = 16"]
    assert "60.0 ± 1.4 vs VQ-VAE-2 50.0 ± 1.4: **not held**" in late and "held)" in late
    c4 = lines["C41+1"]  # gains 50 vs 10 (paper baselines), -10 vs -20 (both healthy)
    assert "50.0 ± 2.0 vs K = 256 10.0 ± 2.0: **held**" in c4
    assert "both healthy -10.0 ± 2.0 vs -20.0 ± 2.0: **held**" in c4
    assert "not measured yet" in lines["C1 after 10 epochs4+1, K = 16"]


def test_c1_also_compares_fsq_and_goes_beyond_the_paper_to_16_plus_1():
    analyze = _analyze()
    grid = _rows("mvqvae", "16+1", "16", 40) + _rows("vqvae2", "16+1", "16", 50)
    grid += _rows("fsqvae", "16+1", "16", 30) + _rows("fsqvae", "1+1", "16", 120)
    lines = analyze.verdicts(grid, [], [], [], [])
    (c1,) = [ln for ln in lines if ln.startswith("- **C1** (16+1")]
    assert "beyond the paper's 1+1 and 4+1" in c1
    assert "MVQVAE 40.0 ± 1.4 vs VQ-VAE-2 50.0 ± 1.4: **held**" in c1
    assert "vs FSQ-VAE 30.0 ± 1.4: **not held**" in c1
    (c1_small,) = [ln for ln in lines if ln.startswith("- **C1** (1+1")]
    assert "MVQVAE — vs VQ-VAE-2 —: **not measured yet**; vs FSQ-VAE 120.0 ± 1.4" in c1_small


def _bits_rows(method, tokens, k, bits, fd):
    return [{**r, "bits_per_image": str(bits)} for r in _rows(method, tokens, k, fd)]


@pytest.mark.parametrize(
    ("baseline", "verdict"),
    [
        ([(15, 50.0), (35, 130.0)], "not monotone"),  # fewer bits better, more bits worse
        ([(15, 120.0), (35, 130.0)], "**held**"),  # MVQ beats the 35-bit cell
        ([(15, 50.0)], "**not held**"),  # a cell with fewer bits already beats MVQ
        ([(15, 101.0), (35, 99.0)], "**unclear at this budget**"),  # inside the spread
        ([(15, 101.0)], "**unclear: no finished baseline cell reads as many bits**"),
    ],
)
def test_c5_brackets_mvq_by_the_baselines_bits(baseline, verdict):
    analyze = _analyze()
    grid = _bits_rows("mvqvae", "1+1", "16", 22, 100.0)
    for i, (bits, fd) in enumerate(baseline):
        grid += _bits_rows("vqvae2", f"{4**i}+1", "16", bits, fd)
    (line,) = analyze.c5_lines(grid, [])
    vq = line.split("; healthy")[0]
    assert "MVQVAE 1+1, K = 16 (22 bits, mask bits counted) 100.0 ± 1.4" in vq
    assert verdict in vq
    assert "healthy VQ-VAE-2: best at ≤ its bits —, nearest at ≥ —: **not measured yet**" in line


def test_c3_reports_the_rank_trend_beside_the_verdict():
    analyze = _analyze()
    falling = [
        {"J": j, "sample_fd_fmnist": str(200 - 10 * i)} for i, j in enumerate(("1", "4", "16"))
    ]
    assert "over the 3 cells: -1.00" in analyze._rank_trend(falling)
    assert analyze._rank_trend(falling[:2]) == ""  # two values of J: no trend to rank
