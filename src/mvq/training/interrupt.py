"""Stopping a run between steps, where its state is a completed step: Ctrl-C (SIGINT), a
scheduler's SIGTERM, and SIGUSR1 ("checkpoint now, requeue me", e.g. ``#SBATCH
--signal=USR1@120``).

Each is handled the same way: the step finishes, a checkpoint is written, and the run ends, with
``KeyboardInterrupt`` for Ctrl-C and ``RunStopped`` for the other two, whose ``status`` is the
exit status of ``mvq train`` / ``mvq train-prior`` / ``mvq sweep`` (``STOP_STATUS``): 143 for
SIGTERM (128 + 15, as the shell reports a process ended by it) and 75 for SIGUSR1 (``EX_TEMPFAIL``
of sysexits.h: "temporary failure, run me again"). A wrapper reads 143 or 75 as "stopped with a
checkpoint at the step it was at: rerun the same command with ``--resume``".
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

STOP_STATUS = {signal.SIGTERM: 143, signal.SIGUSR1: 75}
"""Exit status of a run stopped, with its checkpoint written, by each signal."""
HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class RunStopped(BaseException):
    """The run stopped on SIGTERM or SIGUSR1 after checkpointing the step it was at.

    A ``BaseException`` like ``KeyboardInterrupt``: not an error, and not caught by ``except
    Exception``. ``status`` is the exit status the ``mvq`` command ends with.
    """

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        if signum == signal.SIGUSR1:
            what = f"{name}: checkpointed on request at step {step} in {checkpoint}; requeue"
        else:
            what = f"{name}: stopped after step {step} with a checkpoint in {checkpoint}; rerun"
        super().__init__(
            f"{what} the same command with --resume to continue (exit status {self.status})"
        )

    @property
    def status(self) -> int:
        """The exit status documented for the signal (``STOP_STATUS``)."""
        return STOP_STATUS[signal.Signals(self.signum)]


def stop_exception(signum: int, step: int, checkpoint: Path) -> BaseException:
    """What a run stopped by ``signum`` raises once its checkpoint is written."""
    return KeyboardInterrupt() if signum == signal.SIGINT else RunStopped(signum, step, checkpoint)


class StopRequest:
    """Context manager: the first SIGINT, SIGTERM or SIGUSR1 sets ``signum`` instead of ending
    the process.

    A KeyboardInterrupt in the middle of a forward pass would leave half-updated buffers
    (BatchNorm statistics, EMA codebooks); instead the loop finishes the step, checkpoints and
    raises ``stop_exception(signum, ...)`` itself. A second SIGINT more than ``grace`` seconds
    after the first request aborts at once; an earlier one is taken as a duplicate (torchrun
    forwards the terminal's Ctrl-C to workers that already received it), and so is any repeated
    SIGTERM or SIGUSR1 (a scheduler that signals every process, then the launcher forwarding
    it). Only the main thread can install handlers; elsewhere this is a no-op and the signals
    behave as usual.
    """

    def __init__(self, grace: float = 1.0) -> None:
        self.signum = 0  # the first signal received, 0 while none
        self.grace = grace
        self._first = 0.0
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for."""
        return self.signum != 0

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in HANDLED}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if not self.requested:
            self.signum, self._first = signum, now
            os.write(2, f"\n{_announce(signum)}\n".encode())
        elif signum == signal.SIGINT and now - self._first > self.grace:
            raise KeyboardInterrupt


def ignore_stop_signals(worker_id: int = 0) -> None:
    """``worker_init_fn`` of DataLoader workers: leave SIGTERM and SIGUSR1 to the training
    process. A scheduler that signals every process of a job would otherwise kill the workers
    mid-batch, and the run with them, before its checkpoint; they exit with the training
    process."""
    for sig in STOP_STATUS:
        signal.signal(sig, signal.SIG_IGN)


def _announce(signum: int) -> str:
    """The line printed when a stop is first requested."""
    if signum == signal.SIGINT:
        return "Ctrl-C: stopping after this step with a checkpoint (again: abort)"
    name = signal.Signals(signum).name
    status = STOP_STATUS[signal.Signals(signum)]
    return f"{name}: stopping after this step with a checkpoint (exit status {status})"
