"""Running cells: stage subprocesses with logs, markers, locks, stop signals and the cell
record; ``run_sweep`` runs several cells at once."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mvq.experiments.sweep.spec import Cell, SweepConfig
from mvq.experiments.sweep.stages import (
    CHECKPOINT,
    Stage,
    cell_stages,
    file_lock,
    first_stage_to_run,
    marker_path,
    read_marker,
    skipped_backfill,
    stage_done,
    write_atomic,
)
from mvq.experiments.sweep.tables import collect
from mvq.training.interrupt import STOP_STATUS

# --- running ----------------------------------------------------------------------------------


@dataclass
class CellOutcome:
    """What happened to one cell in this invocation."""

    cell: Cell
    status: str  # "done", "failed", "interrupted" (by a signal) or "busy" (another process)
    ran: list[str] = field(default_factory=list)  # stages run now
    log: Path | None = None  # the failed or interrupted stage's log
    message: str = ""
    signum: int = 0  # the signal that interrupted it


class StopSignals:
    """Context manager: SIGTERM and SIGUSR1 to the sweep are passed on to every running stage
    (a training stage finishes its step, checkpoints and exits 143 / 75), and no stage starts
    after them; ``signum`` is the first one received (0: none).

    A stage stopped by one of them on its own (a scheduler signalling every process) stops the
    sweep the same way (``request``). Only the main thread can install the handlers.
    """

    def __init__(self) -> None:
        self.signum = 0
        self._procs: set[subprocess.Popen] = set()
        self._forwarded: set[int] = set()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_STATUS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def _handle(self, signum: int, frame: object) -> None:
        if not self.signum:
            os.write(
                2,
                f"{signal.Signals(signum).name}: passing it on to the running stages; "
                "no new stage starts\n".encode(),
            )
        self.request(signum)

    def request(self, signum: int) -> None:
        """Stop the sweep on ``signum``: pass it on to the running stages, once (a repeat
        could reach a stage after it restored its default handlers, on its way out)."""
        self.signum = self.signum or signum  # first, then the copy below: see ``started``
        if signum in self._forwarded:
            return
        self._forwarded.add(signum)
        for proc in list(self._procs):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    def started(self, proc: subprocess.Popen) -> None:
        """Track a stage's process; stop it at once when a stop came while it was starting."""
        self._procs.add(proc)  # first, then the check: ``request`` sees it or it sees signum
        if self.signum:
            proc.send_signal(self.signum)

    def ended(self, proc: subprocess.Popen) -> None:
        """Forget a stage's process once it has exited."""
        self._procs.discard(proc)


def stopped_by(code: int, stop: StopSignals) -> int:
    """The signal a stage that exited with ``code`` was stopped by, 0 when it was not: a
    documented stop status (143, 75), death by SIGTERM / SIGUSR1, or any failure after the
    sweep passed a signal on."""
    for signum, status in STOP_STATUS.items():
        if code in (status, -signum):
            return signum
    return stop.signum if code != 0 else 0


class Progress:
    """Thread-safe one-line progress reports: ``[i/N] cell: message``."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._lock = threading.Lock()

    def __call__(self, cell: Cell, message: str) -> None:
        with self._lock:
            print(f"[{cell.index + 1}/{self.total}] {cell.name}: {message}", flush=True)


def last_json_object(text: str) -> dict[str, Any]:
    """The last line of ``text`` that is a JSON object (the commands' one-line summary)."""
    for line in reversed(re.split(r"[\r\n]", text)):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    return {}


def _wait(proc: subprocess.Popen) -> int:
    """Wait for a stage; on Ctrl-C let it checkpoint (it stops after its step), then re-raise."""
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)  # a duplicate of the terminal's is ignored by the trainer
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise


def run_stage(
    stage: Stage, cell_dir: Path, env: dict[str, str], stop: StopSignals | None = None
) -> tuple[int, dict[str, Any]]:
    """Run one stage as a subprocess (``stop`` passes signals on to it); on success write its
    marker. Returns (exit code, marker)."""
    stop = stop or StopSignals()
    resume = stage.resumable and (stage.out / CHECKPOINT).is_file()
    if not resume:
        shutil.rmtree(stage.out, ignore_errors=True)  # restart cleanly: no half-written output
    log = cell_dir / "logs" / f"{stage.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = stage.argv(resume)
    with open(log, "a") as f:  # earlier attempts stay in the log
        start_offset = f.tell()
        f.write(f"$ {shlex.join(argv)}\n")
        f.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        stop.started(proc)
        try:
            code = _wait(proc)
        finally:
            stop.ended(proc)
        wall = time.perf_counter() - t0
    marker = {
        "stage": stage.name,
        "spec": stage.spec,
        "wall_s": round(wall, 3),
        "resumed": resume,
        "exit_code": code,
        "log": log.relative_to(cell_dir).as_posix(),
        "command": shlex.join(argv),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if code == 0:
        with open(log) as f:
            f.seek(start_offset)
            marker["summary"] = last_json_object(f.read())
        write_atomic(marker_path(cell_dir, stage.name), json.dumps(marker, indent=2) + "\n")
    return code, marker


@functools.lru_cache(maxsize=64)
def _git(folder: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def repo_relative(path: Path) -> str:
    """``path`` relative to the root of the git repository holding it (else as given)."""
    root = _git(path.parent, "rev-parse", "--show-toplevel")
    with contextlib.suppress(ValueError, TypeError):
        return path.resolve().relative_to(Path(root).resolve()).as_posix()  # type: ignore[arg-type]
    return str(path)


def repo_commit(path: Path) -> str | None:
    """The commit checked out where ``path`` lives, ``+dirty`` when tracked files other than
    results (``results/``, ``runs/``) differ from it."""
    commit = _git(path.parent, "rev-parse", "HEAD")
    root = _git(path.parent, "rev-parse", "--show-toplevel")
    if commit is None or root is None:
        return None
    dirty = _git(
        Path(root),
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        ":(exclude)results",
        ":(exclude)runs",
    )
    return commit + ("+dirty" if dirty else "")


def write_cell_record(cell: Cell, cell_dir: Path, stages: list[Stage], extra: dict) -> None:
    """``cell.json``: the cell's labels, configs, and each stage's status and wall time."""
    record: dict[str, Any] = {
        "index": cell.index,
        "name": cell.name,
        "axes": cell.axes,
        "config": repo_relative(cell.config),
        "set": cell.sets,
        "prior_config": None if cell.prior_config is None else repo_relative(cell.prior_config),
        "commit": repo_commit(cell.config),
        "stages": {},
    }
    skipped = skipped_backfill(cell_dir, stages)
    for stage in stages:
        marker = read_marker(cell_dir, stage.name)
        done = marker is not None and stage_done(cell_dir, stage)
        status = "done" if done else "skipped" if stage.name in skipped else "pending"
        record["stages"][stage.name] = {"status": status} | (
            {k: marker[k] for k in ("wall_s", "resumed", "finished_at", "log")} if done else {}
        )
    record["stages"] |= extra
    statuses = {s["status"] for s in record["stages"].values()}
    record["status"] = next(
        (s for s in ("failed", "interrupted") if s in statuses),
        "done" if statuses <= {"done", "skipped"} else "pending",
    )
    write_atomic(cell_dir / "cell.json", json.dumps(record, indent=2) + "\n")


def run_cell(
    sweep: SweepConfig,
    cell: Cell,
    env: dict[str, str],
    progress: Progress,
    stop: StopSignals | None = None,
) -> CellOutcome:
    """Run the cell's unfinished stages in order; once one runs, every later one runs too.

    A stage stopped by SIGTERM / SIGUSR1 (``stop``) is recorded as interrupted, not failed:
    the next run resumes it from its checkpoint.
    """
    stop = stop or StopSignals()
    cell_dir = sweep.out / "cells" / cell.name
    stages = cell_stages(sweep, cell, cell_dir)
    with file_lock(cell_dir / ".lock", wait=False) as mine:
        if not mine:
            progress(cell, "running in another process, skipped")
            return CellOutcome(cell, "busy")
        first = first_stage_to_run(cell_dir, stages)
        if first is None:
            progress(cell, "finished earlier, skipped")
            return CellOutcome(cell, "done")
        for stage in stages[first:]:  # their results depend on the stage that reruns
            marker_path(cell_dir, stage.name).unlink(missing_ok=True)
        write_cell_record(cell, cell_dir, stages, {})
        outcome = CellOutcome(cell, "done")
        for stage in stages[first:]:
            if stop.signum:  # stopped between two stages
                return CellOutcome(cell, "interrupted", outcome.ran, signum=stop.signum)
            outcome.ran.append(stage.name)
            resume = stage.resumable and (stage.out / CHECKPOINT).is_file()
            progress(cell, f"{stage.name} started{' (resuming)' if resume else ''}")
            code, marker = run_stage(stage, cell_dir, env, stop)
            if code != 0:
                return _stage_ended(outcome, cell_dir, stages, stage, marker, stop, progress)
            write_cell_record(cell, cell_dir, stages, {})
            progress(cell, f"{stage.name} done in {marker['wall_s']:.1f} s")
        return outcome


def _stage_ended(
    outcome: CellOutcome,
    cell_dir: Path,
    stages: list[Stage],
    stage: Stage,
    marker: dict[str, Any],
    stop: StopSignals,
    progress: Progress,
) -> CellOutcome:
    """Record a stage that exited with an error status: interrupted by a stop signal (the
    sweep then stops too), or failed."""
    cell, code, ran = outcome.cell, marker["exit_code"], outcome.ran
    signum = stopped_by(code, stop)
    log = cell_dir / marker["log"]
    entry = {"exit_code": code, "log": marker["log"], "wall_s": marker["wall_s"]}
    if signum:
        stop.request(signum)
        name = signal.Signals(signum).name
        entry = {"status": "interrupted", "signal": name, **entry}
        write_cell_record(cell, cell_dir, stages, {stage.name: entry})
        progress(cell, f"{stage.name} interrupted by {name} (exit {code}); the next run resumes it")
        return CellOutcome(cell, "interrupted", ran, log, signum=signum)
    write_cell_record(cell, cell_dir, stages, {stage.name: {"status": "failed", **entry}})
    progress(cell, f"{stage.name} FAILED (exit {code}); log: {log}")
    return CellOutcome(cell, "failed", ran, log)


def default_threads() -> int:
    """CPUs this process may use (Slurm's and taskset's limits included)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_sweep(
    sweep: SweepConfig, cells: list[Cell], selected: list[Cell], jobs: int, threads: int
) -> list[CellOutcome]:
    """Run ``selected`` cells, ``jobs`` at once with ``threads // jobs`` threads each.

    SIGTERM / SIGUSR1 are passed on to the running stages and start nothing new: the cells
    they stop (and those not started) come back as interrupted.
    """
    jobs = max(1, min(jobs, len(selected)))
    per_cell = str(max(1, threads // jobs))
    env = {**os.environ, "OMP_NUM_THREADS": per_cell, "MKL_NUM_THREADS": per_cell}
    env.setdefault("TQDM_MININTERVAL", "30")  # a progress line per 30 s in logs, not per step
    progress, stop = Progress(len(cells)), StopSignals()

    def one(cell: Cell) -> CellOutcome:
        if stop.signum:
            return CellOutcome(cell, "interrupted", signum=stop.signum)
        try:
            outcome = run_cell(sweep, cell, env, progress, stop)
        except OSError as err:  # this cell's folder, not the others'
            progress(cell, f"FAILED: {err}")
            outcome = CellOutcome(cell, "failed", message=str(err))
        collect(sweep, cells)
        return outcome

    with stop:
        if jobs == 1:
            return [one(cell) for cell in selected]
        with ThreadPoolExecutor(jobs) as pool:
            return list(pool.map(one, selected))
