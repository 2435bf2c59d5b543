"""The ``mvq`` command line: configs, training on real data, resume, and one-line errors."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import expect_error

from mvq.cli import main
from mvq.tokenizers import load_tokenizer
from mvq.training.runconfig import paper_run_configs, render_yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "model_config.channels=16", "--set", "model_config.res_channels=8"]


def write_config(tmp_path: Path, **sections) -> Path:
    cfg = {"model": "mvqvae_fmnist_s4_k16", "data": {"name": "fashion_mnist"}} | sections
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_committed_configs_are_the_generated_ones() -> None:
    configs = paper_run_configs()
    assert len(configs) == 4 * 3 * 2 * 11  # data sets x tokens x K x architectures
    for name, config in configs.items():
        assert (ROOT / "configs" / f"{name}.yaml").read_text() == render_yaml(config), name


def test_config_errors_are_one_line_with_a_suggestion(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    cfg = write_config(tmp_path, model_config={"num_hypothesis": 8})
    expect_error(
        capsys,
        ["train", "--config", str(cfg), "--out", str(run)],
        "unknown key 'num_hypothesis' (did you mean 'num_hypotheses'?)",
    )
    cfg = write_config(tmp_path, trian={"lr": 1})
    expect_error(
        capsys, ["train", "--config", str(cfg), "--out", str(run)], "(did you mean 'train'?)"
    )
    cfg = write_config(tmp_path)
    expect_error(
        capsys,
        ["train", "--config", str(cfg), "--out", str(run), "--set", "train.max_step=3"],
        "(did you mean 'max_steps'?)",
    )
    expect_error(
        capsys,
        ["train", "--config", str(tmp_path / "nope.yaml"), "--out", str(run)],
        "does not exist",
    )
    assert not run.exists()  # nothing half-written


def test_data_errors_are_one_line(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    cfg = write_config(tmp_path, data={"name": "fashion_mnist", "root": str(tmp_path / "none")})
    expect_error(capsys, ["train", "--config", str(cfg), "--out", str(run)], "fashion")
    assert not run.exists()


@pytest.mark.real_data
def test_image_size_mismatch_and_unwritable_run_dir(tmp_path, capsys) -> None:
    cfg = write_config(tmp_path, model="mvqvae_cifar10_s4_k16")
    expect_error(
        capsys, ["train", "--config", str(cfg), "--out", str(tmp_path / "r")], "expects (3, 32, 32)"
    )
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = write_config(tmp_path)
    expect_error(
        capsys,
        ["train", "--config", str(cfg), "--out", str(blocker / "run"), "--max-steps", "2", *TINY],
        "not writable",
    )


@pytest.mark.real_data
def test_train_then_resume_exactly_on_real_data(tmp_path, capsys) -> None:
    cfg = write_config(
        tmp_path,
        model_config={"num_hypotheses": 8},
        train={"log_every": 2, "sample_every": 4, "ckpt_every": 2},
    )
    base = ["train", "--config", str(cfg), *TINY, "--set", "train.val_batches=2"]
    assert main([*base, "--out", str(tmp_path / "full"), "--max-steps", "6"]) == 0
    assert main([*base, "--out", str(tmp_path / "cut"), "--max-steps", "3"]) == 0
    expect_error(capsys, [*base, "--out", str(tmp_path / "cut"), "--max-steps", "6"], "--resume")
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "cut"), "--max-steps", "6", "--resume"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 6
    full = load_tokenizer(tmp_path / "full" / "model").state_dict()
    cut = load_tokenizer(tmp_path / "cut" / "model").state_dict()
    for key in full:
        assert torch.equal(full[key], cut[key]), key
    assert (tmp_path / "full" / "samples" / "recon_0000004.png").is_file()
    assert (tmp_path / "full" / "metrics.csv").read_text().startswith("step,split,name,value")


@pytest.mark.real_data
def test_corrupted_checkpoint_on_resume_is_a_clear_error(tmp_path, capsys) -> None:
    cfg = write_config(tmp_path, model_config={"num_hypotheses": 4})
    run = ["train", "--config", str(cfg), *TINY, "--set", "train.val_batches=1"]
    run += ["--out", str(tmp_path / "r")]
    assert main([*run, "--max-steps", "1"]) == 0
    (tmp_path / "r" / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    expect_error(capsys, [*run, "--max-steps", "2", "--resume"], "corrupted")


@pytest.mark.real_data
def test_tiny_mvqvae_trains_stably_on_fashion_mnist(tmp_path) -> None:
    """SPEC: MVQ can diverge (||y|| -> 1e8); with Table 3's BatchNorm losses stay finite, fall."""
    from mvq.training.runconfig import RunConfig
    from mvq.training.tokenizer_job import train_tokenizer

    cfg = RunConfig(
        "mvqvae_fmnist_s4_k16",
        {"channels": 32, "res_channels": 16, "num_hypotheses": 32},
        {"name": "fashion_mnist"},
        {"max_steps": 300, "log_every": 50, "sample_every": 300, "val_batches": 4},
    )
    train_tokenizer(cfg, tmp_path / "run")
    rows = [r.split(",") for r in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]]
    rec = [float(v) for step, split, name, v in rows if split == "train" and name == "rec"]
    y_rms = [float(v) for step, split, name, v in rows if split == "train" and name == "y_rms"]
    assert all(math.isfinite(v) for v in rec + y_rms)
    assert rec[-1] < 0.5 * rec[0]
    assert max(y_rms) < 10.0  # the encoder output does not blow up


@pytest.mark.real_data
def test_demo_end_to_end_quick(tmp_path, capsys, monkeypatch) -> None:
    """`make demo`'s job with tiny step counts: both tokenizers, priors, grids and the table."""
    from mvq.metrics import ClassifierConfig, load_classifier

    tiny = load_classifier(
        ClassifierConfig(width=4, feature_dim=16, epochs=1, train_subset=1024),
        cache=tmp_path / "classifier",
    )
    monkeypatch.setattr("mvq.eval.evaluate.load_fd_classifier", lambda *a: tiny)
    out = tmp_path / "demo"
    argv = [
        "demo",
        "--out",
        str(out),
        "--steps",
        "4",
        "--prior-steps",
        "3",
        "--subset",
        "256",
        "--num-hypotheses",
        "8",
        "--one-at-a-time",  # in this process, so that the stand-in classifier is the one used
    ]
    assert main(argv) == 0
    for name in ("reconstructions.png", "samples_vqvae2.png", "samples_mvqvae.png", "metrics.md"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mvqvae"]["bits_per_image"] == 31 and metrics["vqvae2"]["bits_per_image"] == 15
    for m in metrics.values():  # 8 codes per stream: a prior that learned beats uniform, ln 8
        assert math.isfinite(m["mse"]) and 0 < m["prior_val_nll"] < math.log(8)
        bits = m["prior_val_nll"] * m["tokens_per_image"] / math.log(2)  # nats/token -> bits/image
        assert m["prior_val_bits_per_image"] == pytest.approx(bits, rel=1e-5)
    for name in ("fd_fmnist", "sample_fd_fmnist", "sample_f8", "sample_f1_8"):
        assert all(math.isfinite(m[name]) for m in metrics.values()), name
    assert "random_mask_fd_fmnist" in metrics["mvqvae"]
    for name in ("vqvae2", "mvqvae"):  # the training images the prior reads (3 x 64), all test
        splits = json.loads((out / f"{name}_tokens" / "meta.json").read_text())["splits"]
        assert splits == {"train": 3 * 64, "val": 256}
    assert (out / "eval_mvqvae_samples" / "eval.json").is_file()
    assert (out / "report.html").is_file()  # the demo ends with its page
    printed = capsys.readouterr().out
    assert "| mvqvae |" in printed
    # the stage times end the output, with the machine they were measured on
    table = printed.split("Stage times on ")[1]
    stages = [
        "vqvae2 tokenizer",
        "vqvae2 encode + prior + 64 samples",
        "vqvae2 mvq eval",
        "mvqvae tokenizer",
        "mvqvae encode + prior + 64 samples",
        "mvqvae mvq eval",
        "reconstruction grid",
        "report page",
        "total",
    ]
    rows = [ln.split(" | ")[0][2:] for ln in table.splitlines() if ln.startswith("| ")]
    assert rows[1:] == stages  # after the header row
    assert f"{tiny.meta['key']} (accuracy" in (out / "metrics.md").read_text()  # not the shipped
    assert main(argv) == 0  # a re-run reuses the finished runs
    assert "one model after the other" in printed
    capsys.readouterr()
    # The default on a CPU: both models at once, one process and thread each, output in logs.
    # --seed retrains everything from another draw, and the table names it.
    assert main([*argv[:2], str(tmp_path / "demo1"), *argv[3:-1], "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "the two models side by side, one thread each" in printed
    assert "vqvae2: tokenizer 4 steps" in printed and "mvqvae: mvq eval" in printed  # progress
    assert [
        ln.split(" | ")[0][2:]
        for ln in printed.split("Stage times on ")[1].splitlines()
        if ln.startswith("| ")
    ][1:] == stages
    assert "seed 0." in (out / "metrics.md").read_text()
    assert "seed 1." in (tmp_path / "demo1" / "metrics.md").read_text()
    assert "train:" in (tmp_path / "demo1" / "mvqvae.log").read_text()  # its progress bars
    other = json.loads((tmp_path / "demo1" / "metrics.json").read_text())
    assert other["vqvae2"]["mse"] != metrics["vqvae2"]["mse"]
    assert (tmp_path / "demo1" / "report.html").is_file()


def readme_torchrun_line() -> str:
    """The single-machine command of the README's "Many GPUs and many machines" section."""
    section = (ROOT / "README.md").read_text().split("## Many GPUs and many machines")[1]
    return next(line for line in section.splitlines() if line.startswith("torchrun --standalone"))


@pytest.mark.real_data
def test_torchrun_two_processes_train_a_tokenizer(tmp_path) -> None:
    """The README's single-machine torchrun line, on 2 CPU processes (gloo): its launcher flags,
    config and --out as written; 2 processes, a tiny model, 3 steps and a batch of 8."""
    import os
    import re
    import signal
    import subprocess
    import sys

    line = readme_torchrun_line()
    assert re.search(r"--nproc_per_node=\d+ -m mvq\.cli train --config \S+ --out \S+", line)
    argv = line.split()[1:]  # torchrun -> python -m torch.distributed.run
    argv = ["--nproc_per_node=2" if a.startswith("--nproc_per_node=") else a for a in argv]
    argv[argv.index("--out") + 1] = str(tmp_path / "ddp")
    tiny = [
        "model_config.num_hypotheses=8",
        "model_config.channels=16",
        "model_config.res_channels=8",
        "train.val_batches=1",
    ]
    tiny = [a for s in tiny for a in ("--set", s)] + ["--max-steps", "3", "--batch-size", "8"]
    cmd = [sys.executable, "-m", "torch.distributed.run", *argv, *tiny, "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=ROOT,
    )
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, err[-3000:]
    summaries = [line for line in out.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and json.loads(summaries[0])["steps"] == 3  # rank 0 reports
    model = load_tokenizer(tmp_path / "ddp" / "model")
    assert model.config.channels == 16
    ckpt = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["sampler_state"]["world_size"] == 2 and ckpt["sampler_state"]["batch_size"] == 4
