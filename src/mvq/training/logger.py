"""Metrics sinks (TensorBoard + ``metrics.csv``), log windows and the throughput meter."""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
from pathlib import Path
from typing import Any

import torch

from mvq.core.errors import DiskFullError, disk_full_cause
from mvq.core.pretrained import atomic_write_file
from mvq.training.distributed import DistContext, all_reduce_mean

CSV_HEADER = ["step", "split", "name", "value"]


class RunLogger:
    """Writes scalars to TensorBoard (``run_dir/tb``) and ``run_dir/metrics.csv``; rank 0 only.

    The CSV is long-format (one row per step, split and name) so any set of logs fits its
    single header. A resumed run first drops the rows and events logged after its checkpoint,
    so a replayed step is not logged twice; a fresh run starts a new CSV.
    """

    def __init__(self, run_dir: Path, start_step: int, resumed: bool, enabled: bool) -> None:
        self.enabled = enabled
        self.writer: Any = None
        self.csv_path = run_dir / "metrics.csv"
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter  # slow import, rank 0 only

        _prepare_csv(self.csv_path, keep_until=start_step if resumed else None)
        purge = start_step + 1 if resumed else None
        self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=purge)

    def log(self, split: str, step: int, values: dict[str, float]) -> None:
        """Record ``values`` under ``split`` ("train", "val") at ``step``."""
        if not self.enabled:
            return
        buffer = io.StringIO()
        rows = csv.writer(buffer)
        for name, value in values.items():
            rows.writerow([step, split, name, repr(float(value))])
            self.writer.add_scalar(f"{split}/{name}", value, step)
        append(self.csv_path, buffer.getvalue().encode())
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self.writer is not None:
            self.writer.close()


def append(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path``; a full disk is a one-line ``DiskFullError`` and leaves
    ``path`` as it was (no half-written row)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as err:
            with contextlib.suppress(OSError):  # not a regular file: nothing to take back
                os.ftruncate(fd, start)
            if disk_full_cause(err) is None:
                raise
            raise DiskFullError.writing(path, len(data), None, existed=True) from err
    finally:
        os.close(fd)


def _prepare_csv(path: Path, keep_until: int | None) -> None:
    """Start a new CSV, or keep only the rows up to step ``keep_until`` of an existing one."""
    rows: list[list[str]] = []
    if keep_until is not None and path.is_file():
        with open(path, newline="") as f:
            rows = [r for r in list(csv.reader(f))[1:] if r and int(r[0]) <= keep_until]
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows([CSV_HEADER, *rows])
    atomic_write_file(path, buffer.getvalue())


class LogWindow:
    """Sums of the per-step logs since the last report (kept on the device: no host sync)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, logs: dict[str, torch.Tensor]) -> None:
        """Accumulate one step's scalar logs."""
        for name, value in logs.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.count += 1

    def pop(self, ctx: DistContext) -> dict[str, float]:
        """Means over the window and over ranks; empties the window."""
        if self.count == 0:
            return {}
        names = list(self.sums)
        means = all_reduce_mean(torch.stack([self.sums[n] for n in names]) / self.count, ctx)
        self.sums, self.count = {}, 0
        return dict(zip(names, means.tolist(), strict=True))


class Throughput:
    """Items per second over training steps, ignoring the first ``warmup`` steps."""

    def __init__(self, warmup: int = 3) -> None:
        self.warmup, self.steps, self.items, self.seconds = warmup, 0, 0, 0.0

    def update(self, items: int, seconds: float) -> None:
        """Count one step of ``items`` that took ``seconds``."""
        self.steps += 1
        if self.steps > self.warmup:
            self.items += items
            self.seconds += seconds

    @property
    def rate(self) -> float:
        """Measured items per second (nan before any post-warm-up step)."""
        return self.items / self.seconds if self.seconds > 0 else math.nan
