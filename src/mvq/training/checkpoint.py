"""Run directories and training checkpoints (``run_dir/checkpoints/``).

``last.pt`` is the newest checkpoint (what ``--resume`` continues), ``best.pt`` the one with the
lowest validation loss, and with ``keep_last`` K > 1 the K newest are also kept as
``step_<N>.pt`` (``last.pt`` is a hard link to the newest). An unreadable ``last.pt`` is resumed
from the newest intact ``step_<N>.pt`` (``load_resumable``). A checkpoint is a plain dict of
tensors, numbers, strings, lists and dicts written by ``torch.save`` and read back with
``torch.load(weights_only=True)``: loading one made by someone else cannot run code. The model
alone is saved separately by ``save_pretrained`` (config.json + safetensors). Layout, version
``CHECKPOINT_VERSION``::

    {"format_version", "model" (state_dict), "ema" (state_dict or None),
     "optimizers": {"model": state_dict} (a GAN adds "discriminator"),
     "scaler" (GradScaler state_dict or None), "step", "epoch",
     "sampler_state": {"epoch", "batch" (of that epoch done), "size", "batch_size" (per
                       rank), "seed", "world_size"},
     "rng": [per rank: ``rng_to_tensors`` state or None],
     "config" (asdict(TrainConfig)), "model_class", "model_config" (asdict or None),
     "best_val_loss", "last_val_loss"}

The learning rate is a pure function of the step (``schedule.lr_at``): no scheduler state.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mvq.core.errors import MVQError
from mvq.core.pretrained import CheckpointError, atomic_write_file, state_mismatch

CHECKPOINT_VERSION = 2
STEP_FILE = re.compile(r"step_(\d+)\.pt")


class RunDirError(MVQError, RuntimeError):
    """The run directory cannot be used: unwritable, or it already holds another run."""


def checkpoint_path(run_dir: str | os.PathLike) -> Path:
    """Where a run's checkpoint lives."""
    return Path(run_dir) / "checkpoints" / "last.pt"


def prepare_run_dir(run_dir: Path, resume: bool, announce: bool = True) -> bool:
    """Create ``run_dir``, prove it is writable and check it against ``resume``.

    Returns whether there is a checkpoint to continue. ``resume`` without one starts the run
    (saying so when ``announce``): a requeued job passes the same ``--resume`` command whether
    or not its first attempt got as far as a checkpoint.
    """
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
    if not resume and ckpt.exists():
        raise RunDirError(
            f"{run_dir} already holds a run ({ckpt} exists); pass --resume or choose a new --out"
        )
    if resume and not ckpt.is_file():
        if announce:
            print(f"--resume: no checkpoint at {ckpt} yet; starting the run", file=sys.stderr)
        return False
    return resume


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` to ``path`` atomically: a crash leaves the previous ``path`` intact, a
    full disk is a one-line ``DiskFullError``."""
    atomic_write_file(path, lambda f: torch.save(state, f), size=tensor_bytes(state))


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in ``obj`` (nested dicts, lists, tuples): a lower bound of the size
    of its checkpoint."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def write_checkpoint(state: dict[str, Any], ckpt_dir: Path, keep_last: int) -> Path:
    """Write ``state`` as ``last.pt`` (and ``step_<N>.pt`` when ``keep_last`` > 1), atomically;
    delete step files beyond the ``keep_last`` newest. Returns the file written."""
    last = ckpt_dir / "last.pt"
    if keep_last == 1:
        save_checkpoint(state, last)
        return last
    path = ckpt_dir / f"step_{state['step']:08d}.pt"
    save_checkpoint(state, path)
    link_checkpoint(path, last)
    steps = sorted((p for p in ckpt_dir.iterdir() if STEP_FILE.fullmatch(p.name)), reverse=True)
    for old in steps[keep_last:]:
        old.unlink(missing_ok=True)
    return path


def link_checkpoint(src: Path, dst: Path) -> None:
    """Make ``dst`` the same file as ``src`` (a hard link, else a copy), atomically."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # no hard links on this file system
        with open(src, "rb") as f:
            atomic_write_file(dst, lambda out: shutil.copyfileobj(f, out), src.stat().st_size)
        return
    os.replace(tmp, dst)


def load_resumable(run_dir: Path, announce: bool = True) -> tuple[Path, dict[str, Any]]:
    """The checkpoint ``--resume`` continues and its path: ``last.pt``, else (unreadable: a node
    died mid-copy) the newest intact ``step_<N>.pt``, saying which when ``announce``.

    Raises:
        CheckpointError: no intact checkpoint to continue; when ``best.pt`` is intact the
            message gives its step and how to continue from it.
    """
    last = checkpoint_path(run_dir)
    try:
        return last, load_checkpoint(last)
    except CheckpointError as err:
        broken = err
    steps = sorted((p for p in last.parent.iterdir() if STEP_FILE.fullmatch(p.name)), reverse=True)
    for path in steps:
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError:
            continue
        if announce:
            print(
                f"--resume: {last} is unreadable; resuming from {path} (step {ckpt['step']}), "
                "the newest intact checkpoint",
                file=sys.stderr,
            )
        return path, ckpt
    best = last.parent / "best.pt"
    try:
        step = load_checkpoint(best)["step"] if best.is_file() else None
    except CheckpointError:
        step = None
    if step is not None:
        raise CheckpointError(
            f"{broken}; of the other checkpoints only {best} (step {step}) is intact: to continue "
            f"from step {step}, copy it over the broken one (cp {best} {last}) and resume again"
        ) from broken
    raise broken


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a training checkpoint with ``weights_only=True`` (no code runs); a broken, foreign
    or old-format file is a one-line ``CheckpointError``."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a broken file
        reason = " ".join(str(err).split())[:300]
        raise CheckpointError(f"checkpoint {path} is corrupted or unreadable ({reason})") from err
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
    old_world = ckpt["sampler_state"].get("world_size")
    if old_world != order_key["world_size"]:
        raise CheckpointError(
            f"{where} it was written by {old_world} processes, this run has "
            f"{order_key['world_size']}; resume with the same number of processes (torchrun "
            "--nnodes x --nproc_per_node), or choose a new --out"
        )
    for name, value in order_key.items():
        old = ckpt["sampler_state"].get(name)
        if old != value:
            raise CheckpointError(
                f"{where} the data order differs ({name} was {old}, now {value}); resume with the "
                "same seed, batch size, data and number of processes, or choose a new --out"
            )
