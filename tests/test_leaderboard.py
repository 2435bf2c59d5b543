"""The leaderboard's sweep files (``results/leaderboard/``): one budget, the planned cells, and a
queue that runs each exactly once; its ``analyze.py``: fronts, verdicts and the page on
synthetic cells."""

from __future__ import annotations

import collections
import csv
import functools
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from mvq.experiments.sweep import expand, load_sweep

BOARD = Path(__file__).resolve().parents[1] / "results" / "leaderboard"
CELLS = {
    "vq_screen": 32,
    "lfq_screen": 16,
    "families": 32,
    "best_vq": 8,
    "front_seeds": 50,
    "masked": 24,
    "masked_prior": 28,
    "fsq_claims": 48,
    "fsq_maskgit": 4,
}
STEPS = {"vq_screen": 1000, "lfq_screen": 1000}  # short screens; the rest the study's 2 epochs
SEEDS = {"front_seeds": {2, 3, 4}, "masked_prior": {2, 3, 5, 6}}  # the rest screen seeds 0 and 1


@pytest.mark.parametrize("name", list(CELLS))
def test_sweep_has_the_planned_cells_and_one_budget(name):
    sweep = load_sweep(BOARD / f"{name}.yaml")
    cells = expand(sweep)
    assert len(cells) == CELLS[name]
    assert {c.seed for c in cells} == SEEDS.get(name, {0, 1})
    for cell in cells:
        assert f"train.max_steps={STEPS.get(name, 3750)}" in cell.sets
        assert "train.batch_size=32" in cell.sets
    if sweep.prior is not None:  # samples: the Table 4 budget, 10,000 of them, two sampling seeds
        assert sweep.prior.max_steps == 3000
        assert sweep.eval.n == 10000 and sweep.eval.sample_seeds == [0, 1]


def _tokenizers(cells) -> collections.Counter:
    """(method, masks, tokens, K, seed) of each cell: the tokenizer it trains (the study's grid
    names no masks: its MVQVAE draws random ones)."""
    return collections.Counter(
        (c.axes["method"], c.axes.get("masks", "random"), c.axes["tokens"], c.axes["K"], c.seed)
        for c in cells
    )


def test_masked_prior_trains_seeds_no_other_sweep_has():
    """masked_prior's tokenizers are other sweeps' configs with a mask-aware prior: each of its
    cells trains a seed that no other sweep on the board has for that config, so its
    reconstructions add seeds to M1 and M2 instead of retraining a tokenizer bit for bit."""
    mine = _tokenizers(expand(load_sweep(BOARD / "masked_prior.yaml")))
    others = collections.Counter()
    for name in ("masked", "front_seeds"):
        others += _tokenizers(expand(load_sweep(BOARD / f"{name}.yaml")))
    grid = _tokenizers(expand(load_sweep(BOARD.parent / "fmnist" / "grid.yaml")))
    others += collections.Counter({k: n for k, n in grid.items() if k[0] == "mvqvae"})
    assert max(mine.values()) == 1
    assert not set(mine) & set(others)
    # every tokenizer config of masked_prior is one the board already has at other seeds
    configs = {k[:4] for k in others}
    assert {k[:4] for k in mine} <= configs


def test_bits_per_image_of_the_masked_variants_count_the_mask_index():
    cells = expand(load_sweep(BOARD / "masked.yaml"))
    from mvq.tokenizers import create_tokenizer

    cell = next(
        c
        for c in cells
        if c.axes["method"] == "mvqvae" and c.axes["tokens"] == "4+1" and c.axes["K"] == "16"
    )
    cfg = cell.run_config.model_config | {"channels": 8, "res_channels": 4}
    assert create_tokenizer(cell.run_config.model, **cfg).bits_per_image == 4 * 3 + 3 + 8


def test_queue_runs_every_leaderboard_cell_exactly_once():
    lines = [ln.split() for ln in (BOARD / "queue.txt").read_text().splitlines()]
    queued = collections.Counter(
        (s, int(i)) for s, i in (ln for ln in lines if ln and ln[0][0] != "#")
    )
    want = {(s, c.index) for s in CELLS for c in expand(load_sweep(BOARD / f"{s}.yaml"))}
    assert set(queued) == want and max(queued.values()) == 1


# --- analyze.py: the page, the fronts and the verdicts, on synthetic cells ----------------------


@functools.cache
def _analyze():
    spec = importlib.util.spec_from_file_location("leaderboard_analyze", BOARD / "analyze.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def _cells(method, tokens, k, bits, fd, seeds=(0, 1), **axes):
    """Cells of one family x rate: recon and sample fd_fmnist ``fd`` ± 1 over the seeds."""
    return [
        {
            "method": method,
            "tokens": tokens,
            "K": k,
            **axes,
            "seed": str(seed),
            "bits_per_image": str(bits),
            "fd_fmnist": str(fd + d),
            "sample_fd_fmnist": str(fd + d),
            "mse": "0.1",
            "prior_bits_per_image": str(bits / 2),
            "total_wall_s": "360",
        }
        for seed, d in zip(seeds, (-1.0, 1.0, 0.0), strict=False)
    ]


def _write(folder, sweep, rows):
    """``folder/sweep/results.csv`` as ``mvq sweep --collect`` writes it."""
    path = folder / sweep / "results.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def runs(tmp_path):
    """A study (FSQ, VQ-VAE-2) and leaderboard cells (MVQ with a mask codebook clearly better
    than FSQ at no more bits, Masked FSQ clearly worse, the mask codebook at 4+1 on one seed)."""
    study = tmp_path / "study"
    _write(
        study,
        "grid",
        _cells("fsqvae", "1+1", "16", 6, 100.0)
        + _cells("vqvae2", "1+1", "16", 6, 120.0)
        + _cells("fsqvae", "4+1", "16", 15, 60.0),
    )
    _write(
        tmp_path / "runs",
        "masked",
        _cells("mvqvae", "1+1", "16", 14, 50.0, masks="codebook")
        + _cells("mvqvae", "4+1", "16", 23, 40.0, seeds=(0,), masks="codebook")
        + _cells("mfsqvae", "4+1", "16", 23, 90.0, masks="random"),
    )
    return tmp_path


def _run(runs, out, *extra):
    return _analyze().main(
        ["--runs", str(runs / "runs"), "--study", str(runs / "study"), "--out", str(out), *extra]
    )


def test_pareto_front_keeps_the_points_nothing_dominates():
    front = _analyze().pareto_front(
        [
            (2, 12, "b"),
            (1, 10, "a"),
            (2, 8, "c"),
            (3, 8, "d"),
            (4, 2, "e"),
            (0.5, 20, "f"),
            (4, 2, "e2"),
            (5, 3, "g"),
        ]
    )
    assert front == [(0.5, 20, "f"), (1, 10, "a"), (2, 8, "c"), (4, 2, "e")]
    assert _analyze().pareto_front([]) == []


def test_usage_ceiling_is_what_uniform_draws_fill():
    ceiling = _analyze().usage_ceiling
    assert ceiling(2, 1) == pytest.approx(0.5) and ceiling(4, 2) == pytest.approx(1 - 0.75**2)
    draws = torch.randint(0, 4096, (20, 10_000), generator=torch.Generator().manual_seed(0))
    filled = torch.tensor([len(d.unique()) / 4096 for d in draws])
    assert filled.mean().item() == pytest.approx(ceiling(4096, 10_000), abs=2e-3)
    assert ceiling(2**14) == pytest.approx(0.913, abs=1e-3)  # F1's 2^14 cells cannot reach 1


def test_verdicts_decide_a_clear_shift_and_say_not_yet_run(runs):
    analyze = _analyze()
    board = analyze.read_board(runs / "runs", runs / "study")
    judge = analyze.Judge(0.2749)
    lines = analyze.verdict_lines(board, judge)
    (m1,) = [ln for ln in lines if ln.startswith("- **M1** (MVQ (mask codebook), 1+1, K = 16")]
    # 2 seeds of ± 1 a side: Welch's interval is ± t(2) · sqrt(2) = ± 6.08; δ 5% of FSQ's 100
    assert "14 bits): reconstruction 50.0 ± 1.4 vs the best non-masked family at no more " in m1
    assert "FSQ (1+1, K = 16, 6 bits) 100.0 ± 1.4: Δ -50.0 [-56.1, -43.9] (2 seeds), δ 5.0: " in m1
    assert m1.count("**better**") == 2  # reconstruction and samples
    (m1_4,) = [ln for ln in lines if ln.startswith("- **M1** (MVQ (mask codebook), 4+1, K = 16")]
    assert "**not yet run** (1 vs 2 seeds)" in m1_4  # one seed: no interval
    (m2,) = [
        ln for ln in lines if ln.startswith("- **M2** (Masked FSQ (random masks), 4+1, K = 16")
    ]
    assert "FSQ (4+1, K = 16, 15 bits) 60.0 ± 1.4: Δ +30.0" in m2 and m2.count("**worse**") == 2
    assert any(
        "Masked FSQ (mask codebook), 1+1, K = 16): **not yet run** (no finished" in ln
        for ln in lines
    )
    words = dict(judge.decided)
    assert words["M1 1+1/16 reconstruction"] == "better"
    assert words["M2 4+1/16 samples (random mask)"] == "worse"
    assert words["F3 MaskGIT vs VQ-VAE-2 (paper)"] == "not yet run"


def test_claims_compare_fsq_with_the_paper_and_the_best_vq_per_size(tmp_path):
    """F1 (usage, perplexity) and F2 (MSE, fd_fmnist): FSQ against each VQ-VAE-2 of fsq_claims
    at each size, F2 against the best VQ only (VQ with its machinery); labels from the axes."""
    analyze = _analyze()

    def claims(method, size, usage, fd):
        return [
            {
                "method": method,
                "tokens": "4+1",
                "per_level": size,
                "seed": str(seed),
                "usage_primary": str(usage + d / 100),
                "perplexity_primary": str(100 * usage + d),
                "mse": str(fd / 1000 + d / 10_000),
                "fd_fmnist": str(fd + d / 10),
                "total_wall_s": "300",
            }
            for seed, d in zip((0, 1), (-1.0, 1.0), strict=True)
        ]

    rows = (
        claims("fsqvae", "2^4", 0.95, 60.0)
        + claims("vqvae2", "2^4", 0.20, 90.0)
        + claims("vqvae2_healthy+all", "2^4", 0.94, 60.2)
    )
    _write(tmp_path / "runs", "fsq_claims", rows)
    board = analyze.read_board(tmp_path / "runs", tmp_path / "study")
    judge = analyze.Judge(0.2749)
    lines = analyze.verdict_lines(board, judge)
    (f1,) = [ln for ln in lines if ln.startswith("- **F1** (2^4 entries")]
    (f2,) = [ln for ln in lines if ln.startswith("- **F2** (2^4 entries")]
    assert "vs VQ-VAE-2 (healthy + all)" in f1 and "vs VQ-VAE-2 (paper)" in f1
    assert "VQ-VAE-2 (paper)" not in f2 and "vs VQ-VAE-2 (healthy + all)" in f2
    words = dict(judge.decided)
    assert words["F1 2^4 usage % vs VQ-VAE-2 (paper)"] == "better"
    assert words["F2 2^4 recon fd_fmnist vs VQ-VAE-2 (healthy + all)"] == "equivalent"
    assert any(ln.startswith("- **F1** (2^6 entries") and "not yet run" in ln for ln in lines)
    table = "\n".join(analyze.claims_table(board))
    assert "| VQ-VAE-2 (healthy + all) | 2^4 | 2 |" in table


def test_screen_names_the_best_option_set_by_the_rule():
    analyze = _analyze()
    plan = [{"K": k, "options": o} for k in ("16", "256") for o in ("none", "cosine", "all")]
    rows = [
        r
        for k in ("16", "256")
        for r in _cells("vqvae2", "4+1", k, 0, 50.0, options="none")
        + _cells("vqvae2", "4+1", k, 0, 80.0, options="cosine")
        + _cells("vqvae2", "4+1", k, 0, 50.5, options="all", seeds=(0,))
    ]
    lines = analyze.screen_lines(rows, plan, "vq_screen", "Best VQ-VAE-2", 0.2749)
    named = next(ln for ln in lines if ln.startswith("Best VQ-VAE-2:"))
    assert "**none** (50.0 averaged over K; better than every other complete option set)" in named
    assert (
        "vs cosine: Δ -30.0" in named and "Not complete yet (under 2 seeds at a K): all." in named
    )
    tied = rows + _cells("vqvae2", "4+1", "16", 0, 52.0, options="all", seeds=(1,))
    tied += _cells("vqvae2", "4+1", "256", 0, 52.0, options="all", seeds=(1,))
    named = next(
        ln
        for ln in analyze.screen_lines(tied, plan, "vq_screen", "Best VQ-VAE-2", 0.27)
        if ln.startswith("Best VQ-VAE-2:")
    )
    assert "lowest by mean only, not separated by the rule from all (" in named


def test_best_vq_sweep_runs_the_option_set_the_committed_screen_names():
    analyze = _analyze()
    board = analyze.read_board()
    screen = analyze.screen_lines(
        board.screens["vq_screen"], board.plan["vq_screen"], "vq_screen", "Best VQ-VAE-2", 0.27
    )
    named = next(ln for ln in screen if ln.startswith("Best VQ-VAE-2:"))
    best = named.split("**")[1]
    options = {c.axes["options"] for c in expand(load_sweep(BOARD / "best_vq.yaml"))}
    assert options == {best}
    screened = load_sweep(BOARD / "vq_screen.yaml").overrides["options"][best]
    assert load_sweep(BOARD / "best_vq.yaml").overrides["options"][best] == screened


def test_nll_rate_adds_the_mask_bits_the_prior_does_not_model(tmp_path):
    analyze = _analyze()
    rows = _cells("mvqvae", "1+1", "16", 22, 100.0, seeds=(0,))
    cell = tmp_path / "cells" / "c0"
    (cell / "prior" / "model").mkdir(parents=True)
    axes = {"method": "mvqvae", "tokens": "1+1", "K": "16", "seed": "0"}
    (cell / "cell.json").write_text(json.dumps({"axes": axes, "status": "done"}))
    config = cell / "prior" / "model" / "config.json"
    config.write_text(json.dumps({"config": {"mask_bits": 16, "model_mask": False}}))
    (row,) = analyze.annotate(rows, "grid", tmp_path)
    assert row["nll_bits"] == 11.0 + 16 and row["_label"] == "MVQ (random masks)"
    config.write_text(json.dumps({"config": {"mask_bits": 16, "model_mask": True}}))
    (row,) = analyze.annotate(rows, "mask_prior", tmp_path)
    assert row["nll_bits"] == 11.0 and row["_label"] == "MVQ (random masks), mask-aware prior"
    (row,) = analyze.annotate(rows, "grid", tmp_path / "elsewhere")  # no prior config: unknown
    assert "nll_bits" not in row


def test_page_and_answer_are_regenerated_byte_identically(runs, capsys):
    out = runs / "out"
    assert _run(runs, out) == 0
    first = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    assert {"README.md", "answer.md", "pareto_bits.png", "pareto_nll.png"} <= set(first)
    page = first["README.md"].decode()
    assert page.startswith(_analyze().START) and page.rstrip().endswith(_analyze().END)
    assert "6 → FSQ (1+1, K = 16; 100.0 ± 1.4, 2 seeds); 14 → MVQ (mask codebook)" in page
    answer = first["answer.md"].decode().split(_analyze().ANSWER_START)[1]
    sentences = answer.split(_analyze().ANSWER_END)[0].strip().split("\n")[-1]
    assert sentences.count(". ") == 2 and sentences.endswith(".")
    assert "![Pareto fronts](pareto_bits.png)" in answer
    assert _run(runs, out) == 0
    assert {p.name: p.read_bytes() for p in sorted(out.iterdir())} == first
    capsys.readouterr()


def test_answer_says_plainly_when_nothing_is_decided(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "study").mkdir()
    assert _run(tmp_path, tmp_path / "out", "--no-plots") == 0
    text = (tmp_path / "out" / "answer.md").read_text()
    assert "No finished cell has reconstruction results yet." in text
    assert (
        "Nothing is decided yet: of the " in text and " are not yet run and 0 unresolved." in text
    )
    assert (
        f"0 of {sum(CELLS.values())} planned leaderboard cells finished"
        in (tmp_path / "out" / "README.md").read_text()
    )


def test_analyze_has_help_and_one_line_error_for_a_bad_runs_folder(tmp_path, capsys):
    analyze = _analyze()
    with pytest.raises(SystemExit) as done:
        analyze.main(["--help"])
    assert done.value.code == 0 and "--runs" in capsys.readouterr().out
    assert analyze.main(["--runs", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("analyze.py: error: --runs") and "\n" not in err
    assert not (tmp_path / "o").exists()
