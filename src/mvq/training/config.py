"""The trainer's own config and result dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mvq.core.device import DEVICE_NAME
from mvq.core.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine")
MEMORY_FORMATS = ("channels_last", "contiguous")
OPTIONAL_INTS = ("max_steps", "epochs", "val_every", "val_batches")
INT_MINIMUMS = {
    "batch_size": 1,
    "log_every": 1,
    "ckpt_every": 1,
    "sample_every": 1,
    "grad_accum": 1,
    "keep_last": 1,
    "warmup_steps": 0,
    "num_workers": 0,
    **dict.fromkeys(OPTIONAL_INTS, 1),
}
DEVICE_HELP = (
    "auto (a GPU when there is one), cpu, cuda, cuda:N or mps; under torchrun cuda is the "
    "LOCAL_RANK's GPU"
)


def _is_number(value: object) -> bool:
    """An int or float, not a bool (YAML's ``true`` is not a step count)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _invalid(name: str, value: object, rule: str) -> None:
    """Raise the one-line error for field ``name``."""
    raise ConfigError(f"TrainConfig.{name} must be {rule}, got {value!r}")


@dataclass
class TrainConfig:
    """How to train; the CLI and YAML override its fields, models never see it.

    Args:
        lr: Adam learning rate (the peak of a schedule).
        betas: Adam betas; (0.5, 0.9) as in the paper's Table 2.
        batch_size: global batch size of one optimizer step, split evenly over the processes of
            a distributed run (``batch_size / world_size`` per GPU) and then into
            ``grad_accum`` micro-batches.
        max_steps: optimizer steps to train for; wins over ``epochs`` when both are set.
        epochs: passes over the train set, used when ``max_steps`` is None.
        log_every: steps between train-log rows (means over the window); also the steps at
            which the host waits for the device (NaN/Inf check, Ctrl-C under DDP,
            ``ckpt_minutes``): nothing else syncs in between.
        val_every: steps between validations; None validates at the end of every epoch.
        val_batches: validate on at most this many batches per rank (None: the whole set).
        ckpt_every: steps between ``checkpoints/last.pt`` writes (one is always written at the end).
        ckpt_minutes: also write a checkpoint once this many minutes passed since the last one
            (after the step; under DDP at the next check, every ``log_every`` steps); None: by
            steps only.
        keep_last: checkpoints kept: ``last.pt`` plus, for K > 1, ``step_<N>.pt`` of the K
            newest (``last.pt`` is a hard link to the newest).
        sample_every: steps between calls of the image callbacks (and once at the end).
        seed: seeds the RNGs at the start of a fresh run and the data order of every epoch.
        grad_clip: max global gradient norm, None for no clipping.
        num_workers: DataLoader worker processes.
        device: "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:N" or "mps"; under
            torchrun "auto" and "cuda" are the local rank's GPU.
        precision: "fp32"; "bf16" autocast for the forward pass; "fp16" autocast with a
            ``GradScaler`` (steps with Inf/NaN gradients are skipped and the scale lowered).
            Weights, optimizer state and the quantizers stay fp32.
        tf32: allow TF32 matrix products and convolutions on CUDA during the run.
        compile: ``torch.compile`` the training forward and backward (the model's ``loss``).
        memory_format: layout of the model's 4-D weights while it trains, and so of the
            activations its convolutions produce: "channels_last" (NHWC; oneDNN's and cuDNN's
            fast convolution kernels, 8% faster per tokenizer step on a Zen 4 EPYC and 15%
            with AVX2 kernels) or "contiguous" (NCHW, the layout of runs before 2026-12-05).
            The same arithmetic up to float rounding, not bit-identical between the two; the
            saved weights are contiguous either way.
        fused_optimizer: Adam as torch's fused kernel (``fused=True``: one kernel for all
            parameters instead of a loop of small ops); the same update up to float rounding,
            not bit-identical to the default loop, so off by default to keep results exact
            across versions.
        grad_accum: split each step's batch into this many micro-batches, one backward each,
            one optimizer step: the same update as the whole batch up to float error (except
            for layers that mix items, e.g. BatchNorm).
        lr_schedule: "constant", or "cosine" decay from ``lr`` to ``min_lr`` at the last step.
        warmup_steps: linear warm-up from ``lr / warmup_steps`` to ``lr`` (either schedule).
        min_lr: where the cosine schedule ends.
        ema_decay: keep an exponential moving average of the weights with this decay (e.g.
            0.999); validation, the image callbacks and the saved model then use the EMA
            weights, and ``train`` returns with them loaded. None: no EMA.
        find_unused_parameters: passed to DistributedDataParallel.
        sync_batchnorm: under DDP on GPUs, make every BatchNorm layer a ``SyncBatchNorm``: it
            normalizes with the statistics of the global batch instead of each GPU's share.
            Ignored by a single process; refused on CPU processes (gloo), where SyncBatchNorm
            cannot run.
    """

    lr: float = 5e-4
    betas: tuple[float, float] = (0.5, 0.9)
    batch_size: int = 32
    max_steps: int | None = None
    epochs: int | None = None
    log_every: int = 50
    val_every: int | None = None
    val_batches: int | None = None
    ckpt_every: int = 1000
    sample_every: int = 1000
    seed: int = 0
    grad_clip: float | None = None
    num_workers: int = 0
    device: str = "auto"
    precision: str = "fp32"
    tf32: bool = False
    compile: bool = False
    memory_format: str = "channels_last"
    fused_optimizer: bool = False
    grad_accum: int = 1
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    min_lr: float = 0.0
    ema_decay: float | None = None
    ckpt_minutes: float | None = None
    keep_last: int = 1
    find_unused_parameters: bool = False
    sync_batchnorm: bool = False

    def __post_init__(self) -> None:
        pair = isinstance(self.betas, (tuple, list)) and len(self.betas) == 2
        if not pair or not all(_is_number(b) and 0 <= b < 1 for b in self.betas):
            _invalid("betas", self.betas, "a pair of numbers in [0, 1), e.g. [0.5, 0.9]")
        self.betas = tuple(self.betas)  # YAML and JSON give lists
        for name, choices in (
            ("precision", PRECISIONS),
            ("lr_schedule", LR_SCHEDULES),
            ("memory_format", MEMORY_FORMATS),
        ):
            if getattr(self, name) not in choices:
                _invalid(name, getattr(self, name), f"one of {', '.join(choices)}")
        if not isinstance(self.device, str) or not DEVICE_NAME.fullmatch(self.device):
            _invalid("device", self.device, "auto, cpu, cuda, cuda:N or mps")
        for name in (
            "tf32",
            "compile",
            "fused_optimizer",
            "find_unused_parameters",
            "sync_batchnorm",
        ):
            if not isinstance(getattr(self, name), bool):
                _invalid(name, getattr(self, name), "true or false")
        for name, low in INT_MINIMUMS.items():
            value = getattr(self, name)
            if value is None and name in OPTIONAL_INTS:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                _invalid(
                    name, value, f"an integer >= {low}" + (" or null" * (name in OPTIONAL_INTS))
                )
        for name, ok, rule in (
            ("lr", lambda v: v > 0, "> 0"),
            ("min_lr", lambda v: 0 <= v <= self.lr, f"in [0, lr={self.lr}]"),
            ("grad_clip", lambda v: v > 0, "> 0 or null"),
            ("ema_decay", lambda v: 0 < v < 1, "in (0, 1) or null"),
            ("ckpt_minutes", lambda v: v > 0, "> 0 or null"),
        ):
            value = getattr(self, name)
            if value is None and rule.endswith("null"):
                continue
            if not _is_number(value) or not ok(value):
                _invalid(name, value, rule)
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"TrainConfig.batch_size {self.batch_size} does not split into "
                f"grad_accum={self.grad_accum} micro-batches"
            )

    def total_steps(self, batches_per_epoch: int) -> int:
        """Steps the run ends at: ``max_steps``, else ``epochs`` whole epochs."""
        if self.max_steps is not None:
            return self.max_steps
        if self.epochs is not None:
            return self.epochs * batches_per_epoch
        raise ConfigError("TrainConfig needs max_steps or epochs to know when to stop")


@dataclass
class TrainResult:
    """What a finished ``train`` call reports (identical on every rank).

    Args:
        steps: optimizer steps completed, counting those before a resume.
        train_logs: means of the loss and the model's logs over the last log window.
        best_val_loss: lowest validation loss seen in the run (None without a val set).
        last_val_loss: validation loss at the last step.
        wall_time: seconds this call took.
        items_per_second: global training throughput after the first warm-up steps (nan when
            the call ran too few steps to measure).
        run_dir: the run directory.
        compiled: whether the run ended under torch.compile (False when ``compile`` was off,
            or when its first step failed inductor's stride check and the run fell back).
    """

    steps: int
    train_logs: dict[str, float]
    best_val_loss: float | None
    last_val_loss: float | None
    wall_time: float
    items_per_second: float
    run_dir: Path
    compiled: bool = False
