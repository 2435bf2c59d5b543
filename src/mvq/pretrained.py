"""Save and load models as ``config.json`` + ``model.safetensors`` (diffusers-style).

A model that mixes in ``PretrainedMixin`` owns a dataclass config in ``self.config`` and is
built by ``cls(config)``. Writes are atomic: files go to a temporary directory that is renamed
into place, so an interrupted save never leaves a half-written model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1

M = TypeVar("M", bound="PretrainedMixin")


class CheckpointError(ValueError):
    """A saved model or checkpoint is missing, corrupted or belongs to another model."""


def config_from_dict(config_cls: type, values: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass ``config_cls`` from ``values``; unknown keys are a clear error."""
    from mvq.registry import closest_hint

    names = [f.name for f in dataclasses.fields(config_cls)]
    for key in values:
        if key not in names:
            raise CheckpointError(
                f"{where}: unknown key '{key}' for {config_cls.__name__}{closest_hint(key, names)}"
            )
    kwargs = {}
    for f in dataclasses.fields(config_cls):
        if f.name in values:
            v = values[f.name]
            kwargs[f.name] = tuple(v) if isinstance(v, list) else v
    return config_cls(**kwargs)


def atomic_write_dir(target: Path, write: Any) -> None:
    """Call ``write(tmpdir)`` then move ``tmpdir`` onto ``target`` (replacing it)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        write(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class PretrainedMixin:
    """Adds ``save_pretrained``/``from_pretrained`` to an ``nn.Module`` with a dataclass config."""

    config_class: ClassVar[type]
    config: Any

    def save_pretrained(
        self, directory: str | os.PathLike, extra_files: dict[str, str] | None = None
    ) -> Path:
        """Write ``config.json``, ``model.safetensors`` (and ``extra_files``, name -> text) to
        ``directory`` atomically."""
        meta = {
            "class": type(self).__name__,
            "format_version": FORMAT_VERSION,
            "config": dataclasses.asdict(self.config),
        }
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}  # type: ignore[attr-defined]

        def write(tmp: Path) -> None:
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
            save_file(state, str(tmp / WEIGHTS_NAME))
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)

        atomic_write_dir(Path(directory), write)
        return Path(directory)

    @classmethod
    def from_pretrained(cls: type[M], directory: str | os.PathLike, **overrides: Any) -> M:
        """Rebuild the model saved in ``directory``, in eval mode (call ``.train()`` to train);
        a wrong or broken save is a clear error."""
        meta = read_pretrained_meta(directory)
        if meta["class"] != cls.__name__:
            raise CheckpointError(
                f"{directory} holds a {meta['class']}, not a {cls.__name__}: "
                f"load it with {meta['class']}.from_pretrained or mvq.load_pretrained"
            )
        config = config_from_dict(cls.config_class, {**meta["config"], **overrides}, str(directory))
        model = cls(config)  # type: ignore[call-arg]
        try:
            state = load_file(str(Path(directory) / WEIGHTS_NAME))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(
                f"{directory}/{WEIGHTS_NAME} is unreadable ({err}); re-save it"
            ) from err
        problem = state_mismatch(state, model.state_dict())  # type: ignore[attr-defined]
        if problem:
            raise CheckpointError(
                f"{directory}: weights do not match the config ({problem}); "
                "config.json and model.safetensors come from different models"
            )
        model.load_state_dict(state)  # type: ignore[attr-defined]
        return model.eval()  # type: ignore[attr-defined]


def state_mismatch(saved: dict[str, torch.Tensor], current: dict[str, torch.Tensor]) -> str:
    """Describe how two state dicts differ (missing/unexpected keys, shapes); "" if they fit."""
    missing = [k for k in current if k not in saved]
    unexpected = [k for k in saved if k not in current]
    shapes = [
        f"{k}: {tuple(saved[k].shape)} vs {tuple(v.shape)}"
        for k, v in current.items()
        if k in saved and saved[k].shape != v.shape
    ]
    parts = [
        f"{label} {items[:3]}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shapes", shapes))
        if items
    ]
    return "; ".join(parts)


def read_pretrained_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``config.json`` of a saved model."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a saved model: {CONFIG_NAME} is missing")
    try:
        meta = json.loads(path.read_text())
        meta["class"], meta["config"]  # noqa: B018
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} is corrupted ({err}); re-save the model") from err
    return meta


def load_state_safely(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load`` a training checkpoint, turning a broken file into a ``CheckpointError``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a broken file
        raise CheckpointError(f"checkpoint {path} is corrupted or unreadable ({err})") from err
