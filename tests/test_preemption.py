"""Runs that survive schedulers and full disks, through the ``mvq`` command: SIGTERM from
outside a running ``mvq train`` (stops within seconds, status 143, exact resume), the README's
Slurm requeue recipe (SIGUSR1, status 75, requeue, resume), and a full disk while writing a
checkpoint, a model, eval outputs or a log line (one line, exit 2, the previous file intact).

The trainer's own contracts (the step a signal stops at, DDP ranks agreeing, the fallback to an
intact ``step_<N>.pt``) are in test_training.py; the sweep's in test_sweep.py.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mvq.cli import main
from mvq.core.errors import DiskFullError, MVQError
from mvq.core.pretrained import atomic_write_file
from mvq.tokenizers import create_tokenizer, load_tokenizer
from mvq.training import checkpoint_path, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TINY = [
    "model_config.channels=16",
    "model_config.res_channels=8",
    "model_config.num_hypotheses=4",
    "train.val_batches=1",
    "train.log_every=2",
    "train.ckpt_every=2",
    "train.sample_every=100000",
]
SETS = [a for s in TINY for a in ("--set", s)]


@pytest.fixture(scope="module")
def folder_config(tmp_path_factory) -> Path:
    """A run config of a narrow MVQVAE on a folder of 48 + 8 random 28 x 28 grey PNGs."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, n in (("train", 48), ("val", 8)):
        (root / split).mkdir()
        for i in range(n):
            pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / f"{i}.png")
    cfg = root / "run.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {"model": "mvqvae_fmnist_s4_k16", "data": {"name": "folder", "root": str(root)}}
        )
    )
    return cfg


def train_argv(cfg: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(cfg), "--out", str(out), "--batch-size", "8", *SETS, *extra]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until ``path`` exists (failing if ``proc`` ends first)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"ended with {proc.returncode} before {path} existed"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)


def same_weights(a: Path, b: Path) -> None:
    sa, sb = load_tokenizer(a).state_dict(), load_tokenizer(b).state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_sigterm_from_outside_stops_within_seconds_and_resumes_exactly(
    tmp_path, folder_config, capsys
):
    cut = tmp_path / "cut"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = train_argv(folder_config, cut, "--max-steps", "100000")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mvq.cli", *argv],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(checkpoint_path(cut), proc)  # step 2's checkpoint
        time.sleep(0.5)  # a few steps after it
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    took = time.monotonic() - sent
    assert proc.returncode == 143, stderr[-3000:]
    assert took < 30, f"{took:.1f} s from SIGTERM to exit"
    step = load_checkpoint(checkpoint_path(cut))["step"]
    last = stderr.strip().splitlines()[-1]
    assert last == (
        f"mvq: SIGTERM: stopped after step {step} with a checkpoint in {checkpoint_path(cut)}; "
        "rerun the same command with --resume to continue (exit status 143)"
    )
    assert "Traceback" not in stderr and step >= 2
    # --resume ends bit-identical to a run that was never stopped, on the thread count the
    # stopped run had (other counts sum in another order: CI runs pytest with 2 threads)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(train_argv(folder_config, cut, "--max-steps", str(step + 3), "--resume")) == 0
        assert main(train_argv(folder_config, tmp_path / "full", "--max-steps", str(step + 3))) == 0
    finally:
        torch.set_num_threads(threads)
    same_weights(cut / "model", tmp_path / "full" / "model")
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["steps"] == step + 3


def test_train_prior_checkpoints_on_sigusr1_with_status_75_and_resumes(tmp_path):
    from test_pipeline import make_tokens, prior_config

    _, tokens = make_tokens(tmp_path)
    run = tmp_path / "prior"
    argv = [
        "train-prior",
        "--tokens",
        str(tokens),
        "--config",
        str(prior_config(tmp_path, "transformer_1p1")),
        "--out",
        str(run),
        "--set",
        "train.ckpt_every=2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mvq.cli", *argv, "--max-steps", "100000"],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(checkpoint_path(run), proc)
        proc.send_signal(signal.SIGUSR1)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 75, stderr[-3000:]
    step = load_checkpoint(checkpoint_path(run))["step"]
    assert stderr.strip().splitlines()[-1] == (
        f"mvq: SIGUSR1: checkpointed on request at step {step} in {checkpoint_path(run)}; "
        "requeue the same command with --resume to continue (exit status 75)"
    )
    assert main([*argv, "--max-steps", str(step + 1), "--resume"]) == 0
    assert load_checkpoint(checkpoint_path(run))["step"] == step + 1


def readme_slurm_recipe() -> str:
    """The README's Slurm requeue recipe (the bash block with ``--signal=USR1``)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    recipe = [b for b in blocks if "#SBATCH --signal=USR1" in b]
    assert len(recipe) == 1, "README has one Slurm requeue recipe"
    return recipe[0]


@pytest.mark.real_data
def test_readme_slurm_recipe_checkpoints_on_sigusr1_requeues_and_resumes(tmp_path):
    """The recipe's five lines under bash, with a fake ``srun`` (runs the command with this
    test's tiny sizes appended) and a fake ``scontrol`` (records its arguments)."""
    recipe = readme_slurm_recipe()
    assert len(recipe.strip().splitlines()) == 5
    assert "#SBATCH --requeue" in recipe and "--resume" in recipe
    job, bin_dir = tmp_path / "job.sh", tmp_path / "bin"
    job.write_text(recipe)
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nexec "$@" $MVQ_TEST_ARGS\n')
    (bin_dir / "scontrol").write_text('#!/bin/bash\necho "$@" >> "$SCONTROL_CALLS"\n')
    for fake in ("srun", "scontrol"):
        (bin_dir / fake).chmod(0o755)
    (tmp_path / "configs").symlink_to(ROOT / "configs")  # the recipe's relative paths
    path = f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    calls = tmp_path / "scontrol_calls"
    env = {
        **os.environ,
        "PATH": path,
        "SLURM_JOB_ID": "4242",
        "OMP_NUM_THREADS": "1",
        "SCONTROL_CALLS": str(calls),
    }
    run_dir = tmp_path / "runs" / "mvq_s4"

    def submit(max_steps: int) -> subprocess.Popen:
        args = " ".join(["--max-steps", str(max_steps), "--batch-size", "8", *SETS])
        return subprocess.Popen(
            ["bash", str(job)],
            cwd=tmp_path,
            text=True,
            env=env | {"MVQ_TEST_ARGS": args},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    first = submit(100000)
    try:
        wait_for(checkpoint_path(run_dir), first)
        children = Path(f"/proc/{first.pid}/task/{first.pid}/children").read_text().split()
        assert len(children) == 1  # srun exec'd mvq: the job step's process
        os.kill(int(children[0]), signal.SIGUSR1)  # what --signal=USR1@120 sends
        _, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0, stderr[-3000:]  # the script went on to requeue
    assert "mvq: SIGUSR1: checkpointed on request at step" in stderr
    assert calls.read_text() == "requeue 4242\n"
    step = load_checkpoint(checkpoint_path(run_dir))["step"]
    again = submit(step + 2)  # the requeued job: the same script
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr[-3000:]
    assert json.loads(stdout.splitlines()[-1])["steps"] == step + 2
    assert calls.read_text() == "requeue 4242\n"  # finished: not requeued again
    assert load_checkpoint(checkpoint_path(run_dir))["step"] == step + 2


def open_dev_full() -> int:
    """A descriptor writing to /dev/full (never created: opened without O_CREAT)."""
    if not (os.path.exists("/dev/full") and stat.S_ISCHR(os.stat("/dev/full").st_mode)):
        pytest.skip("no /dev/full device on this system")
    return os.open("/dev/full", os.O_WRONLY)


def send_to_dev_full(monkeypatch, prefixes: tuple[str, ...] = ("",)) -> None:
    """The temporary files mvq writes whose names start with one of ``prefixes`` send their
    bytes to /dev/full, whose writes fail with the kernel's ENOSPC: a full disk."""
    mkstemp = tempfile.mkstemp

    def full_mkstemp(*args, **kwargs):
        fd, path = mkstemp(*args, **kwargs)
        if Path(path).name.startswith(prefixes):
            full = open_dev_full()
            os.dup2(full, fd)  # the file stays (empty) where it is, its bytes go to /dev/full
            os.close(full)
        return fd, path

    monkeypatch.setattr(tempfile, "mkstemp", full_mkstemp)


def one_line_error(capsys) -> str:
    """The last line of stderr, the error; no traceback before it."""
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr, stderr
    return stderr.strip().splitlines()[-1]


def test_full_disk_while_checkpointing_is_one_line_exit_2_and_the_last_checkpoint_loads(
    tmp_path, folder_config, capsys, monkeypatch
):
    run = tmp_path / "run"
    assert main(train_argv(folder_config, run, "--max-steps", "2")) == 0
    last = checkpoint_path(run)
    before = last.read_bytes()
    send_to_dev_full(monkeypatch, (".last.pt.", ".step_", ".best.pt."))
    capsys.readouterr()
    assert main(train_argv(folder_config, run, "--max-steps", "4", "--resume")) == 2
    err = one_line_error(capsys)
    assert err.startswith(f"mvq: error: no space left on the device of {last} while writing it (")
    assert re.search(r"\(at least \d+\.\d kB to write, 0 B written when it filled up\)", err), err
    assert err.endswith(f"the previous {last} is unchanged")
    assert last.read_bytes() == before and load_checkpoint(last)["step"] == 2
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.pt", "last.pt"]  # no temp


def test_full_disk_for_every_writer_is_one_line_naming_the_file(tmp_path, monkeypatch):
    """Files (atomic_write_file: eval outputs, sweep tables, token files, the report) and
    folders (a saved model) under a real ENOSPC; the previous file or folder stays."""
    send_to_dev_full(monkeypatch)
    assert issubclass(DiskFullError, MVQError) and issubclass(DiskFullError, OSError)
    target = tmp_path / "eval.json"
    target.write_text("{}")
    with pytest.raises(DiskFullError) as err:
        atomic_write_file(target, "x" * 10_000)
    assert str(err.value) == (
        f"no space left on the device of {target} while writing it (10.0 kB to write, 0 B "
        f"written when it filled up): free some space there or write elsewhere (another "
        f"--out); the previous {target} is unchanged"
    )
    assert target.read_text() == "{}" and os.listdir(tmp_path) == ["eval.json"]
    model = create_tokenizer("vqvae2_fmnist_s4_k16", channels=8, res_channels=4)
    saved = model.save_pretrained(tmp_path / "model")
    files = {p.name: p.read_bytes() for p in saved.iterdir()}
    write_bytes = Path.write_bytes

    def full_write_bytes(self: Path, data: bytes) -> int:
        self.touch()
        with os.fdopen(open_dev_full(), "wb") as f:
            return f.write(data)

    try:
        Path.write_bytes = full_write_bytes  # the files of a folder written atomically
        with pytest.raises(DiskFullError, match=r"of .*model while writing it \(\d+\.\d kB"):
            model.save_pretrained(tmp_path / "model")
    finally:
        Path.write_bytes = write_bytes
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == files
    assert sorted(os.listdir(tmp_path)) == ["eval.json", "model"]  # no temporary folder


def test_full_disk_while_logging_a_row_is_one_line_and_takes_the_half_row_back(
    tmp_path, monkeypatch
):
    from mvq.training.logger import append

    path = tmp_path / "metrics.csv"
    path.write_bytes(b"step,split,name,value\r\n")
    write, sizes = os.write, []

    def half_then_full(fd: int, data: bytes) -> int:
        sizes.append(len(data))
        if len(sizes) == 1:
            return write(fd, bytes(data[:5]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(os, "write", half_then_full)
        with pytest.raises(DiskFullError, match=r"metrics\.csv while writing it \(18 B to write\)"):
            append(path, b"1,train,loss,1.0\r\n")
    assert sizes == [18, 13] and path.read_bytes() == b"step,split,name,value\r\n"


def test_a_full_disk_on_a_write_that_names_no_file_is_one_line_naming_the_output(
    tmp_path, monkeypatch, capsys
):
    """A PNG or other plain write: the OSError has no file name; the line names --out."""

    def full(out):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("mvq.training.runconfig.write_paper_configs", full)
    assert main(["configs", "--out", str(tmp_path / "configs")]) == 2
    assert one_line_error(capsys) == (
        f"mvq: error: no space left on the device while writing under {tmp_path / 'configs'} "
        "(No space left on device): free some space there or write elsewhere (another --out)"
    )
