"""Run directories and training checkpoints (``run_dir/checkpoints/last.pt``).

A checkpoint is a plain dict written by ``torch.save``; the model alone is saved separately by
``save_pretrained`` (config.json + safetensors). Layout, version ``CHECKPOINT_VERSION``::

    {"format_version", "model" (state_dict), "optimizer" (state_dict), "step", "epoch",
     "sampler_state": {"epoch", "batch" (of that epoch done), "size", "batch_size" (per
                       rank), "seed", "world_size"},
     "rng": [per rank: {"python", "numpy", "torch", "cuda"} or None],
     "config" (asdict(TrainConfig)), "model_class", "model_config" (asdict or None),
     "best_val_loss", "last_val_loss"}
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mvq.pretrained import CheckpointError, load_state_safely, state_mismatch

CHECKPOINT_VERSION = 1


class RunDirError(RuntimeError):
    """The run directory cannot be used: unwritable, or it already holds another run."""


def checkpoint_path(run_dir: str | os.PathLike) -> Path:
    """Where a run's checkpoint lives."""
    return Path(run_dir) / "checkpoints" / "last.pt"


def prepare_run_dir(run_dir: Path, resume: bool) -> Path:
    """Create ``run_dir``, prove it is writable and check it against ``resume``; return last.pt."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write_probe.{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise RunDirError(
            f"run directory {run_dir} is not writable: {err.strerror or err}"
        ) from None
    ckpt = checkpoint_path(run_dir)
    if resume and not ckpt.is_file():
        raise CheckpointError(f"cannot resume: no checkpoint at {ckpt}")
    if not resume and ckpt.exists():
        raise RunDirError(
            f"{run_dir} already holds a run ({ckpt} exists); "
            "pass --resume or choose a new --run-dir"
        )
    return ckpt


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``.

    A failure or crash at any point leaves the previous ``path`` intact.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if os.name == "posix":  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a training checkpoint; a broken or foreign file is a ``CheckpointError``."""
    ckpt = load_state_safely(path)
    if not isinstance(ckpt, dict) or ckpt.get("format_version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} is not an mvq training checkpoint (version {CHECKPOINT_VERSION})"
        )
    return ckpt


def model_config_dict(model: nn.Module) -> dict[str, Any] | None:
    """``asdict(model.config)`` when the model owns a dataclass config."""
    config = getattr(model, "config", None)
    is_instance = dataclasses.is_dataclass(config) and not isinstance(config, type)
    return dataclasses.asdict(config) if is_instance else None


def check_resumable(
    ckpt: dict[str, Any], path: Path, model: nn.Module, order_key: dict[str, int]
) -> None:
    """Raise a one-line ``CheckpointError`` unless ``ckpt`` continues this model and data order.

    ``order_key`` is ``EpochBatchSampler.order_key()`` of the new run: size, batch size, seed
    and world size must match for the data order (and per-rank RNG) to continue exactly.
    """
    where = f"cannot resume from {path}:"
    if ckpt["model_class"] != type(model).__name__:
        raise CheckpointError(
            f"{where} it holds a {ckpt['model_class']}, not a {type(model).__name__}"
        )
    old_cfg, new_cfg = ckpt["model_config"] or {}, model_config_dict(model) or {}
    changed = sorted(k for k in old_cfg.keys() | new_cfg.keys() if old_cfg.get(k) != new_cfg.get(k))
    if changed:
        k = changed[0]
        raise CheckpointError(
            f"{where} model config differs ({k}: {old_cfg.get(k)} -> {new_cfg.get(k)})"
        )
    mismatch = state_mismatch(ckpt["model"], model.state_dict())
    if mismatch:
        raise CheckpointError(f"{where} weights do not fit this model ({mismatch})")
    for name, value in order_key.items():
        old = ckpt["sampler_state"].get(name)
        if old != value:
            raise CheckpointError(
                f"{where} the data order differs ({name} was {old}, now {value}); resume with the "
                "same seed, batch size, data and number of processes, or choose a new --run-dir"
            )
