"""The training loop shared by tokenizers and priors.

A trainable model is an ``nn.Module`` with ``loss(batch) -> (loss, logs)``: a scalar loss and
detached scalar logs ("rec", "usage", "nll", ...). ``train`` runs Adam on it, logs, validates,
checkpoints, and resumes exactly; launched by torchrun it trains with DistributedDataParallel.
``Trainer`` holds one run's state; ``Trainer.fit`` is the loop, read top to bottom.

Exact resume: the data order of an epoch depends only on (seed, epoch) (``EpochBatchSampler``),
the checkpoint holds every rank's RNG state, the EMA weights and the fp16 scaler, the learning
rate is a pure function of the step, and validation and image callbacks run inside
``preserved_rng`` so they never move the training RNG streams.

Host syncs: a step queues its work and returns; the host waits for the device only at a
check, every ``log_every`` steps and before anything that reads the weights (validation,
callbacks, checkpoints, the end). A NaN/Inf loss or gradient norm is remembered on the device
and raises ``TrainingDiverged`` at the next check, before any checkpoint could hold it. The
model in memory may then hold the diverged update; the checkpoints on disk never do.

Stopping: Ctrl-C, SIGTERM or SIGUSR1 on any rank stops every rank after the same step (a
per-step vote, ``StopVote``), with a checkpoint of that step written by rank 0; the run then
raises ``KeyboardInterrupt`` or ``RunStopped`` (exit status 143 / 75, ``mvq.training.interrupt``).
A full disk while checkpointing is a one-line ``DiskFullError`` on every rank; the previous
checkpoint stays. ``--resume`` with an unreadable ``last.pt`` continues from the newest intact
``step_<N>.pt``.

BatchNorm under DDP: by default each rank normalizes with the statistics of its own share of
the batch, and DDP broadcasts rank 0's buffers (running statistics) at every forward, so
weights and buffers stay identical across ranks. ``TrainConfig.sync_batchnorm`` makes the
layers ``SyncBatchNorm`` (in place, same parameters) to normalize over the global batch on GPUs;
it cannot run on CPU processes (gloo) and is refused there.

Several optimizers (a GAN): a model that defines ``optimizer_groups() -> {name: params}`` gets
one Adam per group, stepped in that order once per batch, and is trained through
``loss(batch, step, name)`` (``step`` counts batches from 0); validation still calls
``loss(batch)``. Checkpoints store the optimizers by name. Such runs take fp32 or bf16, EMA and
DDP (with ``find_unused_parameters``: each group's pass leaves the other's parameters unused);
fp16, ``grad_accum`` > 1 and ``compile`` are refused.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mvq.core.errors import ConfigError, MVQError
from mvq.core.host_memory import keep_freed_memory
from mvq.core.pretrained import CheckpointError
from mvq.training.batch import count_items, split_batch, to_device
from mvq.training.checkpoint import (
    CHECKPOINT_VERSION,
    RunDirError,
    check_resumable,
    checkpoint_path,
    link_checkpoint,
    load_resumable,
    model_config_dict,
    prepare_run_dir,
    save_checkpoint,
    write_checkpoint,
)
from mvq.training.config import TrainConfig, TrainResult
from mvq.training.distributed import (
    DistContext,
    StopVote,
    all_gather,
    any_rank,
    barrier,
    close_distributed,
    init_distributed,
    launched_world_size,
    resolve_device,
)
from mvq.training.ema import make_ema, update_ema
from mvq.training.interrupt import StopRequest, ignore_stop_signals, stop_exception
from mvq.training.logger import LogWindow, RunLogger, Throughput
from mvq.training.precision import autocast, make_scaler, tf32_mode
from mvq.training.rng import (
    capture_rng,
    preserved_rng,
    restore_rng,
    rng_from_tensors,
    rng_to_tensors,
    seed_everything,
)
from mvq.training.sampler import EpochBatchSampler, epoch_seed
from mvq.training.schedule import lr_at, set_lr

Callback = Callable[[nn.Module, int, Path, Any], None]
"""``fn(model, step, run_dir, writer)``: called on rank 0 with the unwrapped model (the EMA
model when ``ema_decay`` is set) in eval mode under ``torch.no_grad()``; ``writer`` is the run's
TensorBoard ``SummaryWriter``."""


class TrainingDiverged(MVQError, RuntimeError):
    """The loss or gradient became NaN/Inf; the run stopped without checkpointing that state."""


class _LossModule(nn.Module):
    """Routes ``model.loss(batch, *args)`` through ``forward`` so DDP and ``torch.compile`` see
    it (``args``: the step and the optimizer's name, for a model with several optimizers)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any, *args: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.model.loss(batch, *args)


def optimizer_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """``model.optimizer_groups()`` when the model defines it (a GAN: generator, then
    discriminator), else one group "model" of every trainable parameter."""
    if callable(getattr(model, "optimizer_groups", None)):
        return model.optimizer_groups()
    return {"model": [p for p in model.parameters() if p.requires_grad]}


def memory_format(cfg: TrainConfig) -> torch.memory_format:
    """The torch memory format ``cfg.memory_format`` names (``Module.to`` applies it to 4-D
    weights only)."""
    return torch.channels_last if cfg.memory_format == "channels_last" else torch.contiguous_format


def make_adam(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Adam:
    """Adam with ``cfg``'s lr and betas; torch's fused kernel when ``cfg.fused_optimizer``."""
    return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, fused=cfg.fused_optimizer or None)


class DivergenceWatch:
    """Remembers, on the device and without a host sync, the first step whose loss (or
    gradient norm) was not finite, and those values."""

    def __init__(self, device: torch.device) -> None:
        self.step = torch.full((), -1, dtype=torch.int64, device=device)
        self.loss = torch.zeros((), device=device)
        self.norm = torch.zeros((), device=device)

    @torch.no_grad()
    def record(self, step: int, loss: torch.Tensor, norm: torch.Tensor | None) -> None:
        """Note step ``step`` (None ``norm``: Inf gradients are the fp16 scaler's business)."""
        bad = ~torch.isfinite(loss)
        if norm is not None:
            bad = bad | ~torch.isfinite(norm)
        first = bad & (self.step < 0)
        self.step = torch.where(first, step, self.step)
        self.loss = torch.where(first, loss.float(), self.loss)
        if norm is not None:
            self.norm = torch.where(first, norm.float(), self.norm)

    def bad(self) -> torch.Tensor:
        """A 0-d bool tensor: did any recorded step diverge."""
        return self.step >= 0

    def describe(self) -> str:
        """What went wrong where (host sync)."""
        step, loss, norm = int(self.step), float(self.loss), float(self.norm)
        if step < 0:
            return "another rank's loss or gradient is not finite"
        what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {norm}"
        return f"at step {step} ({what})"


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

    Writes ``run_dir/metrics.csv``, TensorBoard events in ``run_dir/tb``, checkpoints in
    ``run_dir/checkpoints`` (``last.pt``, ``best.pt``, ``step_<N>.pt``) and, at the end,
    ``save_model(model, run_dir / "model")``. With ``cfg.ema_decay`` the EMA weights are the
    ones validated, passed to callbacks, saved, and loaded into ``model`` on return.

    Args:
        model: module with ``loss(batch) -> (loss, logs)``; trained in place.
        train_set: map-style dataset; its batches reach ``model.loss`` unchanged, on the device.
        val_set: dataset for the validation loss, or None.
        cfg: the training config.
        run_dir: directory of this run.
        resume: continue exactly from ``run_dir/checkpoints/last.pt``; without one yet (a run
            stopped before its first checkpoint) start the run, saying so.
        callbacks: ``fn(model, step, run_dir, writer)`` every ``cfg.sample_every`` steps and at
            the end (rank 0).
        save_model: saves the trained, unwrapped model at the end (e.g. ``save_pretrained``).

    Raises:
        RunDirError: ``run_dir`` is unwritable, or holds a checkpoint and ``resume`` is False.
        CheckpointError: the checkpoint is unreadable or of another model or data order.
        TrainingDiverged: the loss or gradient became NaN/Inf; the checkpoints on disk are
            from before it.
    """
    start = time.perf_counter()
    keep_freed_memory()  # no page faults for each step's activations (mvq.core.host_memory)
    _check_inputs(model, train_set, cfg)
    run_dir = Path(run_dir)
    has_checkpoint = prepare_run_dir(run_dir, resume, announce=os.environ.get("RANK", "0") == "0")
    ctx = init_distributed(cfg.device)
    try:
        with tf32_mode(cfg.tf32) if ctx.device.type == "cuda" else nullcontext():
            trainer = Trainer(model, train_set, val_set, cfg, run_dir, ctx, callbacks, save_model)
            try:
                trainer.start(has_checkpoint, logs_exist=resume)
                trainer.fit()
            finally:
                trainer.close()
        return trainer.result(time.perf_counter() - start)
    finally:
        close_distributed(ctx)


def _check_inputs(model: nn.Module, train_set: Dataset, cfg: TrainConfig) -> None:
    """Fail on a model, dataset or config that cannot train, before touching the disk."""
    if not callable(getattr(model, "loss", None)):
        raise TypeError(f"{type(model).__name__} has no loss(batch) -> (loss, logs) method")
    if cfg.max_steps is None and cfg.epochs is None:
        raise ConfigError("TrainConfig needs max_steps or epochs to know when to stop")
    world = launched_world_size()
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ConfigError(
            f"batch_size {cfg.batch_size} (the global batch) does not split over {world} "
            f"processes x grad_accum {cfg.grad_accum}"
        )
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", 0)))
    if cfg.sync_batchnorm and world > 1 and device.type != "cuda":
        raise ConfigError(
            f"train.sync_batchnorm needs CUDA GPUs (SyncBatchNorm does not run on {device.type} "
            "processes); set it to false"
        )
    names = list(optimizer_groups(model))
    unsupported = (
        ("precision=fp16", cfg.precision == "fp16"),
        ("compile=true", cfg.compile),
        (f"grad_accum={cfg.grad_accum}", cfg.grad_accum > 1),
    )
    for what, used in unsupported if len(names) > 1 else ():
        if used:
            raise ConfigError(
                f"train.{what} is not supported for {type(model).__name__}, which trains "
                f"{len(names)} optimizers ({', '.join(names)}); use fp32 or bf16, grad_accum=1, "
                "compile=false"
            )
    if len(train_set) < cfg.batch_size:
        raise ConfigError(
            f"train set has {len(train_set)} items, fewer than one batch ({cfg.batch_size})"
        )


def _loader_args(cfg: TrainConfig, ctx: DistContext) -> dict[str, Any]:
    """DataLoader arguments shared by the train and val loaders."""
    # An own generator: iterating a DataLoader otherwise draws its worker seed from the global
    # RNG, which a resumed run (one iterator fewer) would replay differently.
    return {
        "num_workers": cfg.num_workers,
        "pin_memory": ctx.device.type == "cuda",
        "generator": torch.Generator().manual_seed(cfg.seed),
        "worker_init_fn": ignore_stop_signals if cfg.num_workers else None,
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


class Trainer:
    """One training run: the model and what trains it, where it is, and what it has written.

    ``start`` loads a checkpoint or seeds; ``fit`` is the loop; each helper below does one
    thing. The position (``step``, ``epoch``, ``batch``) is what a checkpoint resumes.
    """

    def __init__(
        self,
        model: nn.Module,
        train_set: Dataset,
        val_set: Dataset | None,
        cfg: TrainConfig,
        run_dir: Path,
        ctx: DistContext,
        callbacks: Sequence[Callback] = (),
        save_model: Callable[[nn.Module, Path], None] | None = None,
    ) -> None:
        self.cfg, self.ctx, self.run_dir = cfg, ctx, run_dir
        self.callbacks, self.save_model = tuple(callbacks), save_model
        self.sampler = EpochBatchSampler(
            len(train_set),
            cfg.batch_size // ctx.world_size,
            seed=cfg.seed,
            rank=ctx.rank,
            world_size=ctx.world_size,
        )
        self.loader = DataLoader(train_set, batch_sampler=self.sampler, **_loader_args(cfg, ctx))
        self.val_loader = _val_loader(val_set, cfg, ctx)
        self.total = cfg.total_steps(self.sampler.batches_per_epoch)
        # What trains: the model, its optimizers by name, the fp16 scaler, the EMA copy.
        self.model = model.to(ctx.device, memory_format=memory_format(cfg)).train()
        self.optimizers = {
            name: make_adam(params, cfg) for name, params in optimizer_groups(model).items()
        }
        self.scaler = make_scaler(cfg.precision, ctx.device)
        self.ema = make_ema(model) if cfg.ema_decay is not None else None
        self._ema_loaded = False  # the EMA weights came from a checkpoint
        self.forward: nn.Module = _LossModule(model)  # wrapped by DDP / compile in ``start``
        self.ddp: DistributedDataParallel | None = None
        self._unchecked: set[str] = set()  # optimizers whose first compiled step is to come
        self.logger: RunLogger | None = None
        self.vote: StopVote | None = None  # the ranks' agreement on a stop request
        # Where the run is, and what it has measured.
        self.step = self.epoch = self.batch = 0
        self.lr = cfg.lr
        self.best_val: float | None = None
        self.last_val: float | None = None
        self.train_logs: dict[str, float] = {}
        self.window, self.meter = LogWindow(), Throughput()
        self.watch = DivergenceWatch(ctx.device)
        # What is on disk and done at this step (checked before writing or running it again).
        self.ckpt_step: int | None = None
        self.ckpt_time = time.monotonic()
        self.val_step = self.sample_step = -1
        self.in_step = False  # between a forward's start and the step's end: state not a step
        self.rng_after_step: dict[str, Any] | None = None  # RNG when the last step completed

    @property
    def eval_model(self) -> nn.Module:
        """The model validated, shown to callbacks and saved: the EMA one when enabled."""
        return self.ema if self.ema is not None else self.model

    def start(self, has_checkpoint: bool, logs_exist: bool) -> None:
        """Load the checkpoint, wrap in DDP and compile, open the logger, seed or restore RNG."""
        cfg, ctx = self.cfg, self.ctx
        rng = self._load_checkpoint() if has_checkpoint else None
        self.vote = StopVote(ctx)
        if ctx.enabled and cfg.sync_batchnorm:  # in place: the same parameters and buffers
            nn.SyncBatchNorm.convert_sync_batchnorm(self.forward)
        if ctx.enabled:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            unused = cfg.find_unused_parameters or len(self.optimizers) > 1
            self.ddp = DistributedDataParallel(
                self.forward, device_ids=ids, find_unused_parameters=unused
            )  # broadcasts rank 0's weights
            self.forward = self.ddp
        if self.ema is not None and not (has_checkpoint and self._ema_loaded):
            update_ema(self.ema, self.model, decay=0.0)  # start from the (broadcast) weights
        self._eager_forward = self.forward
        if cfg.compile:  # each optimizer's first compiled step is checked (_checked_backward)
            self.forward = torch.compile(self.forward)
            self._unchecked = set(self.optimizers)
        self.logger = RunLogger(self.run_dir, self.step, logs_exist, ctx.is_main)
        if not has_checkpoint:
            seed_everything(cfg.seed * ctx.world_size + ctx.rank)
        elif rng is not None:
            restore_rng(rng_from_tensors(rng))
        else:  # a checkpoint written on Ctrl-C under DDP only knows rank 0's RNG
            print(f"rank {ctx.rank}: no RNG state in the checkpoint; reseeding", file=sys.stderr)
            seed_everything((cfg.seed * ctx.world_size + ctx.rank) * 1_000_003 + self.step)

    def fit(self) -> None:
        """The loop: one optimizer step per batch until the last step, then ``finish``.

        Ctrl-C, SIGTERM or SIGUSR1 (on any rank) stops it after the step it arrives in, with a
        checkpoint of that step; during ``finish`` the run completes instead.
        """
        bar = tqdm(total=self.total, initial=self.step, desc="train", disable=not self.ctx.is_main)
        try:
            with StopRequest() as stop_request:
                while self.step < self.total:
                    tic = time.perf_counter()
                    for batch in self._rest_of_epoch():
                        self.in_step = True
                        logs = self.train_step(to_device(batch, self.ctx.device))
                        self._advance()
                        self.meter.update(
                            count_items(batch) * self.ctx.world_size, time.perf_counter() - tic
                        )
                        self.window.add(logs)
                        bar.update()
                        signum = self._periodic(stop_request, bar)
                        if signum:  # checkpointed on every rank
                            raise stop_exception(signum, self.step, checkpoint_path(self.run_dir))
                        if self.step >= self.total:
                            break
                        tic = time.perf_counter()
                self.finish(bar)
        except KeyboardInterrupt:
            self._save_on_interrupt()
            raise
        finally:
            bar.close()

    def train_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """One step: each optimizer in turn updates (``update``), then the EMA. Returns the
        step's detached logs (no host sync); a second optimizer's loss and gradient norm are
        logged as ``<name>_loss``, ``<name>_grad_norm``."""
        cfg = self.cfg
        self.lr = lr_at(
            self.step, self.total, cfg.lr, cfg.lr_schedule, cfg.warmup_steps, cfg.min_lr
        )
        parts = split_batch(batch, cfg.grad_accum)
        logs: dict[str, torch.Tensor] = {}
        for name, opt in self.optimizers.items():
            out = self.update(name, opt, parts)
            if name != "model":  # the loss and norm of a second optimizer under its own name
                out = {
                    f"{name}_{k}" if k in ("loss", "grad_norm") else k: v for k, v in out.items()
                }
            logs |= out
        if self.ema is not None:
            update_ema(self.ema, self.model, cfg.ema_decay)
        return logs

    def update(
        self, name: str, opt: torch.optim.Optimizer, parts: list[Any]
    ) -> dict[str, torch.Tensor]:
        """One optimizer's update: forward/backward per micro-batch, unscale, clip, note
        NaN/Inf on the device, step. Returns its detached loss, logs and gradient norm."""
        set_lr(opt, self.lr)
        opt.zero_grad(set_to_none=True)  # also drops what another group's pass put there
        args = () if len(self.optimizers) == 1 else (self.step, name)
        if name in self._unchecked:
            loss, logs = self._checked_backward(name, parts, args)
        else:
            loss, logs = self._backward(parts, args)
        if self.scaler is not None:
            self.scaler.unscale_(opt)
        params = [p for group in opt.param_groups for p in group["params"]]
        # Clipping at inf scales by exactly 1.0: the norm comes for free, the grads stay bit-equal.
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip or math.inf)
        self.watch.record(self.step + 1, loss, None if self.scaler is not None else norm)
        if self.scaler is not None:
            self.scaler.step(opt)  # skips the update when a gradient is Inf/NaN
            self.scaler.update()
        else:
            opt.step()
        return {"loss": loss, **logs, "grad_norm": norm.detach()}

    def _checked_backward(
        self, name: str, parts: list[Any], args: tuple[Any, ...]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``_backward`` of optimizer ``name``'s first compiled step. When inductor's stride
        check fails in it (CUDA's convolution_backward returns other strides than inductor
        predicted: pytorch#171622 and #197517; seen with torch 2.11 on an H200, where Table 3's
        decoder hit it), the step is undone (weights, buffers, RNG, gradients) and redone
        without torch.compile, which the run then keeps, saying so once."""
        self._unchecked.discard(name)
        state = {k: v.clone() for k, v in self.model.state_dict().items()}
        rng = capture_rng()
        try:
            return self._backward(parts, args)
        except AssertionError as err:
            if "stride" not in str(err) or self.forward is self._eager_forward:
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else "AssertionError"
            print(
                f"torch.compile: the compiled step failed inductor's stride check ({first}); "
                "training on without torch.compile (pytorch#171622)",
                file=sys.stderr,
            )
            self.model.load_state_dict(state)
            restore_rng(rng)
            for opt in self.optimizers.values():
                opt.zero_grad(set_to_none=True)
            self.forward, self._unchecked = self._eager_forward, set()
            return self._backward(parts, args)

    def _backward(
        self, parts: list[Any], args: tuple[Any, ...] = ()
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward (``model.loss(part, *args)``) and backward of each micro-batch (DDP
        all-reduces after the last one only); returns the loss and logs averaged over the
        micro-batches, detached."""
        n, loss_sum, log_sums = len(parts), None, {}
        for i, part in enumerate(parts):
            last = i == n - 1
            with nullcontext() if last or self.ddp is None else self.ddp.no_sync():
                with autocast(self.cfg.precision, self.ctx.device):
                    loss, logs = self.forward(part, *args)
                scaled = loss / n if n > 1 else loss
                (scaled if self.scaler is None else self.scaler.scale(scaled)).backward()
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
            for name, value in logs.items():
                value = value.detach()
                log_sums[name] = log_sums[name] + value if name in log_sums else value
        if n == 1:
            return loss_sum, log_sums
        return loss_sum / n, {name: value / n for name, value in log_sums.items()}

    def _rest_of_epoch(self) -> DataLoader:
        """The loader, positioned at this epoch's next batch (its order depends on seed, epoch)."""
        self.sampler.set_epoch(self.epoch, start_batch=self.batch)
        self.loader.generator.manual_seed(
            (epoch_seed(self.cfg.seed, self.epoch) << 16) + self.ctx.rank
        )
        return self.loader

    def _advance(self) -> None:
        """Count the step just completed and remember the RNG state it ended with."""
        self.step, self.batch = self.step + 1, self.batch + 1
        if self.batch == self.sampler.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        self.in_step, self.rng_after_step = False, capture_rng()

    def _periodic(self, stop_request: StopRequest, bar: tqdm) -> int:
        """The check, logs, validation, callbacks and checkpoints due after this step.

        Returns the signal that stops the run after this step (0: none), agreed by every rank
        and checkpointed. Steps with nothing due return at once, without waiting for the device.
        """
        cfg, step = self.cfg, self.step
        log_due = step % cfg.log_every == 0
        val_due = self.batch == 0 if cfg.val_every is None else step % cfg.val_every == 0
        sample_due, ckpt_due = step % cfg.sample_every == 0, step % cfg.ckpt_every == 0
        signum = self.vote(stop_request.signum)  # every rank, every step: the same answer
        timed = self._ckpt_timer_due()
        # The timer runs on each process's clock: ranks of a DDP run compare it only at the
        # checks every rank makes, so that they agree on the step.
        if not (
            log_due
            or val_due
            or sample_due
            or ckpt_due
            or signum
            or (timed and not self.ctx.enabled)
        ):
            return 0
        timed = self._check(timed)
        if log_due:
            self._report_train(bar)
        improved = self._validate() if val_due else False
        if sample_due:
            self._sample()
        if ckpt_due or timed or signum or improved:
            self._checkpoint(last=ckpt_due or timed or bool(signum), best=improved)
        return signum

    def _ckpt_timer_due(self) -> bool:
        """``ckpt_minutes`` have passed since the last checkpoint (or the start)."""
        minutes = self.cfg.ckpt_minutes
        return minutes is not None and time.monotonic() - self.ckpt_time >= 60 * minutes

    def _check(self, timed: bool) -> bool:
        """The host sync: raise ``TrainingDiverged`` if a step since the last check went
        NaN/Inf on any rank; return whether any rank found the checkpoint timer due."""
        flags = torch.stack([self.watch.bad(), torch.tensor(timed, device=self.ctx.device)])
        bad, timed = any_rank(flags, self.ctx)
        if bad:
            kept = (
                f"last good checkpoint: {checkpoint_path(self.run_dir)} (step {self.ckpt_step})"
                if self.ckpt_step is not None
                else "no checkpoint was written yet"
            )
            raise TrainingDiverged(
                f"training diverged {self.watch.describe()}, found at the check after step "
                f"{self.step}; nothing after it was checkpointed; {kept}"
            )
        return timed

    def finish(self, bar: tqdm) -> None:
        """End of run: logs, validation, callbacks and checkpoint unless just done, the model
        save; then ``self.model`` takes the EMA weights when there are some, and the contiguous
        layout it is saved and loaded in (so what the caller goes on to run with it is what a
        reload would run)."""
        self._check(False)
        self._report_train(bar)
        improved = self._validate() if self.val_step != self.step else False
        if self.sample_step != self.step:
            self._sample()
        if self.ckpt_step != self.step or improved:
            self._checkpoint(last=self.ckpt_step != self.step, best=improved)
        if self.save_model is not None and self.ctx.is_main:
            self.save_model(self.eval_model, self.run_dir / "model")
        barrier(self.ctx)  # every rank returns once the model is saved
        if self.ema is not None:
            self.model.load_state_dict(self.ema.state_dict())
        self.model.to(memory_format=torch.contiguous_format)

    def _report_train(self, bar: tqdm) -> None:
        """Log the window's means (averaged over ranks) and the lr to CSV, TensorBoard, the bar."""
        values = self.window.pop(self.ctx)
        if values:
            self.train_logs = values | {"lr": self.lr}
            self.logger.log("train", self.step, self.train_logs)
            bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)

    def _validate(self) -> bool:
        """Mean of ``loss`` and its logs over the val set, all ranks together, of the eval
        (EMA) model; logged. Returns whether it is the best so far."""
        self.val_step = self.step
        if self.val_loader is None:
            return False
        sums: dict[str, float] = {}
        count, model = 0, self.eval_model
        with preserved_rng(), torch.no_grad():
            seed_everything(self.cfg.seed)  # the same noise at every validation: comparable
            model.eval()
            for i, batch in enumerate(self.val_loader):
                if self.cfg.val_batches is not None and i >= self.cfg.val_batches:
                    break
                batch = to_device(batch, self.ctx.device)
                with autocast(self.cfg.precision, self.ctx.device):
                    loss, logs = model.loss(batch)
                n = count_items(batch)
                for name, value in {"loss": loss, **logs}.items():
                    sums[name] = sums.get(name, 0.0) + float(value) * n
                count += n
            self.model.train()
        parts = all_gather((sums, count), self.ctx)
        total = sum(n for _, n in parts)
        names = dict.fromkeys(name for s, _ in parts for name in s)  # a rank may have had none
        values = {name: sum(s.get(name, 0.0) for s, _ in parts) / total for name in names}
        self.last_val = values["loss"]
        improved = self.best_val is None or self.last_val < self.best_val
        self.best_val = self.last_val if improved else self.best_val
        self.logger.log("val", self.step, values)
        return improved

    def _sample(self) -> None:
        """Call the image callbacks on rank 0 (eval mode, no grad, training RNG untouched)."""
        self.sample_step = self.step
        if not self.callbacks or not self.ctx.is_main:
            return
        model = self.eval_model
        with preserved_rng(), torch.no_grad():
            model.eval()
            for fn in self.callbacks:
                fn(model, self.step, self.run_dir, self.logger.writer)
            self.model.train()
        self.logger.writer.flush()

    def state_dict(self, rng: list[dict[str, Any] | None]) -> dict[str, Any]:
        """The checkpoint of this step (see ``mvq.training.checkpoint`` for the layout)."""
        return {
            "format_version": CHECKPOINT_VERSION,
            "model": self.model.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "sampler_state": {**self.sampler.order_key(), "epoch": self.epoch, "batch": self.batch},
            "rng": rng,
            "config": asdict(self.cfg),
            "model_class": type(self.model).__name__,
            "model_config": model_config_dict(self.model),
            "best_val_loss": self.best_val,
            "last_val_loss": self.last_val,
        }

    def _load_checkpoint(self) -> dict[str, Any] | None:
        """Load weights, optimizers, EMA, scaler and position from last.pt (unreadable: the
        newest intact step_<N>.pt); return this rank's RNG state."""
        path, ckpt = load_resumable(self.run_dir, announce=self.ctx.is_main)
        check_resumable(ckpt, path, self.model, self.sampler.order_key())
        self.model.load_state_dict(ckpt["model"])
        for name, opt in self.optimizers.items():
            try:
                opt.load_state_dict(ckpt["optimizers"][name])
            except (ValueError, KeyError) as err:
                msg = f"cannot resume from {path}: optimizer '{name}' state does not fit ({err})"
                raise CheckpointError(msg) from None
        self._ema_loaded = self.ema is not None and ckpt["ema"] is not None
        if self._ema_loaded:
            self.ema.load_state_dict(ckpt["ema"])
        if self.scaler is not None and ckpt["scaler"] is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.epoch = ckpt["step"], ckpt["epoch"]
        self.batch = ckpt["sampler_state"]["batch"]
        self.best_val, self.last_val = ckpt["best_val_loss"], ckpt["last_val_loss"]
        self.ckpt_step = self.step
        return ckpt["rng"][self.ctx.rank]

    def _checkpoint(self, last: bool = True, best: bool = False) -> None:
        """Write last.pt (``keep_last``) and/or best.pt on rank 0 with every rank's RNG; the
        collectives around it are barriers. A failure on rank 0 (a full disk: a one-line
        ``DiskFullError``) raises on every rank, as an mvq error when it is one."""
        rng = all_gather(rng_to_tensors(capture_rng()), self.ctx)
        ckpt_dir, error = checkpoint_path(self.run_dir).parent, None
        if self.ctx.is_main:
            try:
                state = self.state_dict(rng)
                written = write_checkpoint(state, ckpt_dir, self.cfg.keep_last) if last else None
                if best and written is not None:
                    link_checkpoint(written, ckpt_dir / "best.pt")
                elif best:
                    save_checkpoint(state, ckpt_dir / "best.pt")
            except Exception as err:  # noqa: BLE001 - re-raised below, after telling the others
                error = err
        failed, user_error = any_rank(
            torch.tensor([error is not None, isinstance(error, MVQError)]), self.ctx
        )
        if failed:
            if error is not None:
                raise error
            msg = f"rank 0 failed to write a checkpoint in {ckpt_dir}; see its error"
            raise RunDirError(msg) if user_error else RuntimeError(msg)
        if last:
            self.ckpt_step, self.ckpt_time = self.step, time.monotonic()

    def _save_on_interrupt(self) -> None:
        """After a hard interrupt, checkpoint the last completed step if the state still is one
        and it did not diverge (rank 0, no collectives: the other ranks may be gone)."""
        if not self.ctx.is_main or self.rng_after_step is None or self.ckpt_step == self.step:
            return
        path = checkpoint_path(self.run_dir)
        if self.in_step:
            print(f"interrupted inside step {self.step + 1}; kept {path}", file=sys.stderr)
            return
        if bool(self.watch.bad()):
            print(f"interrupted after a diverged step; kept {path}", file=sys.stderr)
            return
        rng = [rng_to_tensors(self.rng_after_step)] + [None] * (self.ctx.world_size - 1)
        write_checkpoint(self.state_dict(rng), path.parent, self.cfg.keep_last)
        print(f"interrupted: saved step {self.step} to {path}", file=sys.stderr)

    def close(self) -> None:
        """Close the logger and the ranks' stop vote."""
        if self.logger is not None:
            self.logger.close()
        if self.vote is not None:
            self.vote.close()

    def result(self, wall_time: float) -> TrainResult:
        """What ``train`` returns."""
        return TrainResult(
            steps=self.step,
            train_logs=self.train_logs,
            best_val_loss=self.best_val,
            last_val_loss=self.last_val,
            wall_time=wall_time,
            items_per_second=self.meter.rate,
            run_dir=self.run_dir,
            compiled=self.forward is not self._eager_forward,
        )
