"""Session rules (a real-data test never disappears without a word) and shared fixtures: a
tiny trained MVQVAE run and a saved VQVAE2 (for the viz and report tests).

Tests marked ``real_data`` read Fashion-MNIST where mvq looks for it by default: Debian's
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), else the user cache
``$XDG_CACHE_HOME/mvq/fashion_mnist``. ``make test`` gets it there first, the way ``make demo``
does. When it is still missing such a test FAILS with the reason, unless the user asked to skip
them with ``MVQ_SKIP_REAL_DATA=1``; the terminal summary then lists what was skipped and why.

Tests that take the ``device`` fixture run on ``$MVQ_TEST_DEVICE`` (default ``cpu``; ``cuda``
runs them on the GPU, as ``benchmarks/device_checks.sh`` does) and are marked ``device``, so
``pytest -m device`` selects them. On CUDA they run with TF32 off and deterministic algorithms
on, so fp32 results are comparable with the CPU's and a resumed run can equal an uninterrupted one.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

SKIP_VAR = "MVQ_SKIP_REAL_DATA"
MARKER = "real_data"
DEVICE_VAR = "MVQ_TEST_DEVICE"


def skip_requested() -> bool:
    """Whether the user set ``MVQ_SKIP_REAL_DATA`` to something other than empty or ``0``."""
    return os.environ.get(SKIP_VAR, "").strip() not in ("", "0")


@functools.cache
def missing_real_data() -> str | None:
    """Why Fashion-MNIST cannot be read from mvq's default places, or ``None`` when it can."""
    from mvq.data import DataError, build_dataset

    try:
        for split in ("train", "val"):
            build_dataset("fashion_mnist", None, split)
    except DataError as e:
        return str(e)
    return None


def pytest_report_header(config: pytest.Config) -> str:
    """One header line saying what happens to real-data tests when the data are missing."""
    if skip_requested():
        return f"real-data tests: skipped if Fashion-MNIST is missing ({SKIP_VAR}=1)"
    return f"real-data tests: fail if Fashion-MNIST is missing ({SKIP_VAR}=1 skips them)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that takes the ``device`` fixture ``device`` (``pytest -m device``)."""
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a real-data test whose data are missing, only when the user asked for it."""
    if item.get_closest_marker(MARKER) and skip_requested():
        reason = missing_real_data()
        if reason is not None:
            pytest.skip(f"{SKIP_VAR}=1 and {reason}")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    """Fail (in the call phase, so it reads FAILED) a real-data test whose data are missing."""
    if item.get_closest_marker(MARKER):
        reason = missing_real_data()
        if reason is not None:
            pytest.fail(
                f"real-data test cannot run: {reason}; or set {SKIP_VAR}=1 to skip it",
                pytrace=False,
            )


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """List the real-data tests that were skipped or failed for missing data, with the reason."""
    reports = [
        r
        for key in ("skipped", "failed")
        for r in terminalreporter.stats.get(key, [])
        if MARKER in getattr(r, "keywords", {}) and r.when in ("setup", "call")
    ]
    reason = missing_real_data() if reports else None
    if reason is None:
        return
    skipped = [r.nodeid for r in reports if r.skipped]
    failed = [r.nodeid for r in reports if r.failed]
    terminalreporter.section("real-data tests")
    if skipped:
        terminalreporter.write_line(f"{len(skipped)} SKIPPED on request ({SKIP_VAR}=1): {reason}")
    if failed:
        terminalreporter.write_line(
            f"{len(failed)} FAILED for missing data: {reason}; `make test` installs "
            f"Fashion-MNIST first, {SKIP_VAR}=1 skips these tests"
        )
    for nodeid in skipped + failed:
        terminalreporter.write_line(f"  {nodeid}")


@pytest.fixture(scope="session")
def tiny_mvq_run(tmp_path_factory) -> Path:
    """``mvq train`` of a narrow MVQVAE (J = 8) for 6 steps on Fashion-MNIST: a real run dir."""
    reason = missing_real_data()
    if reason is not None:  # the same rule as a real_data test: fail, or skip when asked
        if skip_requested():
            pytest.skip(f"{SKIP_VAR}=1 and {reason}")
        pytest.fail(f"real-data fixture cannot run: {reason}; or set {SKIP_VAR}=1", pytrace=False)
    from mvq.cli import main

    tmp = tmp_path_factory.mktemp("viz_run")
    cfg = tmp / "run.yaml"
    cfg.write_text(
        yaml.safe_dump({"model": "mvqvae_fmnist_s4_k16", "data": {"name": "fashion_mnist"}})
    )
    sets = [
        "model_config.channels=16",
        "model_config.res_channels=8",
        "model_config.num_hypotheses=8",
        "train.log_every=2",
        "train.val_every=3",
        "train.val_batches=1",
        "train.sample_every=6",
    ]
    argv = [
        "train",
        "--config",
        str(cfg),
        "--out",
        str(tmp / "mvq"),
        "--max-steps",
        "6",
        "--batch-size",
        "8",
        *(a for s in sets for a in ("--set", s)),
    ]
    assert main(argv) == 0
    return tmp / "mvq"


@pytest.fixture(scope="session")
def tiny_vqvae2_model(tmp_path_factory) -> Path:
    """A freshly initialised, saved VQVAE2 (no training needed for its error paths)."""
    from mvq.tokenizers import create_tokenizer

    torch.manual_seed(0)
    model = create_tokenizer("vqvae2_fmnist_s4_k16", channels=16, res_channels=8)
    path = tmp_path_factory.mktemp("vqvae2") / "model"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def test_device() -> torch.device:
    """``$MVQ_TEST_DEVICE`` as a device: skips when it is CUDA and this machine has none, fails
    on a name that is no device (a typo must not quietly test the CPU)."""
    name = os.environ.get(DEVICE_VAR, "").strip() or "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        pytest.fail(f"{DEVICE_VAR}={name!r} is not a device name (cpu, cuda, cuda:N)", False)
    if device.type not in ("cpu", "cuda"):
        pytest.fail(f"{DEVICE_VAR}={name!r}: the device tests run on cpu or cuda", False)
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"{DEVICE_VAR}={name} but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    # cuBLAS reads this when its first handle is made: deterministic matrix products on CUDA
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return device


@pytest.fixture
def device(test_device: torch.device):
    """The device a test runs on (``$MVQ_TEST_DEVICE``, default cpu). On CUDA: TF32 off and
    deterministic algorithms on for the test (warnings name any op that has none), restored
    after it."""
    if test_device.type != "cuda":
        yield test_device
        return
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (
        matmul.allow_tf32,
        cudnn.allow_tf32,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    matmul.allow_tf32 = cudnn.allow_tf32 = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield test_device
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before[:2]
        torch.use_deterministic_algorithms(before[2], warn_only=before[3])


def expect_error(capsys, argv: list, fragment: str, nothing_in: Path | None = None) -> None:
    """``mvq ARGV`` fails as bad input must: exit 2, one line ``mvq: error: ...`` naming
    ``fragment``, and (``nothing_in``) nothing written there. Shared by the CLI tests."""
    from mvq.cli import main

    capsys.readouterr()  # drop earlier output (progress bars)
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mvq: error:") and fragment in err and "\n" not in err, err
    if nothing_in is not None:
        assert not nothing_in.exists()  # nothing written


def torchrun(source: str, tmp_path: Path) -> list[dict]:
    """Run ``source`` (a template of ``{tests}``, the tests folder) on 2 gloo processes with
    ``tmp_path`` as its argument; returns what each rank saved to ``rank<r>.pt``."""
    script = tmp_path / "ddp.py"
    script.write_text(source.format(tests=str(Path(__file__).parent)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # own process group: on a timeout the workers die with torchrun instead of lingering
    proc = subprocess.Popen(
        [*cmd, str(script), str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, stderr[-4000:]
    return [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
