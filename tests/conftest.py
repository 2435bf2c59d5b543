"""Session rules: a real-data test never disappears without a word.

Tests marked ``real_data`` read Fashion-MNIST where mvq looks for it by default: Debian's
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), else the user cache
``$XDG_CACHE_HOME/mvq/fashion_mnist``. ``make test`` gets it there first, the way ``make demo``
does. When it is still missing such a test FAILS with the reason, unless the user asked to skip
them with ``MVQ_SKIP_REAL_DATA=1``; the terminal summary then lists what was skipped and why.
"""

from __future__ import annotations

import functools
import os

import pytest

SKIP_VAR = "MVQ_SKIP_REAL_DATA"
MARKER = "real_data"


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
