"""The grid: a ``SweepConfig`` expanded into its cells (configs x overrides x seeds)."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

from mvq.experiments.sweep.spec import BaseConfig, Cell, SweepConfig, SweepError, resolve_path
from mvq.training.runconfig import (
    RunConfig,
    apply_override,
    check_keys,
    check_model_config,
    load_run_config,
)

# --- the grid ---------------------------------------------------------------------------------


def _overridden(path: Path, sets: list[str]) -> RunConfig:
    """The run config at ``path`` with ``sets`` applied (fresh dicts: configs are shared)."""
    cfg = load_run_config(path)
    for assignment in sets:
        apply_override(cfg, assignment)
    return cfg


def check_tokenizer_config(cfg: RunConfig, where: str) -> None:
    """What ``mvq train`` would refuse at its start: unknown model, model or train keys, values
    of the wrong type."""
    from mvq.tokenizers import TOKENIZERS
    from mvq.training.tokenizer_job import build_train_config

    check_model_config(cfg, TOKENIZERS, f"{where}: ")
    if "name" not in cfg.data:
        raise SweepError(f"{where}: data.name is missing (e.g. data: {{name: fashion_mnist}})")
    build_train_config(cfg)


def check_prior_config(cfg: RunConfig, where: str) -> None:
    """What ``mvq train-prior`` would refuse at its start: unknown prior, model or train keys,
    values of the wrong type."""
    from mvq.priors import PRIORS
    from mvq.training.tokenizer_job import build_train_config

    check_model_config(cfg, PRIORS, f"{where}: ")
    build_train_config(cfg)


def _budget_sets(sweep: SweepConfig) -> list[str]:
    from mvq.training import TrainConfig

    check_keys(sweep.budget, [f.name for f in dataclasses.fields(TrainConfig)], "budget")
    return [f"train.{k}={json.dumps(v)}" for k, v in sweep.budget.items()]


def _prior_path(sweep: SweepConfig, base: BaseConfig, axes: dict[str, str]) -> Path | None:
    if sweep.prior is None:
        return None
    template = base.prior or sweep.prior.config
    if template is None:
        raise SweepError(
            f"{sweep.path}: the sweep has a prior stage but neither prior.config "
            f"nor the configs entry of {base.path.name} names a prior config"
        )
    try:
        text = template.format(**axes)
    except (KeyError, IndexError, ValueError) as err:
        raise SweepError(
            f"{sweep.path}: prior config '{template}' uses {{{err}}}, which is "
            f"not an axis ({', '.join(axes)})"
        ) from None
    return resolve_path(text, sweep.path, "prior config")


def expand(sweep: SweepConfig) -> list[Cell]:
    """Every cell of the grid, checked as ``mvq train``/``train-prior`` would check them."""
    budget = _budget_sets(sweep)
    combos = list(itertools.product(*(labels.items() for labels in sweep.overrides.values())))
    cells: list[Cell] = []
    for base in sweep.configs:
        for combo, seed in itertools.product(combos, base.seeds or sweep.seeds):
            labels = dict(zip(sweep.overrides, (label for label, _ in combo), strict=True))
            axes = base.axes | labels | {"seed": str(seed)}
            if any(all(axes[k] == v for k, v in rule.items()) for rule in sweep.exclude):
                continue
            sets = [
                *sweep.set,
                *base.set,
                *(s for _, group in combo for s in group),
                *budget,
                f"train.seed={seed}",
            ]
            cell = Cell(len(cells), axes, seed, base.path, sets, _overridden(base.path, sets))
            check_tokenizer_config(cell.run_config, f"cell {cell.index} ({cell.name})")
            _add_prior(sweep, base, cell)
            cells.append(cell)
    if not cells:
        raise SweepError(f"{sweep.path}: the grid is empty (every cell is excluded)")
    names = [c.name for c in cells]
    for name in names:
        if names.count(name) > 1:
            raise SweepError(f"{sweep.path}: two cells are both named {name}: make labels unique")
    return cells


def _add_prior(sweep: SweepConfig, base: BaseConfig, cell: Cell) -> None:
    cell.prior_config = _prior_path(sweep, base, cell.axes)
    if cell.prior_config is None or sweep.prior is None:
        return
    steps = [] if sweep.prior.max_steps is None else [f"train.max_steps={sweep.prior.max_steps}"]
    cell.prior_sets = [*sweep.prior.set, *steps, f"train.seed={cell.seed}"]
    cell.prior_run_config = _overridden(cell.prior_config, cell.prior_sets)
    check_prior_config(cell.prior_run_config, f"cell {cell.index} ({cell.name}) prior")
