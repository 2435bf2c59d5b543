"""The leaderboard's sweep files (``results/leaderboard/``): one budget, the planned cells, and a
queue that runs each exactly once."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from mvq.experiments.sweep import expand, load_sweep

BOARD = Path(__file__).resolve().parents[1] / "results" / "leaderboard"
CELLS = {
    "vq_screen": 32,
    "lfq_screen": 16,
    "families": 32,
    "masked": 24,
    "masked_prior": 28,
    "fsq_claims": 48,
    "fsq_maskgit": 4,
}
STEPS = {"vq_screen": 1000, "lfq_screen": 1000}  # short screens; the rest the study's 2 epochs


@pytest.mark.parametrize("name", list(CELLS))
def test_sweep_has_the_planned_cells_and_one_budget(name):
    sweep = load_sweep(BOARD / f"{name}.yaml")
    cells = expand(sweep)
    assert len(cells) == CELLS[name]
    assert {c.seed for c in cells} == {0, 1}
    for cell in cells:
        assert f"train.max_steps={STEPS.get(name, 3750)}" in cell.sets
        assert "train.batch_size=32" in cell.sets
    if sweep.prior is not None:  # samples: the Table 4 budget, 10,000 of them, two sampling seeds
        assert sweep.prior.max_steps == 3000
        assert sweep.eval.n == 10000 and sweep.eval.sample_seeds == [0, 1]


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
