"""A cell's stages (train, encode, prior, eval, sample_eval): the ``mvq`` commands and specs."""

from __future__ import annotations

import contextlib
import fcntl
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mvq.core.pretrained import atomic_write_file
from mvq.experiments.sweep.spec import (
    EVAL_STAGES,
    SAMPLE_SEED_STAGE,
    Cell,
    EvalSpec,
    SweepConfig,
    SweepError,
)

# --- stages -----------------------------------------------------------------------------------

MVQ = [sys.executable, "-m", "mvq.cli"]
STAGE_PROGRAM: dict[str, list[str]] = {}  # stage name -> argv prefix used instead of MVQ (tests)
CHECKPOINT = Path("checkpoints", "last.pt")  # where `mvq train` keeps a run's checkpoint


@dataclass
class Stage:
    """One subprocess of a cell: ``mvq <args>`` writing ``out``.

    ``spec`` is what the result depends on (compared with a finished stage's marker);
    ``resumable`` stages continue from ``out/checkpoints/last.pt`` with ``--resume``.
    """

    name: str
    args: list[str]
    out: Path
    spec: dict[str, Any]
    resumable: bool = False
    product: Path | None = None  # the file later stages read; missing -> the stage reruns
    backfill: bool = False  # added after cells finished: skipped, never retrains, if inputs gone
    needs: tuple[Path, ...] = ()  # earlier stages' products this stage reads

    def argv(self, resume: bool = False) -> list[str]:
        """The full command line (``--resume`` added when asked)."""
        program = STAGE_PROGRAM.get(self.name, MVQ)
        return [*program, *self.args, *(["--resume"] if resume else [])]


def _device_args(sweep: SweepConfig) -> list[str]:
    return [] if sweep.device is None else ["--device", sweep.device]


def _spec(sweep: SweepConfig, **values: Any) -> dict[str, Any]:
    """A stage's spec as it reads back from JSON, with the sweep's device."""
    device = {} if sweep.device is None else {"device": sweep.device}
    return json.loads(json.dumps(values | device))


def _set_args(sets: list[str]) -> list[str]:
    return [arg for s in sets for arg in ("--set", s)]


def cell_stages(sweep: SweepConfig, cell: Cell, cell_dir: Path) -> list[Stage]:
    """The cell's pipeline: train, [encode, prior], [eval]."""
    stages = [_train_stage(sweep, cell, cell_dir)]
    prior_model = None
    if cell.prior_run_config is not None:
        stages += [_encode_stage(sweep, cell, cell_dir), _prior_stage(sweep, cell, cell_dir)]
        prior_model = cell_dir / "prior" / "model"
    if sweep.eval is not None:  # reconstruction, then samples when there is a prior
        stages.append(_eval_stage(sweep, cell, cell_dir, None))
        if prior_model is not None:
            for seed in sweep.eval.sample_seeds:
                stages.append(_eval_stage(sweep, cell, cell_dir, prior_model, seed))
    return stages


def _weights(cell_dir: Path, run: str = "tokenizer") -> Path:
    """The trained weights of the cell's tokenizer (or prior) run: the train stage's product."""
    return cell_dir / run / "model" / "model.safetensors"


def _train_stage(sweep: SweepConfig, cell: Cell, cell_dir: Path) -> Stage:
    """``mvq train --config C --out CELL/tokenizer --set ...``."""
    run_dir = cell_dir / "tokenizer"
    args = ["train", "--config", str(cell.config), "--out", str(run_dir)]
    args += [*_set_args(cell.sets), *_device_args(sweep)]
    spec = _spec(sweep, run_config=cell.run_config.to_dict())
    return Stage("train", args, run_dir, spec, True, _weights(cell_dir))


def _encode_stage(sweep: SweepConfig, cell: Cell, cell_dir: Path) -> Stage:
    """``mvq encode --tokenizer CELL/tokenizer/model --data NAME --out CELL/tokens``."""
    data = cell.run_config.data
    args = ["encode", "--tokenizer", str(cell_dir / "tokenizer" / "model"), "--data", data["name"]]
    if data.get("root") is not None:
        args += ["--root", str(data["root"])]
    args += ["--out", str(cell_dir / "tokens"), "--seed", str(cell.seed), *_device_args(sweep)]
    spec = _spec(sweep, data=data["name"], root=data.get("root"), seed=cell.seed)
    tokens = cell_dir / "tokens"
    return Stage(
        "encode", args, tokens, spec, product=tokens / "meta.json", needs=(_weights(cell_dir),)
    )


def _prior_stage(sweep: SweepConfig, cell: Cell, cell_dir: Path) -> Stage:
    """``mvq train-prior --tokens CELL/tokens --config P --out CELL/prior --set ...``."""
    assert cell.prior_run_config is not None
    run_dir = cell_dir / "prior"
    args = ["train-prior", "--tokens", str(cell_dir / "tokens"), "--config", str(cell.prior_config)]
    args += ["--out", str(run_dir), *_set_args(cell.prior_sets), *_device_args(sweep)]
    spec = _spec(sweep, run_config=cell.prior_run_config.to_dict())
    tokens = cell_dir / "tokens" / "meta.json"
    return Stage("prior", args, run_dir, spec, True, _weights(cell_dir, "prior"), needs=(tokens,))


def _eval_stage(
    sweep: SweepConfig, cell: Cell, cell_dir: Path, prior: Path | None, seed: int = 0
) -> Stage:
    """``mvq eval --tokenizer DIR [--prior DIR -n N] --data NAME --split SPLIT --out DIR``.

    Without ``prior``: the reconstruction form into ``CELL/eval`` (stage ``eval``); with it:
    the sample form of the first sampling seed into ``CELL/eval_samples`` (stage
    ``sample_eval``) and of each later seed S into ``CELL/eval_samples_seedS`` (stage
    ``sample_eval_seedS``, a backfill stage, ``--seed S``).
    """
    spec = sweep.eval or EvalSpec()
    data = spec.data or cell.run_config.data["name"]
    first = prior is None or seed == spec.sample_seeds[0]
    if prior is None:
        name, out = "eval", "eval"
    elif first:
        name, out = "sample_eval", "eval_samples"
    else:
        name, out = f"{SAMPLE_SEED_STAGE}{seed}", f"eval_samples_seed{seed}"
    out = cell_dir / out
    args = ["eval", "--tokenizer", str(cell_dir / "tokenizer" / "model")]
    if prior is not None:
        args += ["--prior", str(prior), "-n", str(spec.n)]
    args += ["--data", data, "--split", spec.split, "--out", str(out)]
    metrics = spec.metrics if prior is None else spec.sample_metrics
    if metrics:
        args += ["--metrics", ",".join(metrics)]
    seeded = prior is not None and seed != 0  # 0 is eval's default: that spec stays as it was
    if seeded:
        args += ["--seed", str(seed)]
    args += _device_args(sweep)
    record = _spec(
        sweep,
        data=data,
        split=spec.split,
        n=spec.n if prior else None,
        metrics=metrics,
        prior=prior is not None,
        **({"seed": seed} if seeded else {}),
    )
    needs = (_weights(cell_dir),) + ((_weights(cell_dir, "prior"),) if prior is not None else ())
    return Stage(name, args, out, record, backfill=not first, needs=needs)


# --- markers: which stages of a cell are done ---------------------------------------------


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` all or nothing (``mvq.core.pretrained.atomic_write_file``)."""
    atomic_write_file(path, text)


def marker_path(cell_dir: Path, stage: str) -> Path:
    """Where a finished stage's marker lives."""
    return cell_dir / "markers" / f"{stage}.json"


def read_marker(cell_dir: Path, stage: str) -> dict[str, Any] | None:
    """A stage's marker, or None when absent or unreadable (the stage then runs again)."""
    try:
        marker = json.loads(marker_path(cell_dir, stage).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return marker if isinstance(marker, dict) else None


def stage_done(cell_dir: Path, stage: Stage) -> bool:
    """True when the stage has a marker made by the same spec."""
    marker = read_marker(cell_dir, stage.name)
    return marker is not None and marker.get("spec") == stage.spec


def skipped_backfill(cell_dir: Path, stages: list[Stage]) -> set[str]:
    """Names of the backfill stages that cannot run: not done, in a cell whose other stages
    are all done and one of whose products is gone.

    A cell that finished before its sweep asked for another sampling seed, and was committed
    without its weights, stays finished: it is not retrained only to sample once more.
    """
    finished = all(stage_done(cell_dir, s) for s in stages if not s.backfill)
    gone = any(s.product is not None and not s.product.exists() for s in stages)
    if not (finished and gone):
        return set()
    return {s.name for s in stages if s.backfill and not stage_done(cell_dir, s)}


def pending(cell_dir: Path, stages: list[Stage]) -> list[int]:
    """Indices of the stages not done, skipped backfill stages left out."""
    skipped = skipped_backfill(cell_dir, stages)
    return [
        i for i, s in enumerate(stages) if s.name not in skipped and not stage_done(cell_dir, s)
    ]


def first_stage_to_run(cell_dir: Path, stages: list[Stage]) -> int | None:
    """Index of the first stage to run, None when the cell is finished.

    A stage runs when it is not done, and so does a done stage whose product a stage that
    must run reads (``needs``) but which is gone (e.g. a results folder committed without its
    weights); every stage after the first to run runs too. Backfill stages whose inputs are
    gone are skipped (``skipped_backfill``).
    """
    first = next(iter(pending(cell_dir, stages)), None)
    while first:
        needed = {path for stage in stages[first:] for path in stage.needs}
        gone = [
            i
            for i, stage in enumerate(stages[:first])
            if stage.product in needed and not stage.product.exists()
        ]
        if not gone:
            break
        first = gone[0]
    return first


def check_cell_dir(cell_dir: Path, stages: list[Stage]) -> None:
    """Refuse a cell folder whose finished training stages were made by another spec.

    A changed eval spec only reruns the eval stage.
    """
    for stage in stages:
        marker = read_marker(cell_dir, stage.name)
        if stage.name in EVAL_STAGES or marker is None or marker.get("spec") == stage.spec:
            continue
        old, new = marker.get("spec") or {}, stage.spec
        diff = next((k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)), "")
        raise SweepError(
            f"{cell_dir} holds a finished '{stage.name}' stage of another spec "
            f"({diff} differs): use another --out, or delete that cell folder"
        )


@contextlib.contextmanager
def file_lock(path: Path, wait: bool) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path``: yields False when ``wait`` is False and it is held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
