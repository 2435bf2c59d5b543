"""``mvq.experiments.side_by_side``: jobs at once in their own processes on one thread each, their
endings brought back as the caller's own (values, one-line errors, stops), logs and progress."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from mvq.core.errors import ConfigError, MVQError
from mvq.experiments.side_by_side import JobFailed, run_side_by_side
from mvq.training.interrupt import RunStopped


def report_threads(tag: str) -> dict:
    print(f"== {tag}: working")
    for i in range(0, 101, 50):
        print(f"\rtrain: {i}%|###|", end="", flush=True)
    return {"tag": tag, "threads": torch.get_num_threads(), "pid": os.getpid()}


def bad_input() -> None:
    raise ConfigError("data.root 'nowhere' does not exist: give a folder of images")


def bug() -> None:
    raise ZeroDivisionError("a bug")


def stoppable(seconds: float) -> None:
    """Stops as the trainer does on SIGTERM: raises RunStopped after its 'checkpoint'."""

    def stop(signum, _frame):
        raise RunStopped(signum, 3, Path("ckpt/step_3.pt"))

    signal.signal(signal.SIGTERM, stop)
    print("== job: waiting", flush=True)
    time.sleep(seconds)


def threads_once_given(seconds: float) -> int:
    """Waits (up to ``seconds``) for a second thread; the threads it ends with."""
    deadline = time.monotonic() + seconds
    while torch.get_num_threads() == 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    return torch.get_num_threads()


def at_once() -> int:
    return torch.get_num_threads()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="a second thread needs a second core")
def test_a_job_that_ends_hands_its_thread_to_one_still_running(tmp_path):
    out = run_side_by_side(
        {"long": (threads_once_given, (60.0,)), "short": (at_once, ())}, tmp_path, poll_s=0.05
    )
    assert out == {"long": 2, "short": 1}


def test_jobs_run_at_once_on_one_thread_each_and_return_in_order(tmp_path):
    lines: list[str] = []
    out = run_side_by_side(
        {"b": (report_threads, ("b",)), "a": (report_threads, ("a",))},
        tmp_path,
        lines.append,
        poll_s=0.05,
    )
    assert list(out) == ["b", "a"] and [v["tag"] for v in out.values()] == ["b", "a"]
    assert all(v["threads"] == 1 for v in out.values())
    assert len({v["pid"] for v in out.values()} | {os.getpid()}) == 3
    assert "train: 100%" in (tmp_path / "a.log").read_text()
    assert not list(tmp_path.glob(".*.result.json"))
    assert all(line.startswith("b: ") and " | a: " in line for line in lines)


def test_bad_input_comes_back_as_the_same_one_line_error(tmp_path):
    with pytest.raises(MVQError, match=r"^data.root 'nowhere' does not exist: give a folder"):
        run_side_by_side({"x": (bad_input, ()), "y": (report_threads, ("y",))}, tmp_path, print)


def test_a_bug_names_its_log_which_keeps_the_traceback(tmp_path, capsys):
    with pytest.raises(JobFailed, match=r"x failed; its output and traceback are in .*x\.log"):
        run_side_by_side({"x": (bug, ())}, tmp_path, print)
    assert "ZeroDivisionError: a bug" in (tmp_path / "x.log").read_text()
    assert "ZeroDivisionError: a bug" in capsys.readouterr().err


def test_sigterm_reaches_the_jobs_and_comes_back_as_run_stopped(tmp_path):
    def send():  # once both jobs are up, stop the caller as a scheduler would
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            logs = [tmp_path / f"{n}.log" for n in ("p", "q")]
            if all(p.is_file() and "waiting" in p.read_text() for p in logs):
                break
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=send, daemon=True).start()
    start = time.monotonic()
    with pytest.raises(RunStopped) as stopped:
        run_side_by_side({"p": (stoppable, (60,)), "q": (stoppable, (60,))}, tmp_path, print)
    assert time.monotonic() - start < 50  # did not wait for the 60 s sleeps
    assert stopped.value.signum == signal.SIGTERM and stopped.value.step == 3
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back
