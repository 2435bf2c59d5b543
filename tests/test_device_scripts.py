"""The GPU scripts on the CPU (issue 30): ``benchmarks/device_checks.sh`` and
``benchmarks/device_study.sh`` run with ``DEVICE=cpu`` and tiny sizes, so that they work when a
GPU is lent: every part of the acceptance run, a failing part named without stopping the others,
the resume check's teeth, a study cell brought back through the archive that ``mvq sweep
--collect`` takes up, and cells still running at the deadline left out."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

pytestmark = [pytest.mark.dry_run, pytest.mark.real_data]
ROOT = Path(__file__).resolve().parents[1]
PARTS = {
    "tests",
    "e2e_mvqvae",
    "e2e_mvqgan",
    "torchrun",
    "bench_mh_dropout",
    "bench_train_step",
    "bench_sampling",
}


def helpers(name: str):
    """``benchmarks/NAME.py`` as a module (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(argv: list[str], timeout: float, **env: str) -> subprocess.CompletedProcess:
    """``argv`` from the repository root with this interpreter and one thread, its scratch
    folders under ``TMPDIR`` when given; on a timeout its whole process group is killed."""
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **env}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # torchrun, mvq
    pipe = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True, **pipe)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out)


def test_acceptance_run_dry_run(tmp_path) -> None:
    out = tmp_path / "out"
    proc = run(
        ["bash", "benchmarks/device_checks.sh"],
        240,
        DEVICE="cpu",
        OUT=str(out),
        TMPDIR=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["parts"]) == PARTS and summary["failed"] == [] and summary["ok"]
    assert all(p["status"] == "ok" for p in summary["parts"].values())
    e2e = summary["parts"]["e2e_mvqvae"]["result"]
    assert e2e["resume_exact"] and e2e["samples_written"] == 32 and e2e["ok"]
    assert e2e["fd_fmnist_classifier"] and e2e["eval_device"] == "cpu"
    assert summary["parts"]["tests"]["result"]["collected"] >= 50
    assert summary["parts"]["torchrun"]["result"]["backend"] == "gloo"
    results = {name: part["result"] for name, part in summary["parts"].items()}
    assert results["bench_mh_dropout"]["chunked_step_ms_j8"] > 0
    assert results["bench_train_step"]["images_per_s_fp32"] > 0
    assert results["bench_sampling"]["min_speedup_vs_table6_b64_cached"] > 0
    # the device tool brings back at most 8 files: three
    assert sorted(p.name for p in out.iterdir()) == [
        "device_checks.log",
        "logs.tar.gz",
        "summary.json",
    ]
    with tarfile.open(out / "logs.tar.gz") as tar:
        assert {Path(n).stem for n in tar.getnames() if n.endswith(".log")} == PARTS


def test_a_failing_part_is_named_and_the_others_still_run(tmp_path) -> None:
    """NCCL asked for on a machine without a GPU: torchrun fails, the benchmark after it runs,
    the summary and the last line name the failure, the exit status is 1."""
    out = tmp_path / "out"
    proc = run(
        ["bash", "benchmarks/device_checks.sh"],
        120,
        DEVICE="cpu",
        OUT=str(out),
        PARTS="torchrun bench_sampling",
        TORCHRUN_BACKEND="nccl",
        TMPDIR=str(tmp_path),
    )
    assert proc.returncode == 1, proc.stdout[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == ["torchrun"] and not summary["ok"]
    assert summary["parts"]["bench_sampling"]["status"] == "ok"
    assert proc.stdout.strip().splitlines()[-1].startswith("failed: torchrun")


def test_the_resume_check_has_teeth(tmp_path) -> None:
    """Equal weights pass; a weight off by 1e-3, a missing tensor or a kill that came after the
    run's end (nothing resumed) fail."""
    dc = helpers("device_checks")
    state = {"w": torch.randn(4, 4), "b": torch.zeros(4)}

    def saved(name: str, tensors: dict) -> Path:
        (tmp_path / name / "model").mkdir(parents=True)
        save_file(tensors, str(tmp_path / name / "model" / "model.safetensors"))
        return tmp_path / name

    full, same = saved("full", state), saved("same", {k: v.clone() for k, v in state.items()})
    off = saved("off", {"w": state["w"] + 1e-3, "b": state["b"]})
    fewer = saved("fewer", {"w": state["w"]})
    assert dc.compare_resume(full, same, killed_at=4, steps=8)["ok"]
    assert dc.compare_resume(full, same, killed_at=4, steps=8)["exact"]
    assert not dc.compare_resume(full, off, killed_at=4, steps=8)["ok"]
    assert not dc.compare_resume(full, fewer, killed_at=4, steps=8)["ok"]
    assert not dc.compare_resume(full, same, killed_at=8, steps=8)["ok"]


def tiny_sweep(tmp_path: Path, max_steps: int = 4) -> Path:
    """A one-cell sweep of the study's form (train, encode, prior, eval, sample eval) with tiny
    networks and budgets (``max_steps`` tokenizer steps), in a folder that is a git repository
    with the study's .gitignore."""
    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(ROOT / "results" / "fmnist" / ".gitignore", study / ".gitignore")
    subprocess.run(["git", "init", "-q", str(study)], check=True)
    tiny = [
        "model_config.channels=16",
        "model_config.res_channels=8",
        "model_config.num_hypotheses=8",
        "train.val_batches=1",
        "train.log_every=2",
        "train.sample_every=4",
        "train.ckpt_every=2",
    ]
    prior = [
        "model_config.primary_layers=1",
        "model_config.secondary_layers=1",
        "model_config.primary_dim=32",
        "model_config.secondary_dim=32",
        "model_config.primary_heads=2",
        "model_config.secondary_heads=2",
        "train.batch_size=16",
        "train.val_batches=1",
    ]
    spec = {
        "name": "tiny",
        "out": str(study / "tiny"),
        "configs": [
            {
                "config": "configs/mvqvae_fmnist_s4_k16.yaml",
                "method": "mvqvae",
                "prior": "configs/priors/transformer_4p1.yaml",
            }
        ],
        "seeds": [0],
        "budget": {"max_steps": max_steps, "batch_size": 8},
        "set": tiny,
        "prior": {"max_steps": 2, "set": prior},
        "eval": {"split": "val", "n": 32, "metrics": ["mse"], "sample_metrics": ["fd_fmnist"]},
    }
    path = study / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_study_dry_run_brings_back_the_cell_that_collect_takes_up(tmp_path) -> None:
    """device_study.sh runs the cell with ``mvq sweep FILE --cell I`` (the command a CPU run
    uses, so its records are a CPU run's but for the machine's device, paths and times) and
    packs the files git would commit; unpacked here they are byte for byte those the run
    wrote, ``--collect`` counts the cell as finished, and a second unpack keeps it."""
    sweep = tiny_sweep(tmp_path)
    study = sweep.parent  # a git repository with the study's .gitignore, like results/fmnist
    out = tmp_path / "out"
    proc = run(
        ["bash", "benchmarks/device_study.sh", str(sweep), "5"],
        240,
        DEVICE="cpu",
        OUT=str(out),
        JOBS="1",
        THREADS="1",
        MIN_START="0",
        TMPDIR=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "study.log",
        "study.tar.gz",
        "study_logs.tar.gz",
    ]
    here = study / "here"
    unpack = [
        sys.executable,
        "benchmarks/device_study.py",
        "unpack",
        str(out / "study.tar.gz"),
        str(sweep),
        "--out",
        str(here),
    ]
    proc = run(unpack, 60)
    assert proc.returncode == 0 and "unpacked 1 of 1 cells" in proc.stdout, proc.stdout
    collect = [sys.executable, "-m", "mvq.cli", "sweep", str(sweep), "--out", str(here)]
    assert "collected 1 of 1 cells" in run([*collect, "--collect"], 60).stdout
    assert run(unpack, 60).returncode == 1  # a second time: finished here already, kept
    ds = helpers("device_study")
    name = "method=mvqvae__seed=0"
    ran, got = (study / d / "cells" / name for d in ("tiny", "here"))
    files = ds.committed_files(ran)
    stages = {"train", "encode", "prior", "eval", "sample_eval"}
    assert {f"markers/{s}.json" for s in stages} | {"cell.json", "eval/eval.json"} <= set(files)
    assert not any(f.endswith((".safetensors", ".pt", ".log", ".lock")) for f in files)
    assert ds.committed_files(got) == files
    for f in files:
        assert (got / f).read_bytes() == (ran / f).read_bytes(), f
    assert json.loads((got / "cell.json").read_text())["status"] == "done"
    assert json.loads((got / "eval" / "eval.json").read_text())["meta"]["device"] == "cpu"
    with tarfile.open(out / "study.tar.gz") as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
    assert manifest["cells"] == [name] and manifest["commit"]
    with tarfile.open(out / "study_logs.tar.gz") as tar:  # the stage logs travel apart
        assert f"cells/{name}/logs/train.log" in tar.getnames()
    # the gitignore reader that stands in for git where the machine has none: the same files
    shutil.rmtree(study / ".git")
    assert ds.committed_files(ran) == files


def test_cells_still_running_at_the_deadline_are_interrupted_and_not_packed(tmp_path) -> None:
    sweep = tiny_sweep(tmp_path, max_steps=100_000)  # still training at the 3 s deadline
    work, out = tmp_path / "work", sweep.parent / "late"
    script = [sys.executable, "benchmarks/device_study.py"]
    proc = run(
        [
            *script,
            "run",
            str(sweep),
            "--minutes",
            "0.05",
            "--min-start",
            "0",
            "--jobs",
            "1",
            "--threads",
            "1",
            "--out",
            str(out),
            "--work",
            str(work),
        ],
        120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    record = json.loads((work / "run.json").read_text())
    assert [c["status"] for c in record["cells"]] == ["interrupted"], record
    archive = tmp_path / "late.tar.gz"
    proc = run(
        [
            *script,
            "pack",
            str(sweep),
            "--out",
            str(out),
            "--record",
            str(work / "run.json"),
            "--archive",
            str(archive),
        ],
        60,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    with tarfile.open(archive) as tar:
        assert tar.getnames() == ["manifest.json"]


def test_a_stale_repository_in_the_copy_gives_way_to_the_prepared_head(tmp_path) -> None:
    """The device tool sent a .git at the session's first commit while the tree was a later
    one (the first GPU run's records said 89d11d3+dirty): device_env.sh sets a .git whose HEAD
    is not .device/git/HEAD_COMMIT aside and uses the prepared clone, so records name the tree."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    copy = tmp_path / "copy"
    copy.mkdir()
    subprocess.run([*git, "init", "-q", str(copy)], check=True)
    heads = []
    for text in ("old", "new"):
        (copy / "f.txt").write_text(text)
        subprocess.run([*git, "-C", str(copy), "add", "f.txt"], check=True)
        subprocess.run([*git, "-C", str(copy), "commit", "-qm", text], check=True)
        heads.append(
            subprocess.run(
                ["git", "-C", str(copy), "rev-parse", "HEAD"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
        )
    prepared = copy / ".device" / "git"
    prepared.mkdir(parents=True)
    (prepared / "HEAD_COMMIT").write_text(heads[1] + "\n")
    with tarfile.open(prepared / "head.tar.gz", "w:gz") as tar:
        tar.add(copy / ".git", arcname=".git")
    subprocess.run(["git", "-C", str(copy), "reset", "-q", "--soft", heads[0]], check=True)
    script = f"ROOT={copy}; source {ROOT}/benchmarks/device_env.sh; git -C {copy} rev-parse HEAD"
    proc = run(["bash", "-c", script], 60)
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.split()[-1] == heads[1] and "using the prepared" in proc.stdout
    assert (copy / ".git.sent").is_dir()
    proc = run(["bash", "-c", script], 60)  # now at the prepared HEAD: nothing to do
    assert proc.stdout.split()[-1] == heads[1] and "using the prepared" not in proc.stdout
