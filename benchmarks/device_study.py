"""Helpers of ``benchmarks/device_study.sh``: a sweep's pending cells on a lent GPU machine for a
given time, several at once, and their committed outputs brought back in one archive.

    python benchmarks/device_study.py run SWEEP --minutes M [--jobs N] [--cells 3,7] [--out DIR]
    python benchmarks/device_study.py pack SWEEP --record WORK/run.json --archive OUT/study.tar.gz
    python benchmarks/device_study.py unpack ARCHIVE SWEEP [--out DIR]   # here, afterwards

``run`` starts ``mvq sweep SWEEP --cell I`` for each pending cell (``--cells``: these, in this
order), ``--jobs`` at a time with the machine's CPUs split between them, starts none once fewer
than ``--min-start`` minutes are left, and at the end of ``--minutes`` interrupts what still
runs (SIGINT, as Ctrl-C: training stages checkpoint and stop; such a cell stays unfinished).

``pack`` puts the cells this run finished into a tar.gz: per cell, the files git would commit
there (``git ls-files``, so ``results/fmnist/.gitignore`` decides: cell.json, markers,
eval.json/csv, metrics.csv, model cards and configs, reconstruction grids; no weights, tokens,
checkpoints, logs or samples), plus ``manifest.json`` (machine, commit, cells). Without git it
reads the ``.gitignore`` files itself (``ignored``). Cells past ``--limit-mib`` are left out and
listed. ``unpack`` checks every cell against the sweep file here (each stage's marker made by
the same spec: ``mvq sweep --collect`` counts it as finished) and moves it into the sweep's
folder; a cell finished or running here is kept as it is, an unfinished one is moved aside to
``runs/device_study_replaced/``.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import functools
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from mvq.experiments.sweep import (
    Cell,
    SweepConfig,
    cell_stages,
    expand,
    file_lock,
    first_stage_to_run,
    load_sweep,
    pending,
    repo_commit,
)

LIMIT_MIB = 15.5  # the device tool brings back files of at most 16 MiB
GRACE_S = 90  # after the SIGINT at the deadline, before SIGKILL
MANIFEST = "manifest.json"


def cell_dir(sweep: SweepConfig, cell: Cell) -> Path:
    """Where ``mvq sweep`` keeps a cell."""
    return sweep.out / "cells" / cell.name


def finished(sweep: SweepConfig, cell: Cell) -> bool:
    """Whether every stage of the cell has a marker of its spec (what ``--collect`` needs)."""
    folder = cell_dir(sweep, cell)
    return not pending(folder, cell_stages(sweep, cell, folder))


def to_run(sweep: SweepConfig, cells: list[Cell], wanted: list[int] | None) -> list[Cell]:
    """The cells to run: ``wanted`` (indices, in that order) or all, less the finished ones."""
    chosen = cells if wanted is None else [cells[i] for i in wanted]
    return [
        c
        for c in chosen
        if first_stage_to_run(cell_dir(sweep, c), cell_stages(sweep, c, cell_dir(sweep, c)))
        is not None
    ]


def sweep_command(file: str, out: str | None, cell: Cell, threads: int) -> list[str]:
    """``mvq sweep FILE --cell I`` with this job's share of the CPUs."""
    extra = [] if out is None else ["--out", out]
    return [
        sys.executable,
        "-m",
        "mvq.cli",
        "sweep",
        file,
        "--cell",
        str(cell.index),
        "--threads",
        str(threads),
        *extra,
    ]


def stop(procs: list[subprocess.Popen], grace: float) -> None:
    """Interrupt the jobs' process groups as Ctrl-C would (a training stage finishes its step
    and checkpoints); kill the groups still there after ``grace`` seconds."""
    for sig in (signal.SIGINT, signal.SIGKILL):
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
        end = time.monotonic() + (grace if sig == signal.SIGINT else 10)
        while time.monotonic() < end and any(p.poll() is None for p in procs):
            time.sleep(0.5)


def run_cells(args: argparse.Namespace, sweep: SweepConfig, queue: list[Cell]) -> list[dict]:
    """Run the queued cells ``args.jobs`` at a time until ``args.minutes`` are up."""
    start = time.monotonic()
    deadline = start + 60 * args.minutes
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    logs = Path(args.work) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    running: list[tuple[subprocess.Popen, Cell, float]] = []
    records, waiting = [], list(queue)
    while waiting or running:
        left = deadline - time.monotonic()
        stopped = left <= 0
        if stopped:  # time is up: interrupt what runs (its cells stay unfinished)
            stop([proc for proc, _, _ in running], GRACE_S)
        for proc, cell, t0 in [j for j in running if j[0].poll() is not None]:
            running.remove((proc, cell, t0))
            wall = time.monotonic() - t0
            records.append(outcome(sweep, cell, proc.returncode, wall, stopped))
        while waiting and len(running) < args.jobs and left > 60 * args.min_start:
            cell = waiting.pop(0)
            with open(logs / f"cell_{cell.index}.log", "w") as log:  # the child keeps its copy
                proc = subprocess.Popen(
                    sweep_command(args.sweep, args.out, cell, threads),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                )
            running.append((proc, cell, time.monotonic()))
            print(f"cell {cell.index} ({cell.name}) started, {left / 60:.1f} min left", flush=True)
        if left <= 60 * args.min_start and waiting:
            records += [
                {"index": c.index, "name": c.name, "status": "not_started"} for c in waiting
            ]
            waiting = []
        time.sleep(0.5)
    return records


def outcome(
    sweep: SweepConfig, cell: Cell, code: int | None, wall: float, stopped: bool
) -> dict[str, Any]:
    """What became of one started cell (``stopped``: interrupted at the deadline)."""
    status = "finished" if finished(sweep, cell) else "interrupted" if stopped else "failed"
    print(f"cell {cell.index} {status} after {wall / 60:.1f} min (exit {code})", flush=True)
    return {
        "index": cell.index,
        "name": cell.name,
        "status": status,
        "exit_code": code,
        "wall_s": round(wall, 1),
    }


# --- what git would commit ---------------------------------------------------------------------


def committed_files(folder: Path) -> list[str]:
    """Files under ``folder`` that git would commit (relative paths, sorted): ``git ls-files``
    in a work tree, else ``ignored`` over the ``.gitignore`` files above and inside it."""
    try:
        out = subprocess.run(
            [
                "git",
                "-C",
                str(folder),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
                "--",
                ".",
            ],
            capture_output=True,
            check=True,
            timeout=60,
        )
        names = {p for p in out.stdout.decode().split("\0") if p}
        return sorted(p for p in names if (folder / p).is_file())  # tracked but deleted: no
    except (OSError, subprocess.SubprocessError):
        pass
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not ignored(path):
            files.append(path.relative_to(folder).as_posix())
    return files


@functools.cache
def _rules(directory: Path) -> list[tuple[str, bool, bool]]:
    """``(pattern, negated, dir_only)`` of ``directory/.gitignore`` (none when absent)."""
    try:
        lines = (directory / ".gitignore").read_text().splitlines()
    except OSError:
        return []
    rules = []
    for line in lines:
        line = line.rstrip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        line = line[1:] if negated else line
        rules.append((line.rstrip("/"), negated, line.endswith("/")))
    return rules


def _matches(rel: str, is_dir: bool, pattern: str, dir_only: bool) -> bool:
    """Whether one gitignore pattern matches ``rel`` (relative to the .gitignore's folder)."""
    if dir_only and not is_dir:
        return False
    if "/" in pattern:  # anchored at the .gitignore's folder
        return fnmatch.fnmatchcase(rel, pattern.lstrip("/"))
    return fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], pattern)


def ignored(path: Path) -> bool:
    """Whether git would ignore ``path``: the ``.gitignore`` files of its folders, the deeper
    and later rule winning, and nothing inside an ignored folder re-included (git's rules, less
    ``**`` and character classes across ``/``)."""
    path = path.absolute()
    chain = [*reversed(path.parents)]  # "/" first
    for depth in range(1, len(chain) + 1):  # each folder below the root, then the file itself
        target = chain[depth] if depth < len(chain) else path
        verdict = None
        for folder in chain[:depth]:
            rel = target.relative_to(folder).as_posix()
            for pattern, negated, dir_only in _rules(folder):
                if _matches(rel, target != path or path.is_dir(), pattern, dir_only):
                    verdict = not negated
        if verdict:
            return True
    return False


# --- the archive -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the cells ran on."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cpus": os.cpu_count(),
    }


def pack(args: argparse.Namespace, sweep: SweepConfig) -> dict[str, Any]:
    """Write the archive of the cells ``args.record`` says this run finished."""
    run = json.loads(Path(args.record).read_text())
    names = [r["name"] for r in run["cells"] if r["status"] == "finished"]
    packed, left_out, total = [], [], 0
    with tempfile.NamedTemporaryFile(dir=Path(args.archive).parent, delete=False) as tmp:
        with tarfile.open(fileobj=tmp, mode="w:gz") as tar:
            for name in names:
                folder = sweep.out / "cells" / name
                files = committed_files(folder)
                size = sum((folder / f).stat().st_size for f in files)
                if (total + size) / 2**20 > args.limit_mib:
                    left_out.append(name)
                    continue
                for f in files:
                    tar.add(folder / f, arcname=f"cells/{name}/{f}", recursive=False)
                packed.append(name)
                total += size
            manifest = {
                "sweep": sweep.name,
                "sweep_file": args.sweep,
                "cells": packed,
                "left_out_over_size": left_out,
                "run": run,
                "machine": machine(),
                "commit": repo_commit(Path(__file__).resolve()),  # the code that ran
                "packed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            data = json.dumps(manifest, indent=2).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime = len(data), int(time.time())
            tar.addfile(info, fileobj=io.BytesIO(data))
    os.replace(tmp.name, args.archive)
    if args.logs:
        write_logs(args.logs, sweep, [r["name"] for r in run["cells"]], args.job_logs)
    return manifest


def write_logs(archive: str, sweep: SweepConfig, names: list[str], job_logs: str | None) -> None:
    """The jobs' logs and the stage logs of every cell this run touched, as one tar.gz."""
    with tarfile.open(archive, "w:gz") as tar:
        if job_logs and Path(job_logs).is_dir():
            tar.add(job_logs, arcname="jobs")
        for name in names:
            logs = sweep.out / "cells" / name / "logs"
            if logs.is_dir():
                tar.add(logs, arcname=f"cells/{name}/logs")


def unpack(args: argparse.Namespace) -> int:
    """Check the archive's cells against the sweep here and move each into its folder."""
    sweep = load_sweep(args.sweep, args.out)
    cells = {c.name: c for c in expand(sweep)}
    sweep.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=sweep.out) as tmp, tarfile.open(args.archive) as tar:
        tar.extractall(tmp, filter="data")
        manifest = json.loads((Path(tmp) / MANIFEST).read_text())
        print(
            f"{args.archive}: {len(manifest['cells'])} cells of sweep {manifest['sweep']}, "
            f"run on {manifest['machine']['device']} at {manifest['commit']}"
        )
        taken = 0
        for name in manifest["cells"]:
            taken += place(sweep, cells.get(name), name, Path(tmp) / "cells" / name)
    print(
        f"unpacked {taken} of {len(manifest['cells'])} cells into {sweep.out / 'cells'}; "
        f"now: mvq sweep {args.sweep}{f' --out {args.out}' if args.out else ''} --collect"
    )
    return 0 if taken == len(manifest["cells"]) else 1


def place(sweep: SweepConfig, cell: Cell | None, name: str, new: Path) -> bool:
    """Move one unpacked cell into the sweep's folder, when it is this sweep's and finished."""
    if cell is None:
        print(f"  {name}: not a cell of {sweep.path} here: left out")
        return False
    stages = cell_stages(sweep, cell, new)
    if pending(new, stages):
        print(f"  {name}: its stages' specs differ from {sweep.path} here: left out")
        return False
    target = cell_dir(sweep, cell)
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target / ".lock", wait=False) as free:
        if not free:
            print(f"  {name}: running here now: left out")
            return False
        if finished(sweep, cell):
            print(f"  {name}: finished here already: kept the local one")
            return False
        if any(p.name != ".lock" for p in target.iterdir()):
            aside = Path("runs", "device_study_replaced", f"{name}.{int(time.time())}")
            aside.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(target), aside)
            print(f"  {name}: the unfinished local cell moved to {aside}")
        else:
            shutil.rmtree(target)
        shutil.move(str(new), target)
    print(f"  {name}: unpacked")
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    ru = sub.add_parser("run")
    ru.add_argument("sweep")
    ru.add_argument("--minutes", type=float, required=True)
    ru.add_argument("--jobs", type=int, default=4)
    ru.add_argument("--cells", help="comma-separated cell indices, in the order to run them")
    ru.add_argument("--min-start", type=float, default=2.0, help="minutes a cell needs at least")
    ru.add_argument("--threads", type=int, help="CPU threads per job (default: CPUs / jobs)")
    ru.add_argument("--out", help="the sweep's output folder (default: the file's)")
    ru.add_argument("--work", required=True, help="folder for the jobs' logs and run.json")
    pa = sub.add_parser("pack")
    pa.add_argument("sweep")
    pa.add_argument("--out")
    pa.add_argument("--record", required=True, help="run.json of `run`")
    pa.add_argument("--archive", required=True)
    pa.add_argument("--limit-mib", type=float, default=LIMIT_MIB)
    pa.add_argument("--logs", help="also write the logs to this tar.gz")
    pa.add_argument("--job-logs", help="the folder of the jobs' logs (`run`'s WORK/logs)")
    un = sub.add_parser("unpack")
    un.add_argument("archive")
    un.add_argument("sweep")
    un.add_argument("--out")
    args = ap.parse_args(argv)
    if args.command == "unpack":
        return unpack(args)
    sweep = load_sweep(args.sweep, args.out)
    if args.command == "pack":
        manifest = pack(args, sweep)
        print(json.dumps({k: manifest[k] for k in ("cells", "left_out_over_size", "commit")}))
        return 0
    wanted = None if not args.cells else [int(i) for i in args.cells.replace(",", " ").split()]
    queue = to_run(sweep, expand(sweep), wanted)
    print(f"{len(queue)} cells to run: {[c.index for c in queue]}", flush=True)
    records = run_cells(args, sweep, queue)
    run = {"minutes": args.minutes, "jobs": args.jobs, "cells": records}
    (Path(args.work) / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    counts = {
        s: sum(r["status"] == s for r in records)
        for s in ("finished", "failed", "interrupted", "not_started")
    }
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
