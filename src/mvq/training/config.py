"""The trainer's own config and result dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainConfig:
    """How to train; the CLI and YAML override its fields, models never see it.

    Args:
        lr: Adam learning rate (constant).
        betas: Adam betas; (0.5, 0.9) as in the paper's Table 2.
        batch_size: global batch size, split evenly over the processes of a distributed run.
        max_steps: optimizer steps to train for; wins over ``epochs`` when both are set.
        epochs: passes over the train set, used when ``max_steps`` is None.
        log_every: steps between train-log rows (means over the window).
        val_every: steps between validations; None validates at the end of every epoch.
        val_batches: validate on at most this many batches per rank (None: the whole set).
        ckpt_every: steps between ``checkpoints/last.pt`` writes (one is always written at the end).
        sample_every: steps between calls of the image callbacks (and once at the end).
        seed: seeds the RNGs at the start of a fresh run and the data order of every epoch.
        grad_clip: max global gradient norm, None for no clipping.
        num_workers: DataLoader worker processes.
        device: "auto" (cuda if available, else cpu), "cpu", "cuda" or "cuda:N".
        precision: "fp32", or "bf16" autocast for the forward pass.
        find_unused_parameters: passed to DistributedDataParallel.
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
    find_unused_parameters: bool = False

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # YAML and JSON give lists
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got '{self.precision}'")
        for name in ("batch_size", "log_every", "ckpt_every", "sample_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"TrainConfig.grad_clip must be > 0 or None, got {self.grad_clip}")
        for name in ("max_steps", "epochs", "val_every", "val_batches"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1 or None, got {value}")

    def total_steps(self, batches_per_epoch: int) -> int:
        """Steps the run ends at: ``max_steps``, else ``epochs`` whole epochs."""
        if self.max_steps is not None:
            return self.max_steps
        if self.epochs is not None:
            return self.epochs * batches_per_epoch
        raise ValueError("TrainConfig needs max_steps or epochs to know when to stop")


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
    """

    steps: int
    train_logs: dict[str, float]
    best_val_loss: float | None
    last_val_loss: float | None
    wall_time: float
    items_per_second: float
    run_dir: Path
