"""Sweeps: a grid of tokenizer (and prior) runs with one budget, resumable (``mvq sweep``).

A sweep file names the axes of a grid; every cell is trained, optionally encoded and given a
prior, evaluated with ``mvq eval``, and collected into one table::

    name: fmnist_grid                 # title of the tables (default: the file's stem)
    out: runs/sweeps/fmnist_grid      # output folder (default runs/sweeps/<stem>; --out wins)
    configs:                          # base run configs; other keys are this entry's axis labels
      - {config: configs/vqvae2_fmnist_s1_k16.yaml, method: vqvae2, tokens: 1+1, K: 16,
         prior: configs/priors/transformer_1p1.yaml}
      - {config: configs/mvqvae_fmnist_s1_k16.yaml, method: mvqvae, tokens: 1+1, K: 16,
         prior: configs/priors/transformer_1p1.yaml, set: [model_config.num_hypotheses=64]}
    overrides:                        # more axes: axis -> label -> --set overrides
      variant:
        paper: {}
        healthy: {model_config.ema: true, model_config.dead_code_threshold: 1.0}
    exclude: [{method: mvqvae, variant: healthy}]   # drop cells matching all given labels
    seeds: [0, 1]                     # the last axis, `seed`
    budget: {max_steps: 3750, batch_size: 32}       # train.* of every cell: one budget
    set: [train.val_batches=20]       # overrides of every cell (before the axes' ones)
    device: cuda                      # --device of every stage (default: each command's own)
    prior: {max_steps: 2000, set: []} # optional; `config` here: a template like
                                      # configs/priors/transformer_{K}.yaml, else each entry's
    eval: {split: val, n: 10000, metrics: [mse, fd_fmnist], sample_metrics: [fd_fmnist]}
                                      # optional (absent or null: no eval stages); data:
                                      # default the config's data.name

Cells are configs x overrides x seeds (in that order, seeds fastest). Each cell lives in
``OUT/cells/<axis=label__...>/`` and runs the stages ``train`` (``mvq train``), ``encode``
(``mvq encode``) and ``prior`` (``mvq train-prior``) when the sweep has a prior, and ``eval``
(``mvq eval`` of the reconstructions, into ``eval/``) and, with a prior, ``sample_eval`` (``mvq
eval --prior``, into ``eval_samples/``) when it has an eval section, each as a subprocess with
a log in ``logs/``. The table row merges both ``eval.json``.

A stage is finished when its marker ``markers/<stage>.json`` exists (written atomically after
the stage succeeded, with its wall time and summary). A rerun skips finished stages, resumes an
interrupted training stage from its checkpoint (``--resume``) or restarts it in an empty
folder, and refuses a cell folder whose finished stages were made by another spec. Relative
config paths resolve against the current directory, then against the sweep file's folder.

SIGTERM and SIGUSR1 to the sweep are passed on to its running stages (a training stage
checkpoints the step it is at), no stage starts after them, the stopped cells are recorded as
interrupted (not failed), and the sweep exits with the signal's status (143, 75; see
``mvq.training.interrupt``); the same command resumes them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import functools
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from mvq.pretrained import atomic_write_file
from mvq.runconfig import (
    ConfigError,
    RunConfig,
    apply_override,
    check_keys,
    check_model_config,
    load_run_config,
)
from mvq.sweep_results import is_number, order_columns, summary_tables, to_csv, to_markdown
from mvq.training.interrupt import STOP_STATUS

SWEEP_KEYS = (
    "name",
    "out",
    "configs",
    "overrides",
    "exclude",
    "seeds",
    "budget",
    "set",
    "device",
    "prior",
    "eval",
)
ENTRY_KEYS = ("config", "set", "prior", "seeds")  # other keys of a configs entry: axis labels
PRIOR_KEYS = ("config", "max_steps", "set")
EVAL_KEYS = ("data", "split", "n", "metrics", "sample_metrics", "sample_seeds")
EVAL_STAGES = ("eval", "sample_eval")  # a changed eval section reruns only these
SAMPLE_SEED_STAGE = "sample_eval_seed"  # + the seed: the sample form again, another sampling seed
RESERVED_AXES = ("cell", "status", "unavailable")  # column names the tables use themselves


class SweepError(ConfigError):
    """The sweep file or the command line asks for something that cannot run."""


@dataclass
class BaseConfig:
    """One entry of ``configs``: a run config file, its axis labels and its own overrides."""

    path: Path
    axes: dict[str, str]
    set: list[str] = field(default_factory=list)
    prior: str | None = None  # prior run config for this entry (wins over prior.config)
    seeds: list[int] | None = None  # this entry's seeds (default: the sweep's)


@dataclass
class PriorSpec:
    """The optional prior stage: a prior run config (template) and its budget."""

    config: str | None = None  # "{axis}" placeholders are filled with the cell's labels
    max_steps: int | None = None
    set: list[str] = field(default_factory=list)


@dataclass
class EvalSpec:
    """The optional eval stages: ``mvq eval`` of the reconstructions on a split and, when a
    prior exists, of ``n`` samples against it; ``metrics`` / ``sample_metrics`` ask each form
    for named metrics (default: all that can run). ``sample_seeds`` evaluates the prior once
    per sampling seed (the row's sample metrics are their mean); the stages of the seeds after
    the first never retrain a cell whose weights are gone (see ``first_stage_to_run``)."""

    data: str | None = None  # default: the tokenizer config's data.name
    split: str = "val"
    n: int = 10000
    metrics: list[str] | None = None
    sample_metrics: list[str] | None = None
    sample_seeds: list[int] = field(default_factory=lambda: [0])


@dataclass
class SweepConfig:
    """A parsed and checked sweep file."""

    path: Path
    name: str
    out: Path
    configs: list[BaseConfig]
    overrides: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    exclude: list[dict[str, str]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    budget: dict[str, Any] = field(default_factory=dict)
    set: list[str] = field(default_factory=list)
    device: str | None = None
    prior: PriorSpec | None = None
    eval: EvalSpec | None = None

    @property
    def axis_names(self) -> list[str]:
        """Columns of the grid: the configs' axes, the override axes, then ``seed``."""
        return [*self.configs[0].axes, *self.overrides, "seed"]


@dataclass
class Cell:
    """One run of the grid: its labels, its tokenizer and prior run configs (overrides applied)."""

    index: int
    axes: dict[str, str]
    seed: int
    config: Path
    sets: list[str]
    run_config: RunConfig
    prior_config: Path | None = None
    prior_sets: list[str] = field(default_factory=list)
    prior_run_config: RunConfig | None = None

    @property
    def name(self) -> str:
        """Folder name: ``axis=label`` pairs joined by ``__`` (unsafe characters become _)."""
        return "__".join(f"{k}={re.sub(r'[^A-Za-z0-9.+-]', '_', v)}" for k, v in self.axes.items())


# --- reading the sweep file -------------------------------------------------------------------


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SweepError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def _label(value: Any, where: str) -> str:
    if isinstance(value, (dict, list)) or value is None:
        raise SweepError(f"{where} must be a plain label (string or number), got {value!r}")
    return str(value)


def assignments(value: Any, where: str) -> list[str]:
    """Overrides as ``section.key=value`` strings from a string, a list or a mapping."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if isinstance(value, dict):
        value = [f"{k}={json.dumps(v)}" for k, v in value.items()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SweepError(f"{where} must be 'section.key=value' strings or a mapping of them")
    for v in value:
        if "=" not in v or "." not in v.split("=", 1)[0]:
            raise SweepError(
                f"{where}: override '{v}' must look like section.key=value, e.g. train.lr=1e-4"
            )
    return list(value)


def resolve_path(text: str, sweep_file: Path, what: str) -> Path:
    """``text`` against the current directory, then the sweep file's folder; must exist."""
    candidates = (
        [Path(text)] if Path(text).is_absolute() else [Path(text), sweep_file.parent / text]
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = " or ".join(str(c) for c in dict.fromkeys(candidates))
    raise SweepError(f"{what} {text} does not exist (looked for {tried})")


def _base_configs(raw: Any, sweep_file: Path) -> list[BaseConfig]:
    if not isinstance(raw, list) or not raw:
        raise SweepError(
            f"{sweep_file}: 'configs' must be a non-empty list of {{config: PATH, "
            "<axis>: <label>, ...}}"
        )
    entries = []
    for i, item in enumerate(raw):
        where = f"{sweep_file}: configs[{i}]"
        item = {"config": item} if isinstance(item, str) else _mapping(item, where)
        if "config" not in item:
            raise SweepError(f"{where} has no 'config' key")
        path = resolve_path(str(item["config"]), sweep_file, f"{where}: config file")
        axes = {str(k): _label(v, f"{where}.{k}") for k, v in item.items() if k not in ENTRY_KEYS}
        prior = item.get("prior")
        entries.append(
            BaseConfig(
                path,
                axes or {"config": path.stem},
                assignments(item.get("set"), f"{where}.set"),
                None if prior is None else str(prior),
                None if item.get("seeds") is None else _seeds(item["seeds"], f"{where}.seeds"),
            )
        )
    names = list(entries[0].axes)
    for i, entry in enumerate(entries):
        if list(entry.axes) != names:
            raise SweepError(
                f"{sweep_file}: configs[{i}] has axes {list(entry.axes)}, "
                f"configs[0] has {names}: give every entry the same axes"
            )
    return entries


def _override_axes(raw: Any, sweep_file: Path) -> dict[str, dict[str, list[str]]]:
    axes = {}
    for axis, labels in _mapping(raw, f"{sweep_file}: overrides").items():
        where = f"{sweep_file}: overrides.{axis}"
        labels = _mapping(labels, where)
        if not labels:
            raise SweepError(f"{where} has no labels: give label: {{section.key: value}} pairs")
        axes[str(axis)] = {
            _label(k, where): assignments(v, f"{where}.{k}") for k, v in labels.items()
        }
    return axes


def _seeds(raw: Any, where: Path | str) -> list[int]:
    seeds = [0] if raw is None else raw if isinstance(raw, list) else [raw]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise SweepError(f"{where}: 'seeds' must be a list of integers, got {raw!r}")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"{where}: 'seeds' repeats a seed: {seeds}")
    return seeds


def _stage_spec(cls: type, keys: tuple[str, ...], raw: Any, where: str) -> Any:
    values = _mapping(raw, where)
    check_keys(values, keys, where)
    if "set" in values:
        values = values | {"set": assignments(values["set"], f"{where}.set")}
    if values.get("metrics") is not None:
        metrics = values["metrics"]
        values = values | {"metrics": metrics.split(",") if isinstance(metrics, str) else metrics}
    for key in ("max_steps", "n"):
        if key in values and not (isinstance(values[key], int) and values[key] >= 1):
            raise SweepError(f"{where}.{key} must be a positive integer, got {values[key]!r}")
    if "sample_seeds" in values:
        values = values | {"sample_seeds": _seeds(values["sample_seeds"], f"{where}.sample_seeds")}
    return cls(**values)


def load_sweep(path: str | Path, out: str | Path | None = None) -> SweepConfig:
    """Read and check a sweep file (every problem is a one-line ``SweepError``)."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SweepError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from err
    raw = _mapping(raw, str(path))
    check_keys(raw, SWEEP_KEYS, str(path))
    has_prior, has_eval = (raw.get(k) not in (None, False) for k in ("prior", "eval"))
    sweep = SweepConfig(
        path=path,
        name=str(raw.get("name") or path.stem),
        out=Path(out or raw.get("out") or Path("runs", "sweeps", path.stem)),
        configs=_base_configs(raw.get("configs"), path),
        overrides=_override_axes(raw.get("overrides"), path),
        seeds=_seeds(raw.get("seeds"), path),
        budget=_mapping(raw.get("budget"), f"{path}: budget"),
        set=assignments(raw.get("set"), f"{path}: set"),
        device=None if raw.get("device") is None else str(raw["device"]),
        prior=_stage_spec(PriorSpec, PRIOR_KEYS, raw.get("prior"), "prior") if has_prior else None,
        eval=_stage_spec(EvalSpec, EVAL_KEYS, raw.get("eval"), "eval") if has_eval else None,
    )
    _check_axes(sweep, raw.get("exclude"))
    return sweep


def _check_axes(sweep: SweepConfig, exclude: Any) -> None:
    """Axis names are unique and not reserved; ``exclude`` names existing axes."""
    names = sweep.axis_names
    for name in names:
        if names.count(name) > 1 or name in RESERVED_AXES:
            raise SweepError(
                f"{sweep.path}: axis name '{name}' is used twice or reserved "
                f"({', '.join(RESERVED_AXES)}, seed)"
            )
    if exclude is None:
        return
    if not isinstance(exclude, list):
        raise SweepError(f"{sweep.path}: 'exclude' must be a list of {{axis: label}} mappings")
    for i, rule in enumerate(exclude):
        rule = _mapping(rule, f"{sweep.path}: exclude[{i}]")
        check_keys(rule, names, f"{sweep.path}: exclude[{i}]")
        sweep.exclude.append({str(k): _label(v, f"exclude[{i}].{k}") for k, v in rule.items()})


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
    from mvq.train_tokenizer import build_train_config

    check_model_config(cfg, TOKENIZERS, f"{where}: ")
    if "name" not in cfg.data:
        raise SweepError(f"{where}: data.name is missing (e.g. data: {{name: fashion_mnist}})")
    build_train_config(cfg)


def check_prior_config(cfg: RunConfig, where: str) -> None:
    """What ``mvq train-prior`` would refuse at its start: unknown prior, model or train keys,
    values of the wrong type."""
    from mvq.priors import PRIORS
    from mvq.train_tokenizer import build_train_config

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


# --- stages -----------------------------------------------------------------------------------

MVQ = [sys.executable, "-m", "mvq.cli"]
STAGE_PROGRAM: dict[str, list[str]] = {}  # stage name -> argv prefix used instead of MVQ (tests)
CHECKPOINT = Path("checkpoints", "last.pt")  # where `mvq train` keeps a run's checkpoint


@dataclass
class Stage:
    """One subprocess of a cell: ``mvq <args>`` writing ``out``.

    ``spec`` is what the result depends on (compared with a finished stage's marker);
    ``resumable`` stages continue from ``out/checkpoints/last.pt`` with ``--resume``.
    """

    name: str
    args: list[str]
    out: Path
    spec: dict[str, Any]
    resumable: bool = False
    product: Path | None = None  # the file later stages read; missing -> the stage reruns
    backfill: bool = False  # added after cells finished: skipped, never retrains, if inputs gone

    def argv(self, resume: bool = False) -> list[str]:
        """The full command line (``--resume`` added when asked)."""
        program = STAGE_PROGRAM.get(self.name, MVQ)
        return [*program, *self.args, *(["--resume"] if resume else [])]


def _device_args(sweep: SweepConfig) -> list[str]:
    return [] if sweep.device is None else ["--device", sweep.device]


def _spec(sweep: SweepConfig, **values: Any) -> dict[str, Any]:
    """A stage's spec as it reads back from JSON, with the sweep's device."""
    device = {} if sweep.device is None else {"device": sweep.device}
    return json.loads(json.dumps(values | device))


def _set_args(sets: list[str]) -> list[str]:
    return [arg for s in sets for arg in ("--set", s)]


def cell_stages(sweep: SweepConfig, cell: Cell, cell_dir: Path) -> list[Stage]:
    """The cell's pipeline: train, [encode, prior], [eval]."""
    stages = [_train_stage(sweep, cell, cell_dir)]
    prior_model = None
    if cell.prior_run_config is not None:
        stages += [_encode_stage(sweep, cell, cell_dir), _prior_stage(sweep, cell, cell_dir)]
        prior_model = cell_dir / "prior" / "model"
    if sweep.eval is not None:  # reconstruction, then samples when there is a prior
        stages.append(_eval_stage(sweep, cell, cell_dir, None))
        if prior_model is not None:
            for seed in sweep.eval.sample_seeds:
                stages.append(_eval_stage(sweep, cell, cell_dir, prior_model, seed))
    return stages


def _train_stage(sweep: SweepConfig, cell: Cell, cell_dir: Path) -> Stage:
    """``mvq train --config C --out CELL/tokenizer --set ...``."""
    run_dir = cell_dir / "tokenizer"
    args = ["train", "--config", str(cell.config), "--out", str(run_dir)]
    args += [*_set_args(cell.sets), *_device_args(sweep)]
    spec = _spec(sweep, run_config=cell.run_config.to_dict())
    return Stage("train", args, run_dir, spec, True, run_dir / "model" / "model.safetensors")


def _encode_stage(sweep: SweepConfig, cell: Cell, cell_dir: Path) -> Stage:
    """``mvq encode --tokenizer CELL/tokenizer/model --data NAME --out CELL/tokens``."""
    data = cell.run_config.data
    args = ["encode", "--tokenizer", str(cell_dir / "tokenizer" / "model"), "--data", data["name"]]
    if data.get("root") is not None:
        args += ["--root", str(data["root"])]
    args += ["--out", str(cell_dir / "tokens"), "--seed", str(cell.seed), *_device_args(sweep)]
    spec = _spec(sweep, data=data["name"], root=data.get("root"), seed=cell.seed)
    tokens = cell_dir / "tokens"
    return Stage("encode", args, tokens, spec, product=tokens / "meta.json")


def _prior_stage(sweep: SweepConfig, cell: Cell, cell_dir: Path) -> Stage:
    """``mvq train-prior --tokens CELL/tokens --config P --out CELL/prior --set ...``."""
    assert cell.prior_run_config is not None
    run_dir = cell_dir / "prior"
    args = ["train-prior", "--tokens", str(cell_dir / "tokens"), "--config", str(cell.prior_config)]
    args += ["--out", str(run_dir), *_set_args(cell.prior_sets), *_device_args(sweep)]
    spec = _spec(sweep, run_config=cell.prior_run_config.to_dict())
    return Stage("prior", args, run_dir, spec, True, run_dir / "model" / "model.safetensors")


def _eval_stage(
    sweep: SweepConfig, cell: Cell, cell_dir: Path, prior: Path | None, seed: int = 0
) -> Stage:
    """``mvq eval --tokenizer DIR [--prior DIR -n N] --data NAME --split SPLIT --out DIR``.

    Without ``prior``: the reconstruction form into ``CELL/eval`` (stage ``eval``); with it:
    the sample form of the first sampling seed into ``CELL/eval_samples`` (stage
    ``sample_eval``) and of each later seed S into ``CELL/eval_samples_seedS`` (stage
    ``sample_eval_seedS``, a backfill stage, ``--seed S``).
    """
    spec = sweep.eval or EvalSpec()
    data = spec.data or cell.run_config.data["name"]
    first = prior is None or seed == spec.sample_seeds[0]
    if prior is None:
        name, out = "eval", "eval"
    elif first:
        name, out = "sample_eval", "eval_samples"
    else:
        name, out = f"{SAMPLE_SEED_STAGE}{seed}", f"eval_samples_seed{seed}"
    out = cell_dir / out
    args = ["eval", "--tokenizer", str(cell_dir / "tokenizer" / "model")]
    if prior is not None:
        args += ["--prior", str(prior), "-n", str(spec.n)]
    args += ["--data", data, "--split", spec.split, "--out", str(out)]
    metrics = spec.metrics if prior is None else spec.sample_metrics
    if metrics:
        args += ["--metrics", ",".join(metrics)]
    seeded = prior is not None and seed != 0  # 0 is eval's default: that spec stays as it was
    if seeded:
        args += ["--seed", str(seed)]
    args += _device_args(sweep)
    record = _spec(
        sweep,
        data=data,
        split=spec.split,
        n=spec.n if prior else None,
        metrics=metrics,
        prior=prior is not None,
        **({"seed": seed} if seeded else {}),
    )
    return Stage(name, args, out, record, backfill=not first)


# --- running ----------------------------------------------------------------------------------


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` all or nothing (``mvq.pretrained.atomic_write_file``)."""
    atomic_write_file(path, text)


def marker_path(cell_dir: Path, stage: str) -> Path:
    """Where a finished stage's marker lives."""
    return cell_dir / "markers" / f"{stage}.json"


def read_marker(cell_dir: Path, stage: str) -> dict[str, Any] | None:
    """A stage's marker, or None when absent or unreadable (the stage then runs again)."""
    try:
        marker = json.loads(marker_path(cell_dir, stage).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return marker if isinstance(marker, dict) else None


def stage_done(cell_dir: Path, stage: Stage) -> bool:
    """True when the stage has a marker made by the same spec."""
    marker = read_marker(cell_dir, stage.name)
    return marker is not None and marker.get("spec") == stage.spec


def skipped_backfill(cell_dir: Path, stages: list[Stage]) -> set[str]:
    """Names of the backfill stages that cannot run: not done, in a cell whose other stages
    are all done and one of whose products is gone.

    A cell that finished before its sweep asked for another sampling seed, and was committed
    without its weights, stays finished: it is not retrained only to sample once more.
    """
    finished = all(stage_done(cell_dir, s) for s in stages if not s.backfill)
    gone = any(s.product is not None and not s.product.exists() for s in stages)
    if not (finished and gone):
        return set()
    return {s.name for s in stages if s.backfill and not stage_done(cell_dir, s)}


def pending(cell_dir: Path, stages: list[Stage]) -> list[int]:
    """Indices of the stages not done, skipped backfill stages left out."""
    skipped = skipped_backfill(cell_dir, stages)
    return [
        i for i, s in enumerate(stages) if s.name not in skipped and not stage_done(cell_dir, s)
    ]


def first_stage_to_run(cell_dir: Path, stages: list[Stage]) -> int | None:
    """Index of the first stage to run, None when the cell is finished.

    A stage runs when it is not done, and so does a done stage whose product a stage that
    must run needs but which is gone (e.g. a results folder committed without its weights).
    Backfill stages whose inputs are gone are skipped (``skipped_backfill``).
    """
    first = next(iter(pending(cell_dir, stages)), None)
    while first:
        product = stages[first - 1].product
        if product is None or product.exists():
            break
        first -= 1
    return first


def check_cell_dir(cell_dir: Path, stages: list[Stage]) -> None:
    """Refuse a cell folder whose finished training stages were made by another spec.

    A changed eval spec only reruns the eval stage.
    """
    for stage in stages:
        marker = read_marker(cell_dir, stage.name)
        if stage.name in EVAL_STAGES or marker is None or marker.get("spec") == stage.spec:
            continue
        old, new = marker.get("spec") or {}, stage.spec
        diff = next((k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)), "")
        raise SweepError(
            f"{cell_dir} holds a finished '{stage.name}' stage of another spec "
            f"({diff} differs): use another --out, or delete that cell folder"
        )


@dataclass
class CellOutcome:
    """What happened to one cell in this invocation."""

    cell: Cell
    status: str  # "done", "failed", "interrupted" (by a signal) or "busy" (another process)
    ran: list[str] = field(default_factory=list)  # stages run now
    log: Path | None = None  # the failed or interrupted stage's log
    message: str = ""
    signum: int = 0  # the signal that interrupted it


class StopSignals:
    """Context manager: SIGTERM and SIGUSR1 to the sweep are passed on to every running stage
    (a training stage finishes its step, checkpoints and exits 143 / 75), and no stage starts
    after them; ``signum`` is the first one received (0: none).

    A stage stopped by one of them on its own (a scheduler signalling every process) stops the
    sweep the same way (``request``). Only the main thread can install the handlers.
    """

    def __init__(self) -> None:
        self.signum = 0
        self._procs: set[subprocess.Popen] = set()
        self._forwarded: set[int] = set()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_STATUS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def _handle(self, signum: int, frame: object) -> None:
        if not self.signum:
            os.write(2, f"{signal.Signals(signum).name}: passing it on to the running stages; "
                        "no new stage starts\n".encode())  # fmt: skip
        self.request(signum)

    def request(self, signum: int) -> None:
        """Stop the sweep on ``signum``: pass it on to the running stages, once (a repeat
        could reach a stage after it restored its default handlers, on its way out)."""
        self.signum = self.signum or signum  # first, then the copy below: see ``started``
        if signum in self._forwarded:
            return
        self._forwarded.add(signum)
        for proc in list(self._procs):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    def started(self, proc: subprocess.Popen) -> None:
        """Track a stage's process; stop it at once when a stop came while it was starting."""
        self._procs.add(proc)  # first, then the check: ``request`` sees it or it sees signum
        if self.signum:
            proc.send_signal(self.signum)

    def ended(self, proc: subprocess.Popen) -> None:
        """Forget a stage's process once it has exited."""
        self._procs.discard(proc)


def stopped_by(code: int, stop: StopSignals) -> int:
    """The signal a stage that exited with ``code`` was stopped by, 0 when it was not: a
    documented stop status (143, 75), death by SIGTERM / SIGUSR1, or any failure after the
    sweep passed a signal on."""
    for signum, status in STOP_STATUS.items():
        if code in (status, -signum):
            return signum
    return stop.signum if code != 0 else 0


class Progress:
    """Thread-safe one-line progress reports: ``[i/N] cell: message``."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._lock = threading.Lock()

    def __call__(self, cell: Cell, message: str) -> None:
        with self._lock:
            print(f"[{cell.index + 1}/{self.total}] {cell.name}: {message}", flush=True)


@contextlib.contextmanager
def file_lock(path: Path, wait: bool) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path``: yields False when ``wait`` is False and it is held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def last_json_object(text: str) -> dict[str, Any]:
    """The last line of ``text`` that is a JSON object (the commands' one-line summary)."""
    for line in reversed(re.split(r"[\r\n]", text)):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    return {}


def _wait(proc: subprocess.Popen) -> int:
    """Wait for a stage; on Ctrl-C let it checkpoint (it stops after its step), then re-raise."""
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)  # a duplicate of the terminal's is ignored by the trainer
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise


def run_stage(
    stage: Stage, cell_dir: Path, env: dict[str, str], stop: StopSignals | None = None
) -> tuple[int, dict[str, Any]]:
    """Run one stage as a subprocess (``stop`` passes signals on to it); on success write its
    marker. Returns (exit code, marker)."""
    stop = stop or StopSignals()
    resume = stage.resumable and (stage.out / CHECKPOINT).is_file()
    if not resume:
        shutil.rmtree(stage.out, ignore_errors=True)  # restart cleanly: no half-written output
    log = cell_dir / "logs" / f"{stage.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = stage.argv(resume)
    with open(log, "a") as f:  # earlier attempts stay in the log
        start_offset = f.tell()
        f.write(f"$ {shlex.join(argv)}\n")
        f.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        stop.started(proc)
        try:
            code = _wait(proc)
        finally:
            stop.ended(proc)
        wall = time.perf_counter() - t0
    marker = {
        "stage": stage.name,
        "spec": stage.spec,
        "wall_s": round(wall, 3),
        "resumed": resume,
        "exit_code": code,
        "log": log.relative_to(cell_dir).as_posix(),
        "command": shlex.join(argv),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if code == 0:
        with open(log) as f:
            f.seek(start_offset)
            marker["summary"] = last_json_object(f.read())
        write_atomic(marker_path(cell_dir, stage.name), json.dumps(marker, indent=2) + "\n")
    return code, marker


@functools.lru_cache(maxsize=64)
def _git(folder: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def repo_relative(path: Path) -> str:
    """``path`` relative to the root of the git repository holding it (else as given)."""
    root = _git(path.parent, "rev-parse", "--show-toplevel")
    with contextlib.suppress(ValueError, TypeError):
        return path.resolve().relative_to(Path(root).resolve()).as_posix()  # type: ignore[arg-type]
    return str(path)


def repo_commit(path: Path) -> str | None:
    """The commit checked out where ``path`` lives, ``+dirty`` when tracked files other than
    results (``results/``, ``runs/``) differ from it."""
    commit = _git(path.parent, "rev-parse", "HEAD")
    root = _git(path.parent, "rev-parse", "--show-toplevel")
    if commit is None or root is None:
        return None
    dirty = _git(
        Path(root), "status", "--porcelain", "--untracked-files=no", "--", ".",
        ":(exclude)results", ":(exclude)runs",
    )  # fmt: skip
    return commit + ("+dirty" if dirty else "")


def write_cell_record(cell: Cell, cell_dir: Path, stages: list[Stage], extra: dict) -> None:
    """``cell.json``: the cell's labels, configs, and each stage's status and wall time."""
    record: dict[str, Any] = {
        "index": cell.index,
        "name": cell.name,
        "axes": cell.axes,
        "config": repo_relative(cell.config),
        "set": cell.sets,
        "prior_config": None if cell.prior_config is None else repo_relative(cell.prior_config),
        "commit": repo_commit(cell.config),
        "stages": {},
    }
    skipped = skipped_backfill(cell_dir, stages)
    for stage in stages:
        marker = read_marker(cell_dir, stage.name)
        done = marker is not None and stage_done(cell_dir, stage)
        status = "done" if done else "skipped" if stage.name in skipped else "pending"
        record["stages"][stage.name] = {"status": status} | (
            {k: marker[k] for k in ("wall_s", "resumed", "finished_at", "log")} if done else {}
        )
    record["stages"] |= extra
    statuses = {s["status"] for s in record["stages"].values()}
    record["status"] = next(
        (s for s in ("failed", "interrupted") if s in statuses),
        "done" if statuses <= {"done", "skipped"} else "pending",
    )
    write_atomic(cell_dir / "cell.json", json.dumps(record, indent=2) + "\n")


def run_cell(
    sweep: SweepConfig,
    cell: Cell,
    env: dict[str, str],
    progress: Progress,
    stop: StopSignals | None = None,
) -> CellOutcome:
    """Run the cell's unfinished stages in order; once one runs, every later one runs too.

    A stage stopped by SIGTERM / SIGUSR1 (``stop``) is recorded as interrupted, not failed:
    the next run resumes it from its checkpoint.
    """
    stop = stop or StopSignals()
    cell_dir = sweep.out / "cells" / cell.name
    stages = cell_stages(sweep, cell, cell_dir)
    with file_lock(cell_dir / ".lock", wait=False) as mine:
        if not mine:
            progress(cell, "running in another process, skipped")
            return CellOutcome(cell, "busy")
        first = first_stage_to_run(cell_dir, stages)
        if first is None:
            progress(cell, "finished earlier, skipped")
            return CellOutcome(cell, "done")
        for stage in stages[first:]:  # their results depend on the stage that reruns
            marker_path(cell_dir, stage.name).unlink(missing_ok=True)
        write_cell_record(cell, cell_dir, stages, {})
        outcome = CellOutcome(cell, "done")
        for stage in stages[first:]:
            if stop.signum:  # stopped between two stages
                return CellOutcome(cell, "interrupted", outcome.ran, signum=stop.signum)
            outcome.ran.append(stage.name)
            resume = stage.resumable and (stage.out / CHECKPOINT).is_file()
            progress(cell, f"{stage.name} started{' (resuming)' if resume else ''}")
            code, marker = run_stage(stage, cell_dir, env, stop)
            if code != 0:
                return _stage_ended(outcome, cell_dir, stages, stage, marker, stop, progress)
            write_cell_record(cell, cell_dir, stages, {})
            progress(cell, f"{stage.name} done in {marker['wall_s']:.1f} s")
        return outcome


def _stage_ended(
    outcome: CellOutcome,
    cell_dir: Path,
    stages: list[Stage],
    stage: Stage,
    marker: dict[str, Any],
    stop: StopSignals,
    progress: Progress,
) -> CellOutcome:
    """Record a stage that exited with an error status: interrupted by a stop signal (the
    sweep then stops too), or failed."""
    cell, code, ran = outcome.cell, marker["exit_code"], outcome.ran
    signum = stopped_by(code, stop)
    log = cell_dir / marker["log"]
    entry = {"exit_code": code, "log": marker["log"], "wall_s": marker["wall_s"]}
    if signum:
        stop.request(signum)
        name = signal.Signals(signum).name
        entry = {"status": "interrupted", "signal": name, **entry}
        write_cell_record(cell, cell_dir, stages, {stage.name: entry})
        progress(cell, f"{stage.name} interrupted by {name} (exit {code}); the next run resumes it")
        return CellOutcome(cell, "interrupted", ran, log, signum=signum)
    write_cell_record(cell, cell_dir, stages, {stage.name: {"status": "failed", **entry}})
    progress(cell, f"{stage.name} FAILED (exit {code}); log: {log}")
    return CellOutcome(cell, "failed", ran, log)


# --- collecting -------------------------------------------------------------------------------


def _eval_values(path: Path) -> dict[str, Any]:
    """Numbers of an ``eval.json`` and the names of its unavailable metrics."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return {"unavailable": f"eval.json unreadable ({type(err).__name__})"}
    if not isinstance(data, dict):
        return {"unavailable": "eval.json is not an object"}
    from mvq.metrics.fd_fmnist import classifier_label

    row: dict[str, Any] = {k: v for k, v in data.items() if is_number(v)}
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    if other := classifier_label(meta.get("fd_fmnist_classifier")):
        row["fd_classifier"] = other  # not mvq's shipped classifier: named in the tables
    unavailable = data.get("unavailable")
    if isinstance(unavailable, dict) and unavailable:
        row["unavailable"] = ";".join(sorted(unavailable))
    return row


def cell_row(sweep: SweepConfig, cell: Cell) -> dict[str, Any] | None:
    """The table row of a finished cell (None while any stage is unfinished)."""
    cell_dir = sweep.out / "cells" / cell.name
    stages = cell_stages(sweep, cell, cell_dir)
    if pending(cell_dir, stages):
        return None
    skipped = skipped_backfill(cell_dir, stages)
    stages = [s for s in stages if s.name not in skipped]
    row: dict[str, Any] = {"cell": cell.index, **cell.axes}
    sampled: list[dict[str, Any]] = []  # one per sampling seed
    for stage in stages:  # reconstruction metrics, then the sample form's
        if stage.name in EVAL_STAGES or stage.backfill:
            values = _eval_values(stage.out / "eval.json")
            gone = [row.get("unavailable"), values.pop("unavailable", None)]
            if other := values.pop("fd_classifier", None):
                row["fd_classifier"] = other
            if stage.name == "eval":
                row |= values
            else:
                sampled.append(values)
                row |= {
                    f"{k}_sampling_seed{stage.spec.get('seed', 0)}": v
                    for k, v in values.items()
                    if k.startswith("sample_")
                }
            if any(gone):
                row["unavailable"] = ";".join(sorted({n for g in gone if g for n in g.split(";")}))
    if sampled:  # the sample metrics of the cell: their mean over the sampling seeds
        row |= {
            k: sum(v[k] for v in sampled) / len(sampled)
            for k in sampled[0]
            if is_number(sampled[0][k]) and all(k in v for v in sampled)
        }
        row["sampling_seeds"] = len(sampled)
    for stage in stages:
        marker = read_marker(cell_dir, stage.name) or {}
        summary = marker.get("summary") or {}
        if stage.name == "train":
            row |= {
                f"train_{k}": summary[k]
                for k in ("steps", "images_per_s", "val_loss")
                if is_number(summary.get(k))
            }
        if stage.name == "prior":
            row |= {
                f"prior_train_{k}": v
                for k, v in summary.items()
                if k in ("steps", "val_nll_nats_per_token") and is_number(v)
            }
        row[f"{stage.name}_wall_s"] = marker.get("wall_s")
    row["total_wall_s"] = round(sum(row[f"{s.name}_wall_s"] or 0.0 for s in stages), 3)
    return row


def collect(sweep: SweepConfig, cells: list[Cell]) -> list[dict[str, Any]]:
    """Write ``results.csv/.md`` and ``summary.csv/.md`` in ``sweep.out`` from finished cells."""
    with file_lock(sweep.out / ".collect.lock", wait=True):
        rows = [row for cell in cells if (row := cell_row(sweep, cell)) is not None]
        axes = sweep.axis_names
        columns = order_columns(axes, rows)
        title = f"Sweep {sweep.name}: {len(rows)} of {len(cells)} cells finished."
        if others := sorted({str(r["fd_classifier"]) for r in rows if r.get("fd_classifier")}):
            title += f" fd_fmnist of classifier {', '.join(others)}, not mvq's shipped one."
        write_atomic(sweep.out / "results.csv", to_csv(columns, rows))
        write_atomic(sweep.out / "results.md", to_markdown(columns, rows, title))
        summary_csv, summary_md = summary_tables(axes, rows, f"{title} Mean ± std over seeds.")
        write_atomic(sweep.out / "summary.csv", summary_csv)
        write_atomic(sweep.out / "summary.md", summary_md)
    return rows


# --- the command ------------------------------------------------------------------------------


def default_threads() -> int:
    """CPUs this process may use (Slurm's and taskset's limits included)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_sweep(
    sweep: SweepConfig, cells: list[Cell], selected: list[Cell], jobs: int, threads: int
) -> list[CellOutcome]:
    """Run ``selected`` cells, ``jobs`` at once with ``threads // jobs`` threads each.

    SIGTERM / SIGUSR1 are passed on to the running stages and start nothing new: the cells
    they stop (and those not started) come back as interrupted.
    """
    jobs = max(1, min(jobs, len(selected)))
    per_cell = str(max(1, threads // jobs))
    env = {**os.environ, "OMP_NUM_THREADS": per_cell, "MKL_NUM_THREADS": per_cell}
    env.setdefault("TQDM_MININTERVAL", "30")  # a progress line per 30 s in logs, not per step
    progress, stop = Progress(len(cells)), StopSignals()

    def one(cell: Cell) -> CellOutcome:
        if stop.signum:
            return CellOutcome(cell, "interrupted", signum=stop.signum)
        try:
            outcome = run_cell(sweep, cell, env, progress, stop)
        except OSError as err:  # this cell's folder, not the others'
            progress(cell, f"FAILED: {err}")
            outcome = CellOutcome(cell, "failed", message=str(err))
        collect(sweep, cells)
        return outcome

    with stop:
        if jobs == 1:
            return [one(cell) for cell in selected]
        with ThreadPoolExecutor(jobs) as pool:
            return list(pool.map(one, selected))


def report(sweep: SweepConfig, outcomes: list[CellOutcome]) -> int:
    """Print what happened. Exit status: that of the stop signal (143 SIGTERM, 75 SIGUSR1)
    when one interrupted the sweep, else 1 when any cell failed, else 0."""
    statuses = ("done", "failed", "interrupted", "busy")
    counts = {s: sum(o.status == s for o in outcomes) for s in statuses}
    print(
        f"sweep {sweep.name}: {counts['done']} done, {counts['failed']} failed, "
        f"{counts['interrupted']} interrupted, {counts['busy']} running elsewhere; "
        f"table: {sweep.out / 'results.md'}"
    )
    for o in outcomes:
        if o.status == "failed":
            where = f"log: {o.log}" if o.log else o.message
            stage = o.ran[-1] if o.ran else "setup"
            print(f"  cell {o.cell.index} ({o.cell.name}) failed at {stage}; {where}")
    signum = max((o.signum for o in outcomes), default=0)
    if signum:
        print(
            f"  interrupted by {signal.Signals(signum).name}: the same command resumes the "
            f"{counts['interrupted']} interrupted cells (exit status {STOP_STATUS[signum]})"
        )
        return STOP_STATUS[signum]
    return 1 if counts["failed"] else 0


def list_commands(file: str, out: str | None, cells: list[Cell]) -> list[str]:
    """One shell command per cell: ``mvq sweep FILE --cell I`` (for schedulers)."""
    extra = [] if out is None else ["--out", out]
    return [shlex.join(["mvq", "sweep", file, "--cell", str(c.index), *extra]) for c in cells]


def dry_run(sweep: SweepConfig, cells: list[Cell]) -> None:
    """Print each cell's stages, whether they would be skipped, resumed or run, and commands."""
    for cell in cells:
        cell_dir = sweep.out / "cells" / cell.name
        stages = cell_stages(sweep, cell, cell_dir)
        first = first_stage_to_run(cell_dir, stages)
        first = len(stages) if first is None else first
        skipped = skipped_backfill(cell_dir, stages)
        print(f"cell {cell.index}: {cell.name}")
        for i, stage in enumerate(stages):
            resume = stage.resumable and (stage.out / CHECKPOINT).is_file()
            state = "done" if i < first else "resume" if resume else "run"
            state = "skip" if stage.name in skipped else state
            print(f"  {stage.name:6s} {state:6s} {shlex.join(stage.argv(resume and i >= first))}")


def sweep_command(args: argparse.Namespace) -> int:
    """``mvq sweep``: check everything, then list, dry-run, collect or run."""
    if args.jobs < 1 or (args.threads is not None and args.threads < 1):
        raise SweepError("--jobs and --threads must be at least 1")
    sweep = load_sweep(args.file, args.out)
    cells = expand(sweep)
    if args.cell is not None and not 0 <= args.cell < len(cells):
        raise SweepError(
            f"--cell {args.cell} is out of range: the sweep has {len(cells)} cells "
            f"(0 to {len(cells) - 1})"
        )
    selected = cells if args.cell is None else [cells[args.cell]]
    for cell in selected:
        cell_dir = sweep.out / "cells" / cell.name
        check_cell_dir(cell_dir, cell_stages(sweep, cell, cell_dir))
    if args.list:
        print("\n".join(list_commands(args.file, args.out, cells)))
        return 0
    if args.dry_run:
        dry_run(sweep, selected)
        return 0
    if args.collect:
        rows = collect(sweep, cells)
        print(f"collected {len(rows)} of {len(cells)} cells into {sweep.out / 'results.md'}")
        return 0
    threads = args.threads or default_threads()
    outcomes = run_sweep(sweep, cells, selected, args.jobs, threads)
    return report(sweep, outcomes)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``mvq sweep``."""
    p.add_argument("file", help="the sweep file (YAML), see `mvq.sweep`'s docstring or README")
    p.add_argument(
        "--out", help="output folder (default: the file's `out`, else runs/sweeps/<stem>)"
    )
    p.add_argument("--jobs", type=int, default=1, help="cells run at once (threads split)")
    p.add_argument("--threads", type=int, help="threads for all jobs (default: the CPUs available)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--list", action="store_true", help="print one command per cell and exit")
    mode.add_argument("--collect", action="store_true", help="only rebuild the results tables")
    mode.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    p.add_argument("--cell", type=int, help="run only cell I (a scheduler's array task)")
