"""``mvq sweep``: its arguments, the listing and dry run, and the report of a run."""

from __future__ import annotations

import argparse
import shlex
import signal

from mvq.experiments.sweep.grid import expand
from mvq.experiments.sweep.runner import CellOutcome, default_threads, run_sweep
from mvq.experiments.sweep.spec import Cell, SweepConfig, SweepError, load_sweep
from mvq.experiments.sweep.stages import (
    CHECKPOINT,
    cell_stages,
    check_cell_dir,
    first_stage_to_run,
    skipped_backfill,
)
from mvq.experiments.sweep.tables import collect
from mvq.training.interrupt import STOP_STATUS

# --- the command ------------------------------------------------------------------------------


def report(sweep: SweepConfig, outcomes: list[CellOutcome]) -> int:
    """Print what happened. Exit status: that of the stop signal (143 SIGTERM, 75 SIGUSR1)
    when one interrupted the sweep, else 1 when any cell failed, else 0."""
    statuses = ("done", "failed", "interrupted", "busy")
    counts = {s: sum(o.status == s for o in outcomes) for s in statuses}
    print(
        f"sweep {sweep.name}: {counts['done']} done, {counts['failed']} failed, "
        f"{counts['interrupted']} interrupted, {counts['busy']} running elsewhere; "
        f"table: {sweep.out / 'results.md'}"
    )
    for o in outcomes:
        if o.status == "failed":
            where = f"log: {o.log}" if o.log else o.message
            stage = o.ran[-1] if o.ran else "setup"
            print(f"  cell {o.cell.index} ({o.cell.name}) failed at {stage}; {where}")
    signum = max((o.signum for o in outcomes), default=0)
    if signum:
        print(
            f"  interrupted by {signal.Signals(signum).name}: the same command resumes the "
            f"{counts['interrupted']} interrupted cells (exit status {STOP_STATUS[signum]})"
        )
        return STOP_STATUS[signum]
    return 1 if counts["failed"] else 0


def list_commands(file: str, out: str | None, cells: list[Cell]) -> list[str]:
    """One shell command per cell: ``mvq sweep FILE --cell I`` (for schedulers)."""
    extra = [] if out is None else ["--out", out]
    return [shlex.join(["mvq", "sweep", file, "--cell", str(c.index), *extra]) for c in cells]


def dry_run(sweep: SweepConfig, cells: list[Cell]) -> None:
    """Print each cell's stages, whether they would be skipped, resumed or run, and commands."""
    for cell in cells:
        cell_dir = sweep.out / "cells" / cell.name
        stages = cell_stages(sweep, cell, cell_dir)
        first = first_stage_to_run(cell_dir, stages)
        first = len(stages) if first is None else first
        skipped = skipped_backfill(cell_dir, stages)
        print(f"cell {cell.index}: {cell.name}")
        for i, stage in enumerate(stages):
            resume = stage.resumable and (stage.out / CHECKPOINT).is_file()
            state = "done" if i < first else "resume" if resume else "run"
            state = "skip" if stage.name in skipped else state
            print(f"  {stage.name:6s} {state:6s} {shlex.join(stage.argv(resume and i >= first))}")


def sweep_command(args: argparse.Namespace) -> int:
    """``mvq sweep``: check everything, then list, dry-run, collect or run."""
    if args.jobs < 1 or (args.threads is not None and args.threads < 1):
        raise SweepError("--jobs and --threads must be at least 1")
    sweep = load_sweep(args.file, args.out)
    cells = expand(sweep)
    if args.cell is not None and not 0 <= args.cell < len(cells):
        raise SweepError(
            f"--cell {args.cell} is out of range: the sweep has {len(cells)} cells "
            f"(0 to {len(cells) - 1})"
        )
    selected = cells if args.cell is None else [cells[args.cell]]
    for cell in selected:
        cell_dir = sweep.out / "cells" / cell.name
        check_cell_dir(cell_dir, cell_stages(sweep, cell, cell_dir))
    if args.list:
        print("\n".join(list_commands(args.file, args.out, cells)))
        return 0
    if args.dry_run:
        dry_run(sweep, selected)
        return 0
    if args.collect:
        rows = collect(sweep, cells)
        print(f"collected {len(rows)} of {len(cells)} cells into {sweep.out / 'results.md'}")
        return 0
    threads = args.threads or default_threads()
    outcomes = run_sweep(sweep, cells, selected, args.jobs, threads)
    return report(sweep, outcomes)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``mvq sweep``."""
    p.add_argument(
        "file", help="the sweep file (YAML), see `mvq.experiments.sweep`'s docstring or README"
    )
    p.add_argument(
        "--out", help="output folder (default: the file's `out`, else runs/sweeps/<stem>)"
    )
    p.add_argument("--jobs", type=int, default=1, help="cells run at once (threads split)")
    p.add_argument("--threads", type=int, help="threads for all jobs (default: the CPUs available)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--list", action="store_true", help="print one command per cell and exit")
    mode.add_argument("--collect", action="store_true", help="only rebuild the results tables")
    mode.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    p.add_argument("--cell", type=int, help="run only cell I (a scheduler's array task)")
