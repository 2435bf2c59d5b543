"""Run configs: the YAML files in ``configs/`` and the CLI overrides applied to them.

A run config has four sections, each overriding one owner's typed config:

    model: mvqvae_fmnist_s4_k16        # a registered variant name
    model_config: {num_hypotheses: 256} # fields of that model's config dataclass
    data: {name: fashion_mnist, root: null, image_size: null, download: false, channels: null}
    train: {epochs: 350, batch_size: 32} # fields of mvq.training.TrainConfig

Every unknown key is a ``ConfigError`` naming the closest valid key, and every value of the
wrong type (``train.batch_size=abc``, ``train.betas=0.9``) one naming the type its field wants.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mvq.core.errors import ConfigError
from mvq.core.registry import Entry, Registry, closest_hint

__all__ = ["ConfigError", "RunConfig", "apply_override", "check_types", "load_run_config"]

SECTIONS = ("model", "model_config", "data", "train")
DATA_KEYS = ("name", "root", "image_size", "download", "channels")
# YAML 1.1 reads 1e-4 (no dot) as text; --set reads it as the number everyone means.
EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


@dataclass
class RunConfig:
    """A parsed run config; ``train`` and ``model_config`` are plain dicts of overrides."""

    model: str
    model_config: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_keys(values: dict[str, Any], valid: list[str] | tuple[str, ...], where: str) -> None:
    """Raise ``ConfigError`` for the first key of ``values`` not in ``valid``."""
    for key in values:
        if key not in valid:
            raise ConfigError(f"{where}: unknown key '{key}'{closest_hint(key, list(valid))}")


def check_model_config(cfg: RunConfig, registry: Registry, where: str = "") -> Entry:
    """What a builder refuses before it builds ``cfg.model``: a name ``registry`` lacks (naming
    the closest one), a ``model_config`` key its config class lacks, or a value of the wrong
    type; ``where`` prefixes the messages. Returns the name's registry entry."""
    entry = registry.entry(cfg.model)
    fields = [f.name for f in dataclasses.fields(entry.config_class)]
    check_keys(cfg.model_config, fields, f"{where}model_config of {cfg.model}")
    check_types(entry.config_class, cfg.model_config, f"{where}model_config")
    return entry


def load_run_config(path: str | Path) -> RunConfig:
    """Read and check a YAML run config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist: see configs/ for the provided ones")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(raw, dict) or "model" not in raw:
        raise ConfigError(f"{path} must be a mapping with at least a 'model' key")
    check_keys(raw, SECTIONS, str(path))
    for section in ("model_config", "data", "train"):
        if not isinstance(raw.get(section, {}) or {}, dict):
            raise ConfigError(f"{path}: section '{section}' must be a mapping")
    cfg = RunConfig(
        raw["model"], raw.get("model_config") or {}, raw.get("data") or {}, raw.get("train") or {}
    )
    check_keys(cfg.data, DATA_KEYS, f"{path}: data")
    return cfg


def parse_value(text: str) -> Any:
    """YAML scalar parsing for ``--set key=value`` (numbers, booleans, null, lists); ``1e-4``
    is a number."""
    if EXPONENT_FLOAT.fullmatch(text.strip()):
        return float(text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"'{text}' is not a YAML value: {str(err).splitlines()[0]}") from None


PLURALS = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def _describe(tp: Any) -> str:
    """The words for type annotation ``tp`` in an error message."""
    names = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        type(None): "null",
        dict: "a mapping",
    }
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in names:
        return names[tp]
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple and args and args[-1] is not Ellipsis:
        kind = PLURALS.get(args[0], "values") if len(set(args)) == 1 else "values"
        return f"a list of {len(args)} {kind}"
    if origin in (tuple, list) and args:
        return f"a list of {PLURALS.get(args[0], 'values')}"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def fits(tp: Any, value: Any) -> bool:
    """Whether ``value``, as YAML or JSON gives it, fits type annotation ``tp``.

    Lists stand for tuples; an int fits a float; a bool is neither an int nor a float.
    Annotations other than these plain forms accept any value.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(fits(a, value) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool or tp is str:
        return isinstance(value, tp)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(fits, args, value))
        return not args or all(fits(args[0], v) for v in value)
    if origin is typing.Literal:
        return value in args
    return True


def check_types(config_class: type, values: dict[str, Any], where: str) -> None:
    """Raise a one-line ``ConfigError`` for the first value of ``values`` whose type does not
    fit its field of dataclass ``config_class`` (unknown keys are ``check_keys``' business)."""
    hints = typing.get_type_hints(config_class)
    for key, value in values.items():
        if key in hints and not fits(hints[key], value):
            hint = ""
            if isinstance(value, str) and EXPONENT_FLOAT.fullmatch(value.strip()):
                hint = " (YAML reads 1e-4 as text: write 1.0e-4)"
            raise ConfigError(f"{where}.{key} must be {_describe(hints[key])}, got {value!r}{hint}")


def apply_override(cfg: RunConfig, assignment: str) -> None:
    """Apply ``section.key=value`` (e.g. ``model_config.num_hypotheses=64``) to ``cfg``."""
    if "=" not in assignment or "." not in assignment.split("=", 1)[0]:
        raise ConfigError(
            f"override '{assignment}' must look like section.key=value, e.g. train.lr=1e-4"
        )
    dotted, value = assignment.split("=", 1)
    section, key = dotted.split(".", 1)
    if section not in ("model_config", "data", "train"):
        raise ConfigError(
            f"override '{assignment}': unknown section '{section}'"
            f"{closest_hint(section, ['model_config', 'data', 'train'])}"
        )
    try:
        parsed = parse_value(value)
    except ConfigError as err:
        raise ConfigError(f"override '{assignment}': {err}") from None
    if section == "data":
        check_keys({key: None}, DATA_KEYS, "data")
    if section == "train":  # the model's fields are known once the model is: build_* checks
        from mvq.training.config import TrainConfig

        check_keys({key: None}, [f.name for f in dataclasses.fields(TrainConfig)], "train")
        check_types(TrainConfig, {key: parsed}, "train")
    getattr(cfg, section)[key] = parsed


# model_config written into every config of an architecture: MVQ's J (256 for MVQVAE as in the
# authors' configs and for Masked FSQ, 2048 for MVQGAN as in the paper's §4.3) and the VQGAN
# objective, spelled out (taming's disc_start 10,000 batches and disc_weight 0.8; Table 2 gives
# neither).
GAN_OBJECTIVE = {"perceptual": "lpips", "disc_start": 10_000, "disc_weight": 0.8}
PAPER_MODEL_CONFIG: dict[str, dict[str, Any]] = {
    "mvqvae": {"num_hypotheses": 256},
    "mfsqvae": {"num_hypotheses": 256},
    "vqgan": GAN_OBJECTIVE,
    "mvqgan": {"num_hypotheses": 2048, **GAN_OBJECTIVE},
    "fsqgan": GAN_OBJECTIVE,
}


def paper_run_configs() -> dict[str, dict[str, Any]]:
    """The paper's settings: dataset x tokens {1,4,16}+1 x K {16,256} x {VQVAE2, MVQVAE, FSQVAE,
    VQGAN, MVQGAN, FSQGAN}.

    Table 2 training (Adam 5e-4, betas 0.5/0.9, batch 32, the data set's epochs in its Table 2
    row, ``mvq.data.DATASETS``; both optimizers of a GAN); ``PAPER_MODEL_CONFIG`` for J and the
    GAN objective.
    """
    from mvq.data import paper_data
    from mvq.tokenizers import ARCHITECTURES, VARIANTS

    arch_of = {cls: arch for arch, cls in ARCHITECTURES.items()}
    configs = {}
    for name, cls, tag, _, _ in sorted(VARIANTS, key=lambda row: row[0]):
        data_name, _, table2 = paper_data(tag)
        train = {"epochs": table2.epochs, "batch_size": 32, "lr": 5.0e-4, "betas": [0.5, 0.9]}
        configs[name] = {
            "model": name,
            "model_config": dict(PAPER_MODEL_CONFIG.get(arch_of[cls], {})),
            "data": {"name": data_name, "root": None},
            "train": train,
        }
    return configs


PRIOR_TRAIN = {"epochs": 100, "batch_size": 64, "lr": 3.0e-4, "betas": [0.9, 0.95]}


def prior_run_configs() -> dict[str, dict[str, Any]]:
    """One run config per registered prior; the token layout comes from the tokens.

    The papers give no prior optimiser: Adam 3e-4, betas (0.9, 0.95), batch 64 (GPT-style).
    """
    from mvq.priors import list_priors

    return {
        name: {"model": name, "model_config": {}, "train": dict(PRIOR_TRAIN)}
        for name in list_priors()
    }


def render_yaml(config: dict[str, Any]) -> str:
    """The YAML text of one run config, with a header saying how it was made."""
    header = (
        "# Generated by `mvq configs`; see mvq/training/runconfig.py for where each value comes"
        " from.\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False)


def write_paper_configs(directory: str | Path) -> list[Path]:
    """Write ``paper_run_configs`` as ``<name>.yaml`` and ``prior_run_configs`` as
    ``priors/<name>.yaml`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "priors").mkdir(exist_ok=True)
    paths = []
    for sub, configs in (("", paper_run_configs()), ("priors", prior_run_configs())):
        for name, config in configs.items():
            path = directory / sub / f"{name}.yaml"
            path.write_text(render_yaml(config))
            paths.append(path)
    return paths
