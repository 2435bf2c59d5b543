"""Ctrl-C that stops a run between steps, where its state is a completed step."""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType
from typing import Any


class StopRequest:
    """Context manager: the first SIGINT sets ``requested`` instead of raising.

    A KeyboardInterrupt in the middle of a forward pass would leave half-updated buffers
    (BatchNorm statistics, EMA codebooks); instead the loop finishes the step, checkpoints and
    raises KeyboardInterrupt itself. A second SIGINT more than ``grace`` seconds after the first
    aborts at once; an earlier one is taken as a duplicate (torchrun forwards the terminal's
    Ctrl-C to workers that already received it). Only the main thread can install the handler;
    elsewhere this is a no-op and SIGINT behaves as usual.
    """

    def __init__(self, grace: float = 1.0) -> None:
        self.requested = False
        self.grace = grace
        self._first = 0.0
        self._previous: Any = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if not self.requested:
            self.requested, self._first = True, now
            os.write(2, b"\nCtrl-C: stopping after this step with a checkpoint (again: abort)\n")
        elif now - self._first > self.grace:
            raise KeyboardInterrupt
