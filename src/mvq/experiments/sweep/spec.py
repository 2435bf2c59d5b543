"""A sweep file read and checked: its keys, the typed ``SweepConfig`` and ``load_sweep``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mvq.training.runconfig import (
    ConfigError,
    RunConfig,
    check_keys,
)

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
