"""``mvq sweep``: the grid, resumable cells, the tables, scheduler commands, bad input, and
``--device`` on encode and sample.

Most tests run the pipeline with a fake ``mvq`` (a plain Python script that writes what each
stage writes) so they take seconds; one runs the real trainer on Fashion-MNIST.
"""

import csv
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import expect_error

from mvq.cli import build_parser, main
from mvq.experiments import sweep as sweep_mod
from mvq.experiments.sweep import cell_stages, expand, load_sweep
from mvq.experiments.sweep import tables as sweep_tables

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")
TINY = ["model_config.channels=8", "model_config.res_channels=4", "train.val_batches=1"]

FAKE_MVQ = r"""
import json, os, signal, sys, time
from pathlib import Path

argv = sys.argv[1:]
command = argv[0]
opt = lambda name: argv[argv.index(name) + 1]
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(json.dumps({"argv": argv, "threads": os.environ.get("OMP_NUM_THREADS")}) + "\n")
out = Path(opt("--out"))
fail = os.environ.get("FAKE_FAIL", "")  # "<command>:<path fragment>:<exit|kill>"
failing = fail and fail.split(":")[0] == command and fail.split(":")[1] in str(out)
if command in ("train", "train-prior"):
    ckpt = out / "checkpoints" / "last.pt"
    assert ("--resume" in argv) == ckpt.is_file(), "resume exactly when a checkpoint exists"
    assert "--resume" in argv or not out.exists(), "a fresh start gets an empty folder"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_text("step 1")
    hold = os.environ.get("FAKE_HOLD", "")  # "<command>:<path fragment>": train until a signal
    if hold and hold.split(":")[0] == command and hold.split(":")[1] in str(out) and (
            "--resume" not in argv):
        # as `mvq train`: checkpoint the step, exit 143 (SIGTERM) or 75 (SIGUSR1)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        signal.signal(signal.SIGUSR1, lambda *_: sys.exit(75))
        (out / "held").write_text("")
        time.sleep(120)
        sys.exit(1)
    if failing:
        os.kill(os.getpid(), signal.SIGKILL) if fail.endswith("kill") else sys.exit(1)
    (out / "model").mkdir()
    (out / "model" / "model.safetensors").write_text("weights")
    print(json.dumps({"steps": 3, "images_per_s": 100.0}))
else:
    assert not out.exists(), "encode and eval start from an empty folder"
    out.mkdir(parents=True)
    if failing:
        sys.exit(1)
    if command == "encode":
        (out / "meta.json").write_text("{}")
    if command == "eval":
        seed = int(str(out).split("seed=")[1].split("/")[0])
        metrics = {"mse": 0.1 + 0.01 * seed, "psnr": 20.0 - seed, "usage_primary": 1.0,
                   "unavailable": {"fid": "offline: no Inception weights"}, "meta": {"n": 1}}
        if "--prior" in argv:  # the sample form: depends on the sampling seed too
            sampling = int(opt("--seed")) if "--seed" in argv else 0
            metrics["sample_fd_fmnist"] = 100.0 + seed + 10.0 * sampling
        (out / "eval.json").write_text(json.dumps(metrics))
    print(json.dumps({"out": str(out)}))
"""


def write_sweep(tmp_path: Path, **changes) -> Path:
    """A 2 configs x 2 variants x 2 seeds grid (one cell excluded) with a prior and an eval."""
    spec = {
        "name": "tiny",
        "out": str(tmp_path / "out"),
        "configs": [
            {
                "config": str(ROOT / "configs/vqvae2_fmnist_s1_k16.yaml"),
                "method": "vqvae2",
                "tokens": "1+1",
                "K": 16,
            },
            {
                "config": str(ROOT / "configs/mvqvae_fmnist_s1_k16.yaml"),
                "method": "mvqvae",
                "tokens": "1+1",
                "K": 16,
                "set": ["model_config.num_hypotheses=4"],
            },
        ],
        "overrides": {"variant": {"paper": {}, "ema": {"model_config.ema": True}}},
        "exclude": [{"method": "mvqvae", "variant": "ema"}],
        "seeds": [0, 1],
        "budget": {"max_steps": 3, "batch_size": 8},
        "set": TINY,
        "prior": {
            "config": str(ROOT / "configs/priors/transformer_{tokens_p}.yaml"),
            "max_steps": 2,
        },
        "eval": {"split": "val", "n": 100, "metrics": ["mse", "psnr"]},
    } | changes
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture
def fake_mvq(tmp_path, monkeypatch) -> Path:
    """Every stage runs the fake; returns the file that records each call."""
    script = tmp_path / "fake_mvq.py"
    script.write_text(FAKE_MVQ)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    for stage in ("train", "encode", "prior", "eval", "sample_eval", "sample_eval_seed1"):
        monkeypatch.setitem(sweep_mod.STAGE_PROGRAM, stage, [sys.executable, str(script)])
    return calls


def calls_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def prior_per_entry(tmp_path: Path, **changes) -> Path:
    """The grid of ``write_sweep`` with the prior config named per configs entry."""
    path = write_sweep(tmp_path, **changes)
    spec = yaml.safe_load(path.read_text())
    for entry in spec["configs"]:
        entry["prior"] = str(ROOT / "configs/priors/transformer_1p1.yaml")
    spec["prior"].pop("config")
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_grid_expands_to_cells_and_commands(tmp_path) -> None:
    sweep = load_sweep(prior_per_entry(tmp_path))
    cells = expand(sweep)
    assert sweep.axis_names == ["method", "tokens", "K", "variant", "seed"]
    labels = [(c.axes["method"], c.axes["variant"], c.axes["seed"]) for c in cells]
    assert labels == [
        ("vqvae2", "paper", "0"),
        ("vqvae2", "paper", "1"),
        ("vqvae2", "ema", "0"),
        ("vqvae2", "ema", "1"),
        ("mvqvae", "paper", "0"),
        ("mvqvae", "paper", "1"),
    ]
    cell = cells[5]
    assert cell.name == "method=mvqvae__tokens=1+1__K=16__variant=paper__seed=1"
    assert cell.sets == [
        *TINY,
        "model_config.num_hypotheses=4",
        "train.max_steps=3",
        "train.batch_size=8",
        "train.seed=1",
    ]
    train = {"val_batches": 1, "max_steps": 3, "batch_size": 8, "seed": 1}
    assert cell.run_config.train.items() >= train.items()
    assert cells[2].run_config.model_config["ema"] is True
    stages = cell_stages(sweep, cell, tmp_path / "c")
    assert [s.name for s in stages] == ["train", "encode", "prior", "eval", "sample_eval"]
    bare = load_sweep(write_sweep(tmp_path, prior=None, eval=None))  # null: no such stage
    assert [s.name for s in cell_stages(bare, expand(bare)[0], tmp_path / "c")] == ["train"]
    parser = build_parser()
    for stage in stages[:3]:  # the real commands accept these arguments
        parser.parse_args(stage.args)
    assert stages[2].args[-4:] == ["--set", "train.max_steps=2", "--set", "train.seed=1"]
    assert stages[3].args == [
        "eval",
        "--tokenizer",
        str(tmp_path / "c/tokenizer/model"),
        "--data",
        "fashion_mnist",
        "--split",
        "val",
        "--out",
        str(tmp_path / "c/eval"),
        "--metrics",
        "mse,psnr",
    ]
    assert stages[4].args == [
        "eval",
        "--tokenizer",
        str(tmp_path / "c/tokenizer/model"),
        "--prior",
        str(tmp_path / "c/prior/model"),
        "-n",
        "100",
        "--data",
        "fashion_mnist",
        "--split",
        "val",
        "--out",
        str(tmp_path / "c/eval_samples"),
    ]


def test_list_cell_and_dry_run_write_nothing(tmp_path, capsys) -> None:
    path = str(prior_per_entry(tmp_path))
    assert main(["sweep", path, "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"mvq sweep {path} --cell {i}" for i in range(6)]
    assert main(["sweep", path, "--cell", "4", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cell 4: method=mvqvae__tokens=1+1__K=16__variant=paper__seed=0")
    assert out.count(" run ") == 5 and "--resume" not in out
    assert not (tmp_path / "out").exists()


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys) -> None:
    path = str(prior_per_entry(tmp_path))
    expect_error(capsys, ["sweep", path, "--cell", "6"], "--cell 6 is out of range")
    prior_per_entry(tmp_path, seed=[0])
    expect_error(capsys, ["sweep", path], "unknown key 'seed' (did you mean 'seeds'?)")
    prior_per_entry(tmp_path, configs=[{"config": "configs/nope.yaml", "method": "x"}])
    expect_error(capsys, ["sweep", path], "config file configs/nope.yaml does not exist")
    prior_per_entry(tmp_path, set=["model_config.channels"])
    expect_error(capsys, ["sweep", path], "must look like section.key=value")
    prior_per_entry(tmp_path, set=["model_config.chanels=8"])
    expect_error(capsys, ["sweep", path], "(did you mean 'channels'?)")
    prior_per_entry(tmp_path, budget={"max_step": 3})
    expect_error(capsys, ["sweep", path], "budget: unknown key 'max_step'")
    prior_per_entry(tmp_path, exclude=[{"methd": "vqvae2"}])
    expect_error(capsys, ["sweep", path], "did you mean 'method'")
    write_sweep(tmp_path)  # {tokens_p} is not an axis
    expect_error(capsys, ["sweep", path], "uses {'tokens_p'}, which is not an axis")
    expect_error(capsys, ["sweep", str(tmp_path / "none.yaml")], "does not exist")
    assert not (tmp_path / "out").exists()


def test_cells_are_checked_by_the_builders_checks(tmp_path, capsys) -> None:
    """A value ``mvq train`` would refuse (a wrong type) is refused before any cell runs."""
    path = str(prior_per_entry(tmp_path, set=['model_config.channels="8"']))
    expect_error(capsys, ["sweep", path], "cell 0 (method=")
    expect_error(capsys, ["sweep", path], "model_config.channels must be an integer, got '8'")
    assert not (tmp_path / "out").exists()


def test_killed_cell_resumes_and_finished_cells_are_not_rerun(
    tmp_path, capsys, monkeypatch, fake_mvq
) -> None:
    path = str(prior_per_entry(tmp_path))
    cells = tmp_path / "out" / "cells"
    victim = "method=vqvae2__tokens=1+1__K=16__variant=ema__seed=0"
    monkeypatch.setenv("FAKE_FAIL", f"train:{victim}:kill")  # dies after its checkpoint
    assert main(["sweep", path, "--jobs", "2", "--threads", "4"]) == 1
    out = capsys.readouterr().out
    log = cells / victim / "logs" / "train.log"
    assert f"cell 2 ({victim}) failed at train; log: {log}" in out
    assert {c["threads"] for c in calls_of(fake_mvq)} == {"2"}  # 4 threads over 2 jobs
    assert len(read_csv(tmp_path / "out" / "results.csv")) == 5  # the others finished
    record = json.loads((cells / victim / "cell.json").read_text())
    assert record["status"] == "failed" and record["stages"]["train"]["log"] == "logs/train.log"
    finished = sorted(p for p in cells.glob("*/markers/*.json") if victim not in str(p))
    mtimes = [p.stat().st_mtime_ns for p in finished]

    monkeypatch.delenv("FAKE_FAIL")
    fake_mvq.unlink()
    assert main(["sweep", path]) == 0
    calls = calls_of(fake_mvq)
    assert [c["argv"][0] for c in calls] == ["train", "encode", "train-prior", "eval", "eval"]
    assert "--resume" in calls[0]["argv"] and victim in calls[0]["argv"][4]
    assert [p.stat().st_mtime_ns for p in finished] == mtimes
    record = json.loads((cells / victim / "cell.json").read_text())
    assert record["status"] == "done" and record["stages"]["train"]["resumed"] is True
    stages = ("train", "encode", "prior", "eval", "sample_eval")
    assert all(record["stages"][s]["wall_s"] > 0 for s in stages)
    rows = read_csv(tmp_path / "out" / "results.csv")
    assert [r["cell"] for r in rows] == [str(i) for i in range(6)]
    assert rows[3]["mse"] == "0.11" and rows[3]["train_steps"] == "3"
    assert rows[3]["unavailable"] == "fid" and float(rows[3]["eval_wall_s"]) > 0


@pytest.mark.parametrize(
    ("signum", "status", "jobs"), [(signal.SIGTERM, 143, 2), (signal.SIGUSR1, 75, 1)]
)
def test_a_signalled_sweep_passes_it_on_records_interrupted_and_resumes(
    tmp_path, capsys, monkeypatch, fake_mvq, signum, status, jobs
) -> None:
    """SIGTERM / SIGUSR1 to the sweep reach its running training stages (the fake exits as
    `mvq train` does: 143 / 75 after its checkpoint), which are recorded as interrupted; the
    sweep exits with the same status, and the next run resumes them with --resume."""
    path = str(prior_per_entry(tmp_path, seeds=[0], exclude=[{"method": "mvqvae"}]))
    cells = tmp_path / "out" / "cells"
    held = ["method=vqvae2__tokens=1+1__K=16__variant=ema__seed=0"]  # cell 1: after cell 0
    if jobs == 2:  # both cells at once: the signal reaches both stages
        held.insert(0, "method=vqvae2__tokens=1+1__K=16__variant=paper__seed=0")
    monkeypatch.setenv("FAKE_HOLD", "train:variant=" if jobs == 2 else f"train:{held[0]}")
    thread = threading.Thread(target=signal_when_held, args=(held, cells, signum))
    thread.start()
    try:
        code = main(["sweep", path, "--jobs", str(jobs), "--threads", "2"])
    finally:
        thread.join()
    out = capsys.readouterr().out
    assert code == status, out
    name = signal.Signals(signum).name
    assert f"train interrupted by {name} (exit {status})" in out
    assert f"interrupted by {name}: the same command resumes the {len(held)} interrupted" in out
    for cell in held:
        record = json.loads((cells / cell / "cell.json").read_text())
        assert record["status"] == "interrupted", record
        assert record["stages"]["train"] | {"wall_s": 0} == {
            "status": "interrupted",
            "signal": name,
            "exit_code": status,
            "log": "logs/train.log",
            "wall_s": 0,
        }
        assert not (cells / cell / "markers" / "train.json").exists()
    assert len(read_csv(tmp_path / "out" / "results.csv")) == 2 - len(held)

    monkeypatch.delenv("FAKE_HOLD")
    fake_mvq.unlink()
    assert main(["sweep", path]) == 0
    trains = [c["argv"] for c in calls_of(fake_mvq) if c["argv"][0] == "train"]
    assert len(trains) == len(held) and all("--resume" in argv for argv in trains)
    assert len(read_csv(tmp_path / "out" / "results.csv")) == 2
    # the resumed cells end as an uninterrupted sweep's
    assert main(["sweep", path, "--out", str(tmp_path / "plain")]) == 0
    for cell in held:
        eval_json = Path("eval", "eval.json")
        assert (cells / cell / eval_json).read_text() == (
            tmp_path / "plain" / "cells" / cell / eval_json
        ).read_text()
        assert json.loads((cells / cell / "cell.json").read_text())["status"] == "done"


def signal_when_held(held: list[str], cells: Path, signum: int) -> None:
    """Send this process ``signum`` once every held cell's training stage is waiting."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all((cells / cell / "tokenizer" / "held").exists() for cell in held):
            os.kill(os.getpid(), signum)
            return
        time.sleep(0.05)


def test_partial_stage_restarts_clean_and_reruns_what_follows(
    tmp_path, capsys, monkeypatch, fake_mvq
) -> None:
    path = str(prior_per_entry(tmp_path, seeds=[0]))
    assert main(["sweep", path]) == 0
    cell = tmp_path / "out/cells/method=mvqvae__tokens=1+1__K=16__variant=paper__seed=0"
    # the machine stopped while the prior trained, before its first checkpoint
    (cell / "markers" / "prior.json").unlink()
    (cell / "prior" / "checkpoints" / "last.pt").unlink()
    (cell / "prior" / "half_written").write_text("")
    fake_mvq.unlink()
    assert main(["sweep", path]) == 0
    calls = calls_of(fake_mvq)
    assert [c["argv"][0] for c in calls] == ["train-prior", "eval", "eval"]  # train, encode: kept
    assert "--resume" not in calls[0]["argv"] and not (cell / "prior" / "half_written").exists()
    # a failing eval is reported; a failing stage of one cell leaves the others finished
    monkeypatch.setenv("FAKE_FAIL", "eval:seed=0:exit")
    (cell / "markers" / "eval.json").unlink()
    assert main(["sweep", path]) == 1
    assert "failed at eval; log:" in capsys.readouterr().out
    assert len(read_csv(tmp_path / "out" / "results.csv")) == 2


@pytest.mark.parametrize("unfinished", ["eval", "sample_eval"])
def test_results_without_weights_keep_finished_cells_and_rerun_what_a_stage_needs(
    tmp_path, capsys, fake_mvq, unfinished
) -> None:
    """A sweep folder committed without its heavy files (weights, tokens) after a session.

    The sample evaluation reads the tokenizer's and the prior's weights, not the stage before it
    (the reconstruction eval): with both gone the cell retrains from the start.
    """
    path = str(prior_per_entry(tmp_path, seeds=[0], exclude=[{"method": "mvqvae"}]))
    assert main(["sweep", path]) == 0
    cells = sorted((tmp_path / "out" / "cells").iterdir())
    for heavy in (
        "tokenizer/model/model.safetensors",
        "tokenizer/checkpoints/last.pt",
        "tokens/meta.json",
        "prior/model/model.safetensors",
        "prior/checkpoints/last.pt",
    ):
        for cell in cells:
            (cell / heavy).unlink()
    (cells[1] / "markers" / f"{unfinished}.json").unlink()  # this cell was not evaluated yet
    fake_mvq.unlink()
    assert main(["sweep", path]) == 0
    calls = calls_of(fake_mvq)
    assert [c["argv"][0] for c in calls] == ["train", "encode", "train-prior", "eval", "eval"]
    assert all(cells[1].name in " ".join(c["argv"]) for c in calls)  # cell 0 stays finished
    assert len(read_csv(tmp_path / "out" / "results.csv")) == 2


def test_changed_spec_is_refused_and_changed_eval_reruns(tmp_path, capsys, fake_mvq) -> None:
    path = str(prior_per_entry(tmp_path, seeds=[0], exclude=[{"method": "mvqvae"}]))
    assert main(["sweep", path, "--cell", "1"]) == 0
    assert len(read_csv(tmp_path / "out" / "results.csv")) == 1
    prior_per_entry(tmp_path, seeds=[0], exclude=[{"method": "mvqvae"}], budget={"max_steps": 9})
    expect_error(capsys, ["sweep", path, "--cell", "1"], "another spec (run_config differs)")
    spec = {"split": "val", "n": 100, "metrics": ["mse"]}
    prior_per_entry(tmp_path, seeds=[0], exclude=[{"method": "mvqvae"}], eval=spec)
    fake_mvq.unlink()
    assert main(["sweep", path, "--cell", "1"]) == 0
    assert [c["argv"][0] for c in calls_of(fake_mvq)] == ["eval", "eval"]  # both eval forms
    assert calls_of(fake_mvq)[0]["argv"][-1] == "mse"


def test_collect_summarizes_over_seeds(tmp_path, capsys, fake_mvq) -> None:
    path = str(prior_per_entry(tmp_path, eval={"n": 10}))
    assert main(["sweep", path, "--collect"]) == 0  # nothing finished yet: empty tables
    assert read_csv(tmp_path / "out" / "results.csv") == []
    assert main(["sweep", path]) == 0
    for name in ("results.csv", "results.md", "summary.csv", "summary.md"):
        (tmp_path / "out" / name).unlink()
    assert main(["sweep", path, "--collect"]) == 0
    summary = read_csv(tmp_path / "out" / "summary.csv")
    assert [(r["method"], r["variant"], r["n"]) for r in summary] == [
        ("vqvae2", "paper", "2"),
        ("vqvae2", "ema", "2"),
        ("mvqvae", "paper", "2"),
    ]
    assert float(summary[0]["mse_mean"]) == pytest.approx(0.105)
    assert float(summary[0]["mse_std"]) == pytest.approx(0.00707107, rel=1e-4)
    assert float(summary[0]["psnr_mean"]) == pytest.approx(19.5)
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| method | tokens | K | variant | n | mse | psnr | usage_primary |" in md
    assert "| vqvae2 | 1+1 | 16 | paper | 2 | 0.105 ± 0.007071 | 19.5 ± 0.7071 | 1 ± 0 |" in md
    results_md = (tmp_path / "out" / "results.md").read_text()
    assert results_md.startswith("Sweep tiny: 6 of 6 cells finished.")
    assert results_md.count("\n| ") == 7  # header + 6 rows


def test_tables_name_a_classifier_other_than_the_shipped_one(tmp_path, capsys, fake_mvq) -> None:
    path = str(prior_per_entry(tmp_path))
    assert main(["sweep", path]) == 0
    evals = sorted((tmp_path / "out" / "cells").glob("*/eval/eval.json"))
    study = {"key": "ea6ed89205813a6a", "accuracy": 0.9177}  # what the study's eval.json hold
    other = {
        "id": "0123456789abcdef",
        "shipped": False,
        "accuracy": 0.9158,
        "weights_sha256": "0" * 64,
    }
    for file, classifier in zip(evals, (study, other), strict=False):
        data = json.loads(file.read_text())
        file.write_text(json.dumps(data | {"meta": {"fd_fmnist_classifier": classifier}}))
    assert main(["sweep", path, "--collect"]) == 0
    named = [r["fd_classifier"] for r in read_csv(tmp_path / "out" / "results.csv")]
    assert sorted(named) == [""] * (len(named) - 1) + ["0123456789abcdef (accuracy 0.9158)"]
    note = "fd_fmnist of classifier 0123456789abcdef (accuracy 0.9158), not mvq's shipped one."
    for name in ("results.md", "summary.md"):
        assert note in (tmp_path / "out" / name).read_text(), name
    committed = sorted(ROOT.glob("results/fmnist/*/cells/*/eval*/eval.json"))
    assert committed and not any("fd_classifier" in sweep_tables._eval_values(f) for f in committed)


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_training_cell_resumes_from_its_checkpoint(tmp_path, capsys, monkeypatch) -> None:
    """The real `mvq train` in a subprocess; eval is a fake that writes an eval.json."""
    fake_eval = tmp_path / "fake_eval.py"
    fake_eval.write_text(
        "import json, sys, pathlib\nout = pathlib.Path(sys.argv[sys.argv.index('--out') + 1])\n"
        "out.mkdir(parents=True)\n(out / 'eval.json').write_text(json.dumps({'mse': 0.5}))\n"
    )
    for stage in ("eval", "sample_eval"):
        monkeypatch.setitem(sweep_mod.STAGE_PROGRAM, stage, [sys.executable, str(fake_eval)])
    path = write_sweep(
        tmp_path,
        configs=[str(ROOT / "configs/vqvae2_fmnist_s1_k16.yaml")],
        overrides={},
        exclude=[],
        seeds=[3],
        budget={"max_steps": 2, "batch_size": 8, "ckpt_every": 1},
        eval={"n": 10},
    )
    spec = yaml.safe_load(path.read_text())
    del spec["prior"]
    path.write_text(yaml.safe_dump(spec))
    assert main(["sweep", str(path), "--threads", "1"]) == 0, capsys.readouterr().out
    cell = tmp_path / "out" / "cells" / "config=vqvae2_fmnist_s1_k16__seed=3"
    weights = (cell / "tokenizer" / "model" / "model.safetensors").read_bytes()
    (cell / "markers" / "train.json").unlink()  # as if killed after the last checkpoint
    assert main(["sweep", str(path), "--threads", "1"]) == 0
    attempts = (cell / "logs" / "train.log").read_text().split("$ ")[1:]
    assert len(attempts) == 2 and attempts[1].splitlines()[0].endswith("--resume")
    assert (cell / "tokenizer" / "model" / "model.safetensors").read_bytes() == weights
    row = read_csv(tmp_path / "out" / "results.csv")[0]
    assert row["config"] == "vqvae2_fmnist_s1_k16" and row["train_steps"] == "2"
    assert row["mse"] == "0.5"


def test_device_errors_are_one_line(tmp_path, capsys) -> None:
    tok, prior = str(tmp_path / "tok"), str(tmp_path / "prior")
    expect_error(
        capsys,
        [
            "encode",
            "--tokenizer",
            tok,
            "--data",
            "fashion_mnist",
            "--out",
            str(tmp_path / "t"),
            "--device",
            "gpu0",
        ],
        "--device gpu0",
    )
    expect_error(
        capsys,
        [
            "sample",
            "--tokenizer",
            tok,
            "--prior",
            prior,
            "--out",
            str(tmp_path / "s"),
            "--device",
            "bogus",
        ],
        "--device bogus",
    )
    if not torch.cuda.is_available():
        argv = ["sample", "--tokenizer", tok, "--prior", prior, "--out", str(tmp_path / "s")]
        expect_error(capsys, [*argv, "--device", "cuda"], "CUDA is not available")
    assert not (tmp_path / "t").exists() and not (tmp_path / "s").exists()


def test_entry_seeds_and_sampling_seeds(tmp_path, capsys, fake_mvq) -> None:
    """An entry's own seeds replace the sweep's; each sampling seed is one more sample eval,
    the row's sample metrics are their mean; the record names configs relative to the repo."""
    path = prior_per_entry(
        tmp_path,
        exclude=[{"variant": "ema"}],
        eval={"split": "val", "n": 100, "metrics": ["mse"], "sample_seeds": [0, 1]},
    )
    spec = yaml.safe_load(path.read_text())
    spec["configs"][1]["seeds"] = [0, 1, 2]
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    cells = expand(load_sweep(path))
    assert [(c.axes["method"], c.seed) for c in cells] == [
        ("vqvae2", 0),
        ("vqvae2", 1),
        ("mvqvae", 0),
        ("mvqvae", 1),
        ("mvqvae", 2),
    ]
    stages = cell_stages(load_sweep(path), cells[0], tmp_path / "c")
    assert [s.name for s in stages][-2:] == ["sample_eval", "sample_eval_seed1"]
    assert stages[-2].spec == {
        "data": "fashion_mnist",
        "split": "val",
        "n": 100,
        "metrics": None,
        "prior": True,
    }
    assert stages[-1].argv()[-2:] == ["--seed", "1"] and stages[-1].spec["seed"] == 1
    assert main(["sweep", str(path), "--jobs", "1"]) == 0
    rows = read_csv(tmp_path / "out" / "results.csv")
    assert len(rows) == 5
    for row in rows:
        seed = int(row["seed"])
        assert float(row["sample_fd_fmnist_sampling_seed0"]) == 100.0 + seed
        assert float(row["sample_fd_fmnist_sampling_seed1"]) == 110.0 + seed
        assert float(row["sample_fd_fmnist"]) == 105.0 + seed and row["sampling_seeds"] == "2"
    record = json.loads(next((tmp_path / "out" / "cells").glob("*/cell.json")).read_text())
    assert record["config"] in (
        "configs/vqvae2_fmnist_s1_k16.yaml",
        "configs/mvqvae_fmnist_s1_k16.yaml",
    )
    assert record["commit"] is None or len(record["commit"].split("+")[0]) == 40


def test_a_later_sampling_seed_never_retrains_a_cell_without_weights(
    tmp_path, capsys, fake_mvq
) -> None:
    """A cell finished with one sampling seed and committed without weights stays finished
    when the sweep asks for a second: its row has one sampling seed, nothing reruns."""
    path = prior_per_entry(tmp_path, exclude=[{"variant": "ema"}], seeds=[0])
    assert main(["sweep", str(path)]) == 0
    for weights in (tmp_path / "out").rglob("model.safetensors"):
        weights.unlink()
    ran = len(calls_of(fake_mvq))
    spec = yaml.safe_load(path.read_text())
    spec["eval"]["sample_seeds"] = [0, 1]
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    capsys.readouterr()
    assert main(["sweep", str(path), "--dry-run"]) == 0
    assert "sample_eval_seed1 skip" in capsys.readouterr().out
    assert main(["sweep", str(path)]) == 0
    assert len(calls_of(fake_mvq)) == ran, "nothing retrained"
    rows = read_csv(tmp_path / "out" / "results.csv")
    assert len(rows) == 2 and {r["sampling_seeds"] for r in rows} == {"1"}
    # with its weights back, the same cell runs only the new stage
    spec["eval"]["sample_seeds"] = [0, 1]
    cell = expand(load_sweep(path))[0]
    for stage in cell_stages(load_sweep(path), cell, tmp_path / "out" / "cells" / cell.name):
        if stage.product is not None and stage.product.name == "model.safetensors":
            stage.product.write_text("weights")
    assert main(["sweep", str(path), "--cell", "0"]) == 0
    new = calls_of(fake_mvq)[ran:]
    assert [c["argv"][0] for c in new] == ["eval"] and "--seed" in new[0]["argv"]
