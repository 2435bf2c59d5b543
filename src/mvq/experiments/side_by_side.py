"""Run a few independent jobs side by side, each in its own process on one CPU thread.

Why: at batch 32 the paper's Table 3 networks use a second thread poorly (one VQ-VAE-2
training step runs at 1.44x the images/s of one thread on two threads, on a Zen 5 EPYC,
2026-12-05), so on a 2-core CPU two jobs on one thread each finish sooner than the same two
jobs one after the other on two threads. ``mvq demo`` trains its two models this way.

Each job is ``fn(*args)`` in a spawned process (``fn`` importable at module level, its result
JSON-serialisable), with ``torch.set_num_threads(1)`` and its stdout and stderr in its own log.
When a job ends, its thread goes to a job still running (SIGUSR2: one more thread, up to the
CPU count), so the core it freed does not idle while the other finishes; a job's numerics may
then differ in rounding from a run on one thread throughout.
The caller sees one progress line whenever a job's stage (a ``== <name>: ...`` line the job
prints) or the tens digit of its latest progress bar changes. What a job ends with comes back
as the caller's own: its value; an ``MVQError`` as an ``MVQError`` with the same one line;
``RunStopped`` (SIGTERM or SIGUSR1, which are forwarded to the jobs) and Ctrl-C as themselves
once every job has checkpointed and exited; anything else as ``JobFailed`` naming its log, with
the job's traceback printed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import torch

from mvq.core.errors import MVQError
from mvq.training.interrupt import RunStopped

STAGE = re.compile(r"^== (\S+)(?: \([^)]*\))?: (.*)$", re.M)  # "== vqvae2 (...): tokenizer"
PERCENT = re.compile(r"(\d+)%\|")  # tqdm's "NN%|"
FORWARDED = (signal.SIGTERM, signal.SIGUSR1)
MORE_THREADS = signal.SIGUSR2  # to a running job: take the thread of one that ended


class JobFailed(RuntimeError):
    """A job ended with an error that is not bad input (a bug): its traceback is in its log."""


def run_side_by_side(
    jobs: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]],
    logs: Path,
    report: Callable[[str], None] = print,
    poll_s: float = 1.0,
) -> dict[str, Any]:
    """Run ``jobs`` (name -> ``(fn, args)``) at once, one process and one thread each; their
    logs are ``logs/<name>.log``. Returns name -> ``fn(*args)``, in the order of ``jobs``."""
    logs.mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch threads
    procs = {}
    for name, (fn, args) in jobs.items():
        paths = (str(logs / f"{name}.log"), str(logs / f".{name}.result.json"))
        for path in paths:  # a job's log appears once it can take a thread (see _job)
            Path(path).unlink(missing_ok=True)
        procs[name] = ctx.Process(target=_job, args=(fn, args, *paths), name=f"mvq-{name}")
    previous = {s: signal.getsignal(s) for s in FORWARDED}
    for s in FORWARDED:  # a stop request reaches every job, which checkpoints and ends
        signal.signal(s, lambda signum, _frame: _forward(procs, signum))
    try:
        for p in procs.values():
            p.start()
        shown: dict[str, tuple[str, int]] = {}
        ended, threads, free = set(), dict.fromkeys(procs, 1), 0
        while any(p.is_alive() for p in procs.values()):
            time.sleep(poll_s)
            now_ended = {n for n, p in procs.items() if not p.is_alive()} - ended
            ended, free = ended | now_ended, free + len(now_ended)
            while free and _give_thread(procs, threads, logs):
                free -= 1
            now = {name: _progress(logs / f"{name}.log") for name in procs}
            if now != shown:
                shown = now
                report(_line(now))
    except KeyboardInterrupt:  # Ctrl-C reached the jobs too: let them checkpoint and end
        for p in procs.values():
            p.join(timeout=120)
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return {name: _outcome(name, logs) for name in procs}


def _give_thread(procs: dict[str, Any], threads: dict[str, int], logs: Path) -> bool:
    """Hand the thread of an ended job to the running job with the fewest (the first such);
    whether one took it. Only a job whose log exists can: its handler is in place by then
    (see ``_job``)."""
    running = [n for n, p in procs.items() if p.is_alive() and (logs / f"{n}.log").is_file()]
    if not running:
        return False
    name = min(running, key=threads.__getitem__)
    os.kill(procs[name].pid, MORE_THREADS)
    threads[name] += 1
    return True


def _take_thread(_signum: int, _frame: Any) -> None:
    """In a job, on ``MORE_THREADS``: one thread more, up to the CPU count. (Python runs this
    between two bytecodes of the main thread, so no torch op is running in it.)"""
    torch.set_num_threads(min(os.cpu_count() or 1, torch.get_num_threads() + 1))


def _forward(procs: dict[str, Any], signum: int) -> None:
    for p in procs.values():
        if p.is_alive() and p.pid is not None:
            os.kill(p.pid, signum)


def _line(progress: dict[str, tuple[str, int]]) -> str:
    """``vqvae2: tokenizer 1000 steps 40% | mvqvae: ...``."""
    return " | ".join(f"{n}: {s}" + (f" {p}%" if p >= 0 else "") for n, (s, p) in progress.items())


def _progress(log: Path) -> tuple[str, int]:
    """The job's latest stage line and progress-bar percentage (-1 when its stage has none)."""
    try:
        with log.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 8192))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return "starting", -1
    text = tail.replace("\r", "\n")
    stages = list(STAGE.finditer(text))
    stage = stages[-1][2] if stages else "starting"
    after = text[stages[-1].end() :] if stages else text
    percents = PERCENT.findall(after)
    return stage, (int(percents[-1]) // 10 * 10 if percents else -1)


def _job(fn: Callable[..., Any], args: tuple[Any, ...], log: str, result: str) -> None:
    """In the child: one thread, output to ``log``, the outcome to ``result`` as JSON."""
    torch.set_num_threads(1)
    signal.signal(MORE_THREADS, _take_thread)  # before the log exists: see _give_thread
    with open(log, "w", buffering=1) as out, redirect_stdout(out), redirect_stderr(out):
        try:
            outcome: dict[str, Any] = {"value": fn(*args)}
        except MVQError as err:
            outcome = {"error": str(err)}
        except RunStopped as stop:
            outcome = {"stopped": [stop.signum, stop.step, str(stop.checkpoint)]}
        except KeyboardInterrupt:
            outcome = {"interrupted": True}
        except BaseException:
            traceback.print_exc()
            outcome = {"failed": True}
    Path(result).write_text(json.dumps(outcome))


def _outcome(name: str, logs: Path) -> Any:
    """A finished job's value, or its ending raised in the caller."""
    log, result = logs / f"{name}.log", logs / f".{name}.result.json"
    try:
        outcome = json.loads(result.read_text())
    except (OSError, ValueError):
        outcome = {"failed": True}  # killed before it could say (out of memory, SIGKILL)
    finally:
        result.unlink(missing_ok=True)
    if "value" in outcome:
        return outcome["value"]
    if "error" in outcome:
        raise MVQError(outcome["error"])
    if "stopped" in outcome:
        signum, step, checkpoint = outcome["stopped"]
        raise RunStopped(signum, step, Path(checkpoint))
    if outcome.get("interrupted"):
        raise KeyboardInterrupt
    tail = log.read_text(errors="replace")[-4000:] if log.is_file() else ""
    print(tail, file=sys.stderr)
    raise JobFailed(f"{name} failed; its output and traceback are in {log}")
