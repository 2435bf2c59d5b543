"""The replication study's files (``results/fmnist/``): the sweeps are the issue's design, the
run queue finishes every cell, and ``analyze.py`` turns numbers into the right verdicts."""

from __future__ import annotations

import collections
import importlib.util
import sys
from pathlib import Path

import pytest

from mvq.experiments.sweep import expand, load_sweep

STUDY = Path(__file__).resolve().parents[1] / "results" / "fmnist"
# cells per sweep (issue 24's seeds: 5 at 1+1 and 4+1 tokens, 3 at 16+1, in the J ablation and
# the longer pair): the grid 3 methods x 2 K x (2 token counts x 5 + 3); the healthy baselines
# 2 methods x 2 K x (2 x 5 + 3); the J ablation J in {1, 4, 16, 64} x 2 token counts x 3 (J =
# 256 is read from the grid); the longer pair 2 methods x 2 token counts x 3; C6 2 x 5.
CELLS = {"grid": 78, "healthy": 52, "j_ablation": 24, "longer": 12, "mask_prior": 10}
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
    for cell in cells:  # the same training budget and a prior + 10,000-sample eval in every cell
        few = cell.axes["tokens"] == "16+1" or name in ("j_ablation", "longer")
        assert cell.seed in (range(3) if few else range(5))
        assert f"train.max_steps={STEPS[name]}" in cell.sets
        assert "train.batch_size=32" in cell.sets
        assert cell.prior_config is not None
    sweep = load_sweep(STUDY / f"{name}.yaml")
    assert sweep.eval.n == 10000 and sweep.eval.split == "val"
    assert sweep.eval.sample_seeds == [0, 1]
    assert sweep.prior.max_steps == 3000


def test_j_ablation_covers_every_j_below_the_grids():
    cells = expand(load_sweep(STUDY / "j_ablation.yaml"))
    got = collections.Counter((c.axes["tokens"], c.axes["J"]) for c in cells)
    assert got == {(t, j): 3 for t in ("1+1", "4+1") for j in ("1", "4", "16", "64")}


def test_queue_runs_every_cell_not_finished_exactly_once():
    lines = [ln.split() for ln in (STUDY / "queue.txt").read_text().splitlines()]
    queued = collections.Counter(
        (s, int(i)) for s, i in (ln for ln in lines if ln and ln[0][0] != "#")
    )
    assert max(queued.values()) == 1
    for sweep in CELLS:
        for cell in expand(load_sweep(STUDY / f"{sweep}.yaml")):
            finished = STUDY / sweep / "cells" / cell.name / "markers" / "sample_eval.json"
            if (sweep, cell.index) not in queued:
                assert finished.is_file(), f"{sweep} cell {cell.index} is neither run nor queued"
            queued.pop((sweep, cell.index), None)
    assert not queued, f"queued cells that no sweep has: {sorted(queued)}"


def _rows(method, tokens, k, fd, **extra):
    """Two seeds of a cell whose sample fd_fmnist is ``fd`` ± 1."""
    return [
        {
            "method": method,
            "tokens": tokens,
            "K": k,
            "seed": str(seed),
            "sample_fd_fmnist": str(fd + d),
            "fd_fmnist": str(fd + d),
            **extra,
        }
        for seed, d in ((0, -1.0), (1, 1.0))
    ]


FLOOR = 0.27  # fd_fmnist of 10,000 training vs the 10,000 test images (floor.json)


def test_verdicts_read_the_longer_pair_and_the_healthy_baselines():
    analyze = _analyze()
    grid = _rows("mvqvae", "1+1", "16", 100) + _rows("vqvae2", "1+1", "16", 150)
    grid += _rows("mvqvae", "1+1", "256", 100) + _rows("vqvae2", "1+1", "256", 110)
    healthy = _rows("mvqvae", "1+1", "16", 90) + _rows("vqvae2", "1+1", "16", 80)
    healthy += _rows("mvqvae", "1+1", "256", 90) + _rows("vqvae2", "1+1", "256", 70)
    longer = _rows("mvqvae", "1+1", "16", 60) + _rows("vqvae2", "1+1", "16", 50)
    claims, judge = analyze.verdicts(grid, healthy, [], [], longer, FLOOR)
    lines = {ln.split("**")[1] + ln.split("(")[1].split(")")[0]: ln for ln in claims}
    c1 = lines["C11+1, K = 16, sample fd_fmnist, lower is better"]
    # 2 seeds of ± 1 a side: Welch's interval is ± t(2) · sqrt(2) = ± 6.08
    assert "vs VQ-VAE-2 150.0 ± 1.4: Δ -50.0 [-56.1, -43.9] (2 seeds), δ 7.5: **better**" in c1
    assert c1.endswith(
        "both healthy 90.0 ± 1.4 vs 80.0 ± 1.4: Δ +10.0 [+3.9, +16.1] (2 seeds), δ 4.0: **worse**."
    )
    late = lines["C1 after 10 epochs1+1, K = 16"]
    assert "60.0 ± 1.4 vs VQ-VAE-2 50.0 ± 1.4: Δ +10.0" in late and "**worse**" in late
    c4 = lines["C41+1, sample fd_fmnist, gain of MVQ over VQ-VAE-2"]
    # gains 50 vs 10 (paper baselines), -10 vs -20 (both healthy); four groups: ± t(4) · 2
    assert "gain at K = 16 50.0 vs K = 256 10.0: Δ +40.0 [+34.4, +45.6]" in c4
    assert "both healthy gain at K = 16 -10.0 vs K = 256 -20.0: Δ +10.0 [+4.4, +15.6]" in c4
    assert c4.count("**better**") == 2
    assert "not measured yet" in lines["C1 after 10 epochs4+1, K = 16"]
    words = dict(judge.decided)
    assert words["C1 1+1 vs VQ-VAE-2"].word == "better"
    assert words["C1 1+1 both healthy"].word == "worse"


def test_c1_also_compares_fsq_and_goes_beyond_the_paper_to_16_plus_1():
    analyze = _analyze()
    grid = _rows("mvqvae", "16+1", "16", 40) + _rows("vqvae2", "16+1", "16", 50)
    grid += _rows("fsqvae", "16+1", "16", 30) + _rows("fsqvae", "1+1", "16", 120)
    lines, _ = analyze.verdicts(grid, [], [], [], [], FLOOR)
    (c1,) = [ln for ln in lines if ln.startswith("- **C1** (16+1")]
    assert "beyond the paper's 1+1 and 4+1" in c1
    assert "MVQVAE 40.0 ± 1.4 vs VQ-VAE-2 50.0 ± 1.4: Δ -10.0" in c1
    assert "vs FSQ-VAE 30.0 ± 1.4: Δ +10.0 [+3.9, +16.1] (2 seeds), δ 1.5: **worse**" in c1
    (c1_small,) = [ln for ln in lines if ln.startswith("- **C1** (1+1")]
    assert "MVQVAE — vs VQ-VAE-2 —: **not measured yet**; vs FSQ-VAE 120.0 ± 1.4" in c1_small


def test_c6_pairs_by_seed_and_c3_fits_a_slope():
    analyze = _analyze()
    grid = _rows("mvqvae", "1+1", "16", 100)
    modelled = [
        {**r, "sample_fd_fmnist": str(float(r["sample_fd_fmnist"]) - 8.0 + i * 0.1)}
        for i, r in enumerate(grid)
    ]
    j_rows = [
        {"J": j, "tokens": "1+1", "seed": str(s), "sample_fd_fmnist": str(200 - 10 * i + s)}
        for i, j in enumerate(("1", "4", "16", "64"))
        for s in (0, 1)
    ]
    claims, judge = analyze.verdicts(grid, [], j_rows, modelled, [], FLOOR)
    words = dict(judge.decided)
    # the seeds' spread (± 1) cancels in the pairs: -8.0 and -7.9, clearly better
    assert words["C6 1+1"].interval.paired and words["C6 1+1"].word == "better"
    assert words["C3 1+1 slope per doubling of J"].word == "better"
    (c3,) = [ln for ln in claims if ln.startswith("- **C3** (1+1")]
    assert "Slope per doubling of J (over 8 cells): b -" in c3


def _bits_rows(method, tokens, k, bits, fd):
    return [{**r, "bits_per_image": str(bits)} for r in _rows(method, tokens, k, fd)]


@pytest.mark.parametrize(
    ("baseline", "verdict"),
    [
        ([(15, 50.0), (35, 130.0)], "not monotone"),  # fewer bits better, more bits worse
        ([(15, 120.0), (35, 130.0)], ": **better**"),  # MVQ beats the 35-bit cell
        ([(15, 50.0)], ": **worse**"),  # a cell with fewer bits already beats MVQ
        ([(15, 101.0), (35, 99.0)], ": **unresolved** ("),  # inside the spread
        ([(15, 101.0)], "**unresolved: no finished baseline cell reads as many bits**"),
    ],
)
def test_c5_brackets_mvq_by_the_baselines_bits(baseline, verdict):
    analyze = _analyze()
    grid = _bits_rows("mvqvae", "1+1", "16", 22, 100.0)
    for i, (bits, fd) in enumerate(baseline):
        grid += _bits_rows("vqvae2", f"{4**i}+1", "16", bits, fd)
    (line,) = analyze.c5_lines(grid, [], FLOOR)
    vq = line.split("; healthy")[0]
    assert "MVQVAE 1+1, K = 16 (22 bits, mask bits counted) 100.0 ± 1.4" in vq
    assert verdict in vq
    assert "healthy VQ-VAE-2: best at ≤ its bits —, nearest at ≥ —: **not measured yet**" in line


def test_the_readmes_state_what_the_rule_decides_from_the_committed_cells():
    """The study README's verdicts and the top-level README's two sentences are what
    ``analyze.py`` computes from the committed results (regenerate: run it)."""
    analyze = _analyze()
    rows = {name: analyze.read_rows(name) for name in analyze.SWEEPS}
    lines, judge = analyze.results_lines(rows, analyze.read_floor(), None, STUDY)
    study = (STUDY / "README.md").read_text()
    block = study.split(analyze.START)[1].split(analyze.END)[0]
    verdict_lines = [ln for ln in lines if ln.startswith("- **C")]
    assert verdict_lines and all(ln in block.splitlines() for ln in verdict_lines)
    top = (STUDY.parents[1] / "README.md").read_text()
    sentences = top.split(analyze.SUMMARY_START)[1].split(analyze.SUMMARY_END)[0].strip()
    assert sentences == analyze.summary(judge)
    assert sentences.count(". ") == 1 and sentences.endswith(".")


def test_analyze_has_help_and_a_clear_error_without_cells(tmp_path, capsys):
    analyze = _analyze()
    with pytest.raises(SystemExit) as done:
        analyze.main(["--help"])
    assert done.value.code == 0 and "--runs" in capsys.readouterr().out
    assert analyze.main(["--runs", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no <sweep>/results.csv under" in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_floor_is_the_comparisons_size():
    floor = _analyze().read_floor()
    assert len(floor["fd_fmnist_10000_train_vs_10000_test"]) == 5
    assert 0 < floor["fd_fmnist_10000"] < floor["fd_fmnist_5000_test_halves"] < 2
