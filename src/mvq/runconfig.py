"""Run configs: the YAML files in ``configs/`` and the CLI overrides applied to them.

A run config has four sections, each overriding one owner's typed config:

    model: mvqvae_fmnist_s4_k16        # a registered variant name
    model_config: {num_hypotheses: 256} # fields of that model's config dataclass
    data: {name: fashion_mnist, root: null, image_size: null, download: false, channels: null}
    train: {epochs: 350, batch_size: 32} # fields of mvq.training.TrainConfig

Every unknown key is a ``ConfigError`` naming the closest valid key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mvq.registry import closest_hint

SECTIONS = ("model", "model_config", "data", "train")
DATA_KEYS = ("name", "root", "image_size", "download", "channels")


class ConfigError(ValueError):
    """A run config (file or override) names something that does not exist."""


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
    """YAML scalar parsing for ``--set key=value`` (numbers, booleans, null, lists)."""
    return yaml.safe_load(text)


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
    if section == "data":
        check_keys({key: None}, DATA_KEYS, "data")
    getattr(cfg, section)[key] = parse_value(value)


# registry dataset tag -> (data set name, Table 2 epochs)
PAPER_DATA: dict[str, tuple[str, int]] = {
    "fmnist": ("fashion_mnist", 350),
    "cifar10": ("cifar10", 650),
    "celeba64": ("celeba64", 250),
    "imagenet64": ("imagenet64", 650),
}


# model_config written into every config of an architecture: MVQ's J (256 for MVQVAE as in the
# authors' configs, 2048 for MVQGAN as in the paper's §4.3) and the VQGAN objective, spelled out
# (taming's disc_start 10,000 batches and disc_weight 0.8; Table 2 gives neither).
GAN_OBJECTIVE = {"perceptual": "lpips", "disc_start": 10_000, "disc_weight": 0.8}
PAPER_MODEL_CONFIG: dict[str, dict[str, Any]] = {
    "mvqvae": {"num_hypotheses": 256},
    "vqgan": GAN_OBJECTIVE,
    "mvqgan": {"num_hypotheses": 2048, **GAN_OBJECTIVE},
    "fsqgan": GAN_OBJECTIVE,
}


def paper_run_configs() -> dict[str, dict[str, Any]]:
    """The paper's settings: dataset x tokens {1,4,16}+1 x K {16,256} x {VQVAE2, MVQVAE, FSQVAE,
    VQGAN, MVQGAN, FSQGAN}.

    Table 2 training (Adam 5e-4, betas 0.5/0.9, batch 32, its epochs; both optimizers of a GAN);
    ``PAPER_MODEL_CONFIG`` for J and the GAN objective.
    """
    from mvq.tokenizers import list_tokenizers

    configs = {}
    for name in list_tokenizers():
        arch, tag = name.split("_")[:2]
        data_name, epochs = PAPER_DATA[tag]
        configs[name] = {
            "model": name,
            "model_config": dict(PAPER_MODEL_CONFIG.get(arch, {})),
            "data": {"name": data_name, "root": None},
            "train": {"epochs": epochs, "batch_size": 32, "lr": 5.0e-4, "betas": [0.5, 0.9]},
        }
    return configs


PRIOR_TRAIN = {"epochs": 100, "batch_size": 64, "lr": 3.0e-4, "betas": [0.9, 0.95]}


def prior_run_configs() -> dict[str, dict[str, Any]]:
    """One run config per registered prior; the token layout comes from the tokens.

    The papers give no prior optimiser: Adam 3e-4, betas (0.9, 0.95), batch 64 (GPT-style).
    """
    from mvq.priors import list_priors

    return {name: {"model": name, "model_config": {}, "train": dict(PRIOR_TRAIN)}
            for name in list_priors()}  # fmt: skip


def render_yaml(config: dict[str, Any]) -> str:
    """The YAML text of one run config, with a header saying how it was made."""
    header = "# Generated by `mvq configs`; see mvq/runconfig.py for where each value comes from.\n"
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
