"""The contract of the ``mvq`` command line: bad input is one line ``mvq: error: ...`` with exit
status 2 and nothing written; ``--debug`` and bugs keep their traceback; ``--version``; a help
text for every command and flag; ``--out`` everywhere (``--run-dir`` still accepted)."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mvq import __version__
from mvq.cli import build_parser, main
from mvq.core.errors import ConfigError, DeviceError, MVQError
from mvq.training import TrainConfig
from mvq.training.runconfig import check_types, fits, parse_value

SRC = str(Path(__file__).resolve().parents[1] / "src")
COMMANDS = (
    "train",
    "encode",
    "train-prior",
    "sample",
    "reconstruct",
    "tokenize",
    "decode",
    "eval",
    "list",
    "configs",
    "demo",
    "sweep",
    "viz",
    "report",
)


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump({"model": "mvqvae_fmnist_s4_k16", "data": {"name": "fashion_mnist"}})
    )
    return path


def expect_one_line(capsys, argv: list[str], fragment: str, out: Path) -> None:
    """``mvq argv`` exits 2 with one stderr line naming ``fragment``, and ``out`` is not made."""
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("mvq: error:") and captured.err.count("\n") == 1, captured.err
    assert fragment in captured.err, captured.err
    assert not out.exists(), argv


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.batch_size=abc", "train.batch_size must be an integer, got 'abc'"),
        ("train.betas=0.9", "train.betas must be a list of 2 numbers, got 0.9"),
        ("train.betas=[0.5, 0.9, 0.1]", "train.betas must be a list of 2 numbers"),
        ("train.tf32=1", "train.tf32 must be true or false"),
        ("train.max_steps=ten", "train.max_steps must be an integer or null"),
        ("train.max_step=3", "unknown key 'max_step' (did you mean 'max_steps'?)"),
        ("model_config.channels=abc", "model_config.channels must be an integer"),
        ("model_config.num_hypothesis=8", "(did you mean 'num_hypotheses'?)"),
        ("model_config.num_hypotheses=0", "num_hypotheses"),
        ("train.device=gpu0", "TrainConfig.device must be auto, cpu, cuda, cuda:N or mps"),
        ("train.lr=[1,", "is not a YAML value"),
        ("trian.lr=1", "(did you mean 'train'?)"),
    ],
)
def test_bad_overrides_are_one_line_and_write_nothing(tmp_path, capsys, override, fragment):
    out = tmp_path / "run"
    argv = ["train", "--config", str(write_config(tmp_path)), "--out", str(out), "--set", override]
    expect_one_line(capsys, argv, fragment, out)


def test_a_bad_device_is_one_line_for_every_command_that_runs_a_model(tmp_path, capsys):
    out, missing = tmp_path / "out", str(tmp_path / "missing")
    cfg = str(write_config(tmp_path))
    commands = [
        ["train", "--config", cfg],
        ["train-prior", "--tokens", missing, "--config", cfg],
        ["encode", "--tokenizer", missing, "--data", "fashion_mnist"],
        ["sample", "--tokenizer", missing, "--prior", missing],
        ["eval", "--tokenizer", missing],
        ["reconstruct", "--tokenizer", missing, "--images", missing],
        ["tokenize", "--tokenizer", missing, "--images", missing],
        ["decode", "--tokenizer", missing, "--tokens", missing],
        ["viz", missing, "--kind", "compose"],
        ["demo"],
    ]
    for argv in commands:
        expect_one_line(
            capsys,
            [*argv, "--out", str(out), "--device", "gpu0"],
            "--device gpu0: not a device name",
            out,
        )


def test_cuda_without_a_gpu_says_use_cpu(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    out = tmp_path / "run"
    for device in ("cuda", "cuda:1"):
        argv = ["train", "--config", str(write_config(tmp_path)), "--out", str(out)]
        expect_one_line(
            capsys,
            [*argv, "--device", device],
            f"--device {device}: CUDA is not available on this machine; use --device cpu",
            out,
        )
    # the device of the YAML (train.device) is checked before the run directory is made
    argv = [
        "train",
        "--config",
        str(write_config(tmp_path)),
        "--out",
        str(out),
        "--set",
        "train.device=cuda",
        "--max-steps",
        "1",
    ]
    expect_one_line(capsys, argv, "CUDA is not available", out)


def test_debug_re_raises_user_errors(tmp_path, monkeypatch):
    argv = ["train", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "r")]
    with pytest.raises(ConfigError, match="does not exist"):
        main(["--debug", *argv])
    with pytest.raises(ConfigError, match="does not exist"):
        main([*argv, "--debug"])  # after the command too
    monkeypatch.setenv("MVQ_DEBUG", "1")
    with pytest.raises(ConfigError, match="does not exist"):
        main(argv)
    monkeypatch.setenv("MVQ_DEBUG", "0")
    assert main(argv) == 2


def run_mvq(code: str) -> subprocess.CompletedProcess:
    """``python -c code`` with this checkout's mvq first on the path."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    env.pop("MVQ_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )


def test_debug_and_bugs_show_a_traceback(tmp_path):
    """A user error under --debug, and an internal bug always, end with a traceback and exit
    status 1 (not the 2 of a one-line user error)."""
    argv = ["train", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "r")]
    debug = run_mvq(f"import sys; from mvq.cli import main; sys.exit(main({['--debug', *argv]!r}))")
    assert debug.returncode == 1 and "Traceback" in debug.stderr, debug.stderr
    assert "ConfigError: config file" in debug.stderr
    bug = run_mvq(
        "import sys, mvq.cli\n"
        "def broken(path):\n"
        "    raise ValueError('boom')\n"
        "mvq.cli.load_run_config = broken\n"
        f"sys.exit(mvq.cli.main({argv!r}))\n"
    )
    assert bug.returncode == 1, bug.stderr
    assert "Traceback" in bug.stderr and "ValueError: boom" in bug.stderr
    assert "mvq: error" not in bug.stderr


def test_an_internal_value_error_is_not_a_user_error(tmp_path, monkeypatch):
    def broken(path):
        raise ValueError("boom")

    monkeypatch.setattr("mvq.cli.load_run_config", broken)
    with pytest.raises(ValueError, match="boom"):
        main(["train", "--config", "c.yaml", "--out", str(tmp_path / "r")])


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"mvq {__version__}\n"


def test_help_lists_every_command_without_markup(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text and "example:" in text
    listed = [line.split()[0] for line in text.splitlines() if line.startswith("    ")]
    assert set(COMMANDS) <= set(listed), listed
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(sub.choices) == sorted(COMMANDS)
    for choice in sub._choices_actions:  # one line of help per command
        assert choice.help and "\n" not in choice.help and "``" not in choice.help, choice.dest


def parsers() -> dict[str, argparse.ArgumentParser]:
    """``mvq`` and each of its commands, by name."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"mvq": parser, **sub.choices}


def test_every_flag_of_every_command_has_help():
    for name, parser in parsers().items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and action.help.strip(), f"mvq {name} {action.option_strings}"
            assert "``" not in action.help, f"mvq {name} {action.option_strings}"


def test_out_is_the_output_flag_and_run_dir_still_works():
    parser = build_parser()
    for name, parser_ in parsers().items():
        flags = {s for a in parser_._actions for s in a.option_strings}
        assert "--out" in flags or name in ("mvq", "list"), name
    for command in (["train", "--config", "c"], ["train-prior", "--tokens", "t", "--config", "c"]):
        assert parser.parse_args([*command, "--out", "runs/x"]).out == "runs/x"
        assert parser.parse_args([*command, "--run-dir", "runs/y"]).out == "runs/y"


def test_every_command_that_runs_a_model_takes_device():
    for name, parser in parsers().items():
        flags = {s for a in parser._actions for s in a.option_strings}
        if name not in ("mvq", "list", "configs", "sweep", "report"):
            assert "--device" in flags, name


def test_project_errors_share_one_base():
    from mvq.core.pretrained import CheckpointError
    from mvq.core.registry import Registry
    from mvq.data import DataError
    from mvq.eval.evaluate import EvalError
    from mvq.experiments.sweep import SweepError
    from mvq.metrics.weights import WeightsUnavailable
    from mvq.report.viz import VizError
    from mvq.training import RunDirError, TrainingDiverged

    for cls, builtin in (
        (ConfigError, ValueError),
        (CheckpointError, ValueError),
        (DataError, ValueError),
        (EvalError, ValueError),
        (VizError, ValueError),
        (SweepError, ValueError),
        (DeviceError, ValueError),
        (RunDirError, RuntimeError),
        (TrainingDiverged, RuntimeError),
        (WeightsUnavailable, FileNotFoundError),
    ):
        assert issubclass(cls, MVQError) and issubclass(cls, builtin), cls
    with pytest.raises(KeyError) as err:  # still a KeyError, printed without quotes
        Registry("tokenizer").get("nope")
    assert isinstance(err.value, MVQError) and str(err.value).startswith("unknown tokenizer")


def test_values_are_checked_against_the_field_types():
    assert fits(int, 3) and not fits(int, True) and not fits(int, 3.0) and not fits(int, "3")
    assert fits(float, 3) and fits(float, 0.5) and not fits(float, False)
    assert fits(int | None, None) and not fits(int | None, "none")
    assert fits(tuple[float, float], [0.5, 0.9]) and not fits(tuple[float, float], 0.9)
    assert not fits(tuple[float, float], [0.5]) and not fits(tuple[float, float], ["a", "b"])
    assert fits(tuple[int, ...], [2, 3, 4]) and not fits(tuple[int, ...], [2.5])
    assert parse_value("1e-4") == 1e-4 and parse_value("3") == 3 and parse_value("[1, 2]") == [1, 2]
    with pytest.raises(ConfigError, match=r"train.lr must be a number, got '1e-4' \(YAML"):
        check_types(TrainConfig, {"lr": "1e-4"}, "train")
    with pytest.raises(ConfigError, match="betas must be a pair of numbers"):
        TrainConfig(betas=0.9)  # the Python API checks too
    with pytest.raises(ConfigError, match="device must be auto, cpu, cuda, cuda:N or mps"):
        TrainConfig(device="gpu0")


def test_resolve_device_names_the_problem(monkeypatch):
    from mvq.core.device import resolve_device

    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(DeviceError, match="not a device name"):
        resolve_device("gpu0")
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(DeviceError, match="use --device cpu"):
        resolve_device("cuda:0")


@pytest.mark.parametrize(
    ("options", "n", "label", "fragment"),
    [
        ({"temperature": -1.0}, 4, None, "temperature must be a finite number > 0"),
        ({"top_k": 0}, 4, None, "top_k must be None or an integer >= 1"),
        ({}, 0, None, "n (number of samples) must be a positive integer"),
        ({"schedule": "sine"}, 4, None, "--schedule sine: choose one of"),
        ({"steps": 0}, 4, None, "--steps must be at least 1"),
        ({}, 4, 3, "--label 3 is not a class of this prior (none: the prior is unconditional)"),
    ],
)
def test_bad_sampling_options_are_config_errors(options, n, label, fragment):
    from mvq.priors import create_prior
    from mvq.sampling.pipeline import SampleOptions, check_options

    prior = create_prior("transformer_1p1", primary_vocab=8, secondary_vocab=8)
    with pytest.raises(ConfigError) as err:
        check_options(SampleOptions(**options), n, label, prior)
    assert fragment in str(err.value)


def test_a_path_the_os_refuses_is_one_line(tmp_path: Path, capsys) -> None:
    """An ``--out`` under a file (ENOTDIR) is the user's to fix: one line, exit 2; an OSError
    without a path (a bug's) keeps its traceback."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    expect_one_line(
        capsys, ["configs", "--out", str(blocker / "configs")], "a_file", blocker / "configs"
    )


def test_an_oserror_without_a_path_is_a_bug(monkeypatch, tmp_path: Path) -> None:
    import mvq.cli

    def broken(args: argparse.Namespace) -> None:
        raise OSError("boom")

    parser = build_parser()
    args = parser.parse_args(["configs", "--out", str(tmp_path / "c")])
    monkeypatch.setattr(mvq.cli, "build_parser", lambda: _Fixed(args, broken))
    with pytest.raises(OSError, match="boom"):
        main(["configs", "--out", str(tmp_path / "c")])


class _Fixed:
    """A parser stand-in returning ``args`` with ``func`` replaced."""

    def __init__(self, args: argparse.Namespace, func) -> None:
        self.args = args
        self.args.func = func

    def parse_args(self, argv):
        return self.args
