"""The training loop shared by tokenizers and priors.

A trainable model is an ``nn.Module`` with ``loss(batch) -> (loss, logs)``: a scalar loss and
detached scalar logs ("rec", "usage", "nll", ...). ``train`` runs Adam on it, logs, validates,
checkpoints, and resumes exactly; launched by torchrun it trains with DistributedDataParallel.

Exact resume: the data order of an epoch depends only on (seed, epoch) (``EpochBatchSampler``),
the checkpoint holds every rank's RNG state, and validation and image callbacks run inside
``preserved_rng`` so they never move the training RNG streams.

BatchNorm under DDP: layers are not converted to SyncBatchNorm (it cannot run on CPU/gloo).
Each rank normalizes with the statistics of its own share of the batch, and DDP broadcasts rank
0's buffers (running statistics) at every forward, so weights and buffers stay identical across
ranks. Call ``nn.SyncBatchNorm.convert_sync_batchnorm(model)`` before ``train`` to normalize over
the global batch on GPUs instead.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mvq.pretrained import CheckpointError
from mvq.training.batch import autocast, count_items, to_device
from mvq.training.checkpoint import (
    CHECKPOINT_VERSION,
    check_resumable,
    load_checkpoint,
    model_config_dict,
    prepare_run_dir,
    save_checkpoint,
)
from mvq.training.config import TrainConfig, TrainResult
from mvq.training.distributed import (
    DistContext,
    all_gather,
    any_rank,
    barrier,
    close_distributed,
    init_distributed,
    launched_world_size,
)
from mvq.training.interrupt import StopRequest
from mvq.training.logger import LogWindow, RunLogger, Throughput
from mvq.training.rng import capture_rng, preserved_rng, restore_rng, seed_everything
from mvq.training.sampler import EpochBatchSampler, epoch_seed

Callback = Callable[[nn.Module, int, Path, Any], None]
"""``fn(model, step, run_dir, writer)``: called on rank 0 with the unwrapped model in eval mode
under ``torch.no_grad()``; ``writer`` is the run's TensorBoard ``SummaryWriter``."""


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/Inf; the run stopped before applying that step."""


class _LossModule(nn.Module):
    """Routes ``model.loss(batch)`` through ``forward`` so DDP can hook it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.model.loss(batch)


@dataclass
class _Run:
    """State shared by the loop's helpers; step/epoch/batch are what a checkpoint resumes."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    cfg: TrainConfig
    ctx: DistContext
    run_dir: Path
    ckpt_path: Path
    sampler: EpochBatchSampler
    val_loader: DataLoader | None
    callbacks: tuple[Callback, ...]
    step_fn: nn.Module | None = None  # the model's loss, DDP-wrapped in a distributed run
    logger: RunLogger | None = None
    step: int = 0
    epoch: int = 0
    batch: int = 0  # batches of ``epoch`` already trained on
    best_val: float | None = None
    last_val: float | None = None
    ckpt_step: int | None = None  # step of the last.pt on disk
    val_step: int = -1
    sample_step: int = -1
    train_logs: dict[str, float] = field(default_factory=dict)
    in_step: bool = False  # between a forward's start and the step's end: state not a step
    rng_after_step: dict[str, Any] | None = None  # RNG when the last step completed
    meter: Throughput = field(default_factory=Throughput)


def train(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset | None,
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    save_model: Callable[[nn.Module, Path], None] | None = None,
) -> TrainResult:
    """Train ``model`` with Adam until ``cfg.max_steps`` (or ``cfg.epochs``).

    Writes ``run_dir/metrics.csv``, TensorBoard events in ``run_dir/tb``, the checkpoint
    ``run_dir/checkpoints/last.pt`` and, at the end, ``save_model(model, run_dir / "model")``.

    Args:
        model: module with ``loss(batch) -> (loss, logs)``; trained in place.
        train_set: map-style dataset; its batches reach ``model.loss`` unchanged, on the device.
        val_set: dataset for the validation loss, or None.
        cfg: the training config.
        run_dir: directory of this run.
        resume: continue exactly from ``run_dir/checkpoints/last.pt``.
        callbacks: ``fn(model, step, run_dir, writer)`` every ``cfg.sample_every`` steps and at
            the end (rank 0).
        save_model: saves the trained, unwrapped model at the end (e.g. ``save_pretrained``).

    Raises:
        RunDirError: ``run_dir`` is unwritable, or holds a checkpoint and ``resume`` is False.
        CheckpointError: ``resume`` without a checkpoint, or with one of another model or order.
        TrainingDiverged: the loss or gradient became NaN/Inf; the last checkpoint is kept.
    """
    start = time.perf_counter()
    _check_inputs(model, train_set, cfg)
    run_dir = Path(run_dir)
    ckpt_path = prepare_run_dir(run_dir, resume)
    ctx = init_distributed(cfg.device)
    try:
        model.to(ctx.device).train()
        params = [p for p in model.parameters() if p.requires_grad]
        r = _Run(
            model=model,
            optimizer=torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas),
            cfg=cfg,
            ctx=ctx,
            run_dir=run_dir,
            ckpt_path=ckpt_path,
            sampler=EpochBatchSampler(
                len(train_set),
                cfg.batch_size // ctx.world_size,
                seed=cfg.seed,
                rank=ctx.rank,
                world_size=ctx.world_size,
            ),
            val_loader=_val_loader(val_set, cfg, ctx),
            callbacks=tuple(callbacks),
        )
        _start(r, resume)
        try:
            _fit(r, DataLoader(train_set, batch_sampler=r.sampler, **_loader_args(cfg, ctx)))
            _finish(r, save_model)
        finally:
            r.logger.close()
        return TrainResult(
            steps=r.step,
            train_logs=r.train_logs,
            best_val_loss=r.best_val,
            last_val_loss=r.last_val,
            wall_time=time.perf_counter() - start,
            items_per_second=r.meter.rate,
            run_dir=run_dir,
        )
    finally:
        close_distributed(ctx)


def _check_inputs(model: nn.Module, train_set: Dataset, cfg: TrainConfig) -> None:
    """Fail on a model, dataset or config that cannot train, before touching the disk."""
    if not callable(getattr(model, "loss", None)):
        raise TypeError(f"{type(model).__name__} has no loss(batch) -> (loss, logs) method")
    if cfg.max_steps is None and cfg.epochs is None:
        raise ValueError("TrainConfig needs max_steps or epochs to know when to stop")
    world = launched_world_size()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} does not split over {world} processes")
    if len(train_set) < cfg.batch_size:
        raise ValueError(
            f"train set has {len(train_set)} items, fewer than one batch ({cfg.batch_size})"
        )


def _start(r: _Run, resume: bool) -> None:
    """Load the checkpoint, wrap in DDP, open the logger, then seed or restore the RNG streams."""
    cfg, ctx = r.cfg, r.ctx
    rng = _load_progress(r) if resume else None
    r.step_fn = _LossModule(r.model)
    if ctx.enabled:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        r.step_fn = DistributedDataParallel(
            r.step_fn, device_ids=ids, find_unused_parameters=cfg.find_unused_parameters
        )
    r.logger = RunLogger(r.run_dir, r.step, resume, ctx.is_main)
    if not resume:
        seed_everything(cfg.seed * ctx.world_size + ctx.rank)
    elif rng is not None:
        restore_rng(rng)
    else:  # a checkpoint written on Ctrl-C under DDP only knows rank 0's RNG
        print(f"rank {ctx.rank}: no RNG state in the checkpoint; reseeding", file=sys.stderr)
        seed_everything((cfg.seed * ctx.world_size + ctx.rank) * 1_000_003 + r.step)


def _loader_args(cfg: TrainConfig, ctx: DistContext) -> dict[str, Any]:
    """DataLoader arguments shared by the train and val loaders."""
    # An own generator: iterating a DataLoader otherwise draws its worker seed from the global
    # RNG, which a resumed run (one iterator fewer) would replay differently.
    return {
        "num_workers": cfg.num_workers,
        "pin_memory": ctx.device.type == "cuda",
        "generator": torch.Generator().manual_seed(cfg.seed),
    }


def _val_loader(val_set: Dataset | None, cfg: TrainConfig, ctx: DistContext) -> DataLoader | None:
    """Validation batches in dataset order, split over ranks without padding."""
    if val_set is None or len(val_set) == 0:
        return None
    sampler = EpochBatchSampler(
        len(val_set),
        cfg.batch_size // ctx.world_size,
        rank=ctx.rank,
        world_size=ctx.world_size,
        shuffle=False,
        drop_last=False,
    )
    return DataLoader(val_set, batch_sampler=sampler, **_loader_args(cfg, ctx))


def _load_progress(r: _Run) -> dict[str, Any] | None:
    """Load model, optimizer and position from last.pt; return this rank's RNG state."""
    ckpt = load_checkpoint(r.ckpt_path)
    check_resumable(ckpt, r.ckpt_path, r.model, r.sampler.order_key())
    r.model.load_state_dict(ckpt["model"])
    try:
        r.optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError) as err:
        msg = f"cannot resume from {r.ckpt_path}: optimizer state does not fit ({err})"
        raise CheckpointError(msg) from None
    r.step, r.epoch, r.batch = ckpt["step"], ckpt["epoch"], ckpt["sampler_state"]["batch"]
    r.best_val, r.last_val = ckpt["best_val_loss"], ckpt["last_val_loss"]
    r.ckpt_step = r.step
    return ckpt["rng"][r.ctx.rank]


def _fit(r: _Run, loader: DataLoader) -> None:
    """The loop: one Adam step per batch until the last step; then flush the log window."""
    total = r.cfg.total_steps(r.sampler.batches_per_epoch)
    window = LogWindow()
    bar = tqdm(total=total, initial=r.step, desc="train", disable=not r.ctx.is_main)
    try:
        with StopRequest() as ctrl_c:
            while r.step < total:
                r.sampler.set_epoch(r.epoch, start_batch=r.batch)
                loader.generator.manual_seed((epoch_seed(r.cfg.seed, r.epoch) << 16) + r.ctx.rank)
                tic = time.perf_counter()
                for batch in loader:
                    batch = to_device(batch, r.ctx.device)
                    r.in_step = True
                    logs, stop = _train_step(r, batch, ctrl_c)
                    r.step, r.batch = r.step + 1, r.batch + 1
                    if r.batch == r.sampler.batches_per_epoch:
                        r.epoch, r.batch = r.epoch + 1, 0
                    r.in_step, r.rng_after_step = False, capture_rng()
                    r.meter.update(count_items(batch) * r.ctx.world_size, time.perf_counter() - tic)
                    window.add(logs)
                    bar.update()
                    _periodic(r, window, bar, epoch_end=r.batch == 0)
                    if stop:  # Ctrl-C, seen by every rank at this same step
                        if r.ckpt_step != r.step:
                            _checkpoint(r)
                        raise KeyboardInterrupt
                    if r.step >= total:
                        break
                    tic = time.perf_counter()
        _report_train(r, window, bar)
    except KeyboardInterrupt:
        _save_on_interrupt(r)
        raise
    finally:
        bar.close()


def _train_step(r: _Run, batch: Any, ctrl_c: StopRequest) -> tuple[dict[str, torch.Tensor], bool]:
    """Forward, backward, stop on NaN/Inf, clip, Adam update; return the logs and whether any
    rank asked to stop (Ctrl-C)."""
    with autocast(r.cfg.precision, r.ctx.device):
        loss, logs = r.step_fn(batch)
    r.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in r.optimizer.param_groups for p in group["params"]]
    # Clipping at inf scales by exactly 1.0: the norm comes for free, the grads stay bit-equal.
    norm = torch.nn.utils.clip_grad_norm_(params, r.cfg.grad_clip or math.inf)
    bad = ~(torch.isfinite(loss) & torch.isfinite(norm))
    stop = torch.tensor(ctrl_c.requested, device=bad.device)
    bad_anywhere, stop_anywhere = any_rank(torch.stack([bad, stop]), r.ctx)
    if bad_anywhere:
        raise TrainingDiverged(_diverged_message(r, loss, norm))
    r.optimizer.step()
    return {"loss": loss.detach(), **logs, "grad_norm": norm}, stop_anywhere


def _diverged_message(r: _Run, loss: torch.Tensor, norm: torch.Tensor) -> str:
    if not torch.isfinite(loss):
        what = f"loss is {loss.item()}"
    elif not torch.isfinite(norm):
        what = f"gradient norm is {norm.item()}"
    else:
        what = "another rank's loss or gradient is not finite"
    kept = (
        f"last good checkpoint: {r.ckpt_path} (step {r.ckpt_step})"
        if r.ckpt_step is not None
        else "no checkpoint was written yet"
    )
    return f"training diverged at step {r.step + 1} ({what}); stopped without saving it; {kept}"


def _periodic(r: _Run, window: LogWindow, bar: tqdm, epoch_end: bool) -> None:
    """Logs, validation, callbacks and checkpoint due after step ``r.step``."""
    cfg = r.cfg
    if r.step % cfg.log_every == 0:
        _report_train(r, window, bar)
    if epoch_end if cfg.val_every is None else r.step % cfg.val_every == 0:
        _validate(r)
    if r.step % cfg.sample_every == 0:
        _sample(r)
    if r.step % cfg.ckpt_every == 0:
        _checkpoint(r)


def _finish(r: _Run, save_model: Callable[[nn.Module, Path], None] | None) -> None:
    """End of run: validation, callbacks and checkpoint unless just done, then the model save."""
    if r.val_step != r.step:
        _validate(r)
    if r.sample_step != r.step:
        _sample(r)
    if r.ckpt_step != r.step:
        _checkpoint(r)
    if save_model is not None and r.ctx.is_main:
        save_model(r.model, r.run_dir / "model")
    barrier(r.ctx)  # every rank returns once the model is saved


def _report_train(r: _Run, window: LogWindow, bar: tqdm) -> None:
    """Log the window's means (averaged over ranks) to CSV, TensorBoard and the progress bar."""
    values = window.pop(r.ctx)
    if values:
        r.train_logs = values
        r.logger.log("train", r.step, values)
        bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)


def _validate(r: _Run) -> None:
    """Mean of ``model.loss`` and its logs over the val set, all ranks together; logged."""
    r.val_step = r.step
    if r.val_loader is None:
        return
    sums: dict[str, float] = {}
    count = 0
    with preserved_rng(), torch.no_grad():
        seed_everything(r.cfg.seed)  # the same noise at every validation: comparable numbers
        r.model.eval()
        for i, batch in enumerate(r.val_loader):
            if r.cfg.val_batches is not None and i >= r.cfg.val_batches:
                break
            batch = to_device(batch, r.ctx.device)
            with autocast(r.cfg.precision, r.ctx.device):
                loss, logs = r.model.loss(batch)
            n = count_items(batch)
            for name, value in {"loss": loss, **logs}.items():
                sums[name] = sums.get(name, 0.0) + float(value) * n
            count += n
        r.model.train()
    parts = all_gather((sums, count), r.ctx)
    total = sum(n for _, n in parts)
    names = dict.fromkeys(name for s, _ in parts for name in s)  # a rank may have had no batch
    values = {name: sum(s.get(name, 0.0) for s, _ in parts) / total for name in names}
    r.last_val = values["loss"]
    r.best_val = r.last_val if r.best_val is None else min(r.best_val, r.last_val)
    r.logger.log("val", r.step, values)


def _sample(r: _Run) -> None:
    """Call the image callbacks on rank 0 (eval mode, no grad, training RNG untouched)."""
    r.sample_step = r.step
    if not r.callbacks or not r.ctx.is_main:
        return
    with preserved_rng(), torch.no_grad():
        r.model.eval()
        for fn in r.callbacks:
            fn(r.model, r.step, r.run_dir, r.logger.writer)
        r.model.train()
    r.logger.writer.flush()


def _checkpoint_state(r: _Run, rng: list[dict[str, Any] | None]) -> dict[str, Any]:
    return {
        "format_version": CHECKPOINT_VERSION,
        "model": r.model.state_dict(),
        "optimizer": r.optimizer.state_dict(),
        "step": r.step,
        "epoch": r.epoch,
        "sampler_state": {**r.sampler.order_key(), "epoch": r.epoch, "batch": r.batch},
        "rng": rng,
        "config": asdict(r.cfg),
        "model_class": type(r.model).__name__,
        "model_config": model_config_dict(r.model),
        "best_val_loss": r.best_val,
        "last_val_loss": r.last_val,
    }


def _checkpoint(r: _Run) -> None:
    """Write last.pt on rank 0 with every rank's RNG; the collectives around it are barriers."""
    rng = all_gather(capture_rng(), r.ctx)
    error: Exception | None = None
    if r.ctx.is_main:
        try:
            save_checkpoint(_checkpoint_state(r, rng), r.ckpt_path)
        except Exception as err:  # noqa: BLE001 - re-raised below, after telling the other ranks
            error = err
    if any_rank(torch.tensor([error is not None]), r.ctx)[0]:
        if error is not None:
            raise error
        raise RuntimeError(f"rank 0 failed to write {r.ckpt_path}; see its error")
    r.ckpt_step = r.step


def _save_on_interrupt(r: _Run) -> None:
    """After a hard interrupt, checkpoint the last completed step if the state still is one
    (rank 0, no collectives: the other ranks may be gone)."""
    if not r.ctx.is_main or r.rng_after_step is None or r.ckpt_step == r.step:
        return
    if r.in_step:
        print(f"interrupted inside step {r.step + 1}; kept {r.ckpt_path}", file=sys.stderr)
        return
    rng = [r.rng_after_step] + [None] * (r.ctx.world_size - 1)
    save_checkpoint(_checkpoint_state(r, rng), r.ckpt_path)
    print(f"interrupted: saved step {r.step} to {r.ckpt_path}", file=sys.stderr)
