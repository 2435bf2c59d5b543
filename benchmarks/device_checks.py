"""Helpers of ``benchmarks/device_checks.sh``, the GPU acceptance run (issue 30).

Subcommands (``python benchmarks/device_checks.py NAME --help``):

* ``mvq ARGS``: ``mvq ARGS`` with ``torch.use_deterministic_algorithms(True)`` (warn only), so a
  killed and resumed run can equal an uninterrupted one on CUDA (inductor turns its numerics-
  changing autotuning off in that mode);
* ``torchrun ARGS``: under torchrun, join a process group (NCCL on CUDA, gloo on the CPU),
  all-reduce once, then ``mvq ARGS`` in that group;
* ``resume RUN CUT --killed CKPT``: the weights of an uninterrupted run and of one killed after
  checkpoint CKPT and resumed, compared exactly and within the stated tolerance;
* ``e2e RUNS``: what the end-to-end part produced (prior NLL, samples, eval numbers);
* ``claims LOG``: exit 1 when the last JSON line of a part's log says ``"ok": false``;
* ``summarize WORK OUT``: ``OUT/summary.json`` and ``OUT/logs.tar.gz`` from the parts so far.

Each subcommand that checks something prints one JSON line last and exits 1 when the check
fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from mvq.experiments.sweep import last_json_object

RESUME_RTOL, RESUME_ATOL = 1e-4, 1e-5  # the stated tolerance of a resumed run's weights
PARTS_DIR = "parts"  # WORK/parts/NAME.json: one record per finished part


def run_mvq(argv: list[str]) -> int:
    """``mvq argv`` in deterministic mode (warn only: an op without a deterministic kernel
    warns, naming itself, instead of stopping the run)."""
    import torch

    from mvq.cli import main

    torch.use_deterministic_algorithms(True, warn_only=True)
    return main(argv)


def run_torchrun(argv: list[str]) -> int:
    """One torchrun process: join a group, check an all-reduce, run ``mvq argv`` in it."""
    import torch
    import torch.distributed as dist

    from mvq.cli import main

    local = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available() and os.environ.get("DEVICE", "cuda") != "cpu"
    backend = os.environ.get("TORCHRUN_BACKEND") or ("nccl" if cuda else "gloo")
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
    ones = torch.ones(4, device=device if backend == "nccl" else "cpu")
    dist.all_reduce(ones)
    world = dist.get_world_size()
    reduced = bool((ones == world).all())
    code = main(argv)  # mvq uses the caller's group and leaves it
    kept = dist.is_initialized()
    dist.destroy_process_group()
    ok = code == 0 and reduced and kept
    print(
        json.dumps(
            {
                "backend": backend,
                "world_size": world,
                "all_reduce_ok": reduced,
                "group_left_to_caller": kept,
                "mvq_exit": code,
                "ok": ok,
            }
        )
    )
    return 0 if ok else 1


def model_state(run: Path) -> dict:
    """The saved model of run directory ``run`` (``model/model.safetensors``)."""
    from safetensors.torch import load_file

    return load_file(str(run / "model" / "model.safetensors"))


def compare_resume(run: Path, cut: Path, killed_at: int | None, steps: int) -> dict[str, Any]:
    """An uninterrupted run's weights against a killed-and-resumed run's, as one record."""
    import torch

    a, b = model_state(run), model_state(cut)
    diffs = {k: (a[k].double() - b[k].double()).abs().max().item() for k in a if k in b}
    close = all(
        torch.allclose(a[k].double(), b[k].double(), rtol=RESUME_RTOL, atol=RESUME_ATOL)
        for k in diffs
    )
    worst = max(diffs, key=diffs.get) if diffs and max(diffs.values()) > 0 else None
    record = {
        "tensors": len(a),
        "same_keys": a.keys() == b.keys(),
        "exact": a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a),
        "max_abs_diff": max(diffs.values(), default=math.nan),
        "worst_tensor": worst,
        "tolerance": {"rtol": RESUME_RTOL, "atol": RESUME_ATOL},
        "killed_at_checkpoint_step": killed_at,
        "steps": steps,
    }
    exercised = killed_at is not None and 0 < killed_at < steps
    record["ok"] = bool(exercised and record["same_keys"] and close)
    if not exercised:
        record["why"] = "the kill came after the run had finished: nothing was resumed"
    return record


def checkpoint_step(path: Path) -> int | None:
    """The step of training checkpoint ``path``, or None without one."""
    from mvq.training import load_checkpoint

    return int(load_checkpoint(path)["step"]) if path.is_file() else None


def e2e_report(runs: Path) -> dict[str, Any]:
    """The numbers the end-to-end part produced under ``runs`` (the resume check's record in
    ``runs/resume.json``) and whether each is sane."""
    rec = json.loads((runs / "eval_rec" / "eval.json").read_text())
    smp = json.loads((runs / "eval_samples" / "eval.json").read_text())
    pngs = [p for p in (runs / "samples").glob("*.png") if p.name != "grid.png"]
    prior = last_json_object((runs / "train_prior.log").read_text())
    resume = json.loads((runs / "resume.json").read_text())
    out = {
        "resume_ok": resume["ok"],
        "resume_exact": resume["exact"],
        "resume_max_abs_diff": resume["max_abs_diff"],
        "train_images_per_s": last_json_object((runs / "full.log").read_text()).get("images_per_s"),
        "prior_val_nll_nats_per_token": prior.get("val_nll_nats_per_token"),
        "samples_written": len(pngs),
        "rec": {k: rec.get(k) for k in ("mse", "psnr", "fd_fmnist", "fd_fmnist_floor")},
        "samples": {
            k: smp.get(k)
            for k in ("sample_fd_fmnist", "sample_f8", "sample_f1_8", "prior_nll_nats_per_token")
        },
        "eval_device": rec["meta"]["device"],
        "fd_fmnist_classifier": rec["meta"].get("fd_fmnist_classifier"),
        "unavailable": sorted(rec.get("unavailable", {})),
    }
    numbers = [*out["rec"].values(), *out["samples"].values()]
    finite = all(isinstance(v, float) and math.isfinite(v) for v in numbers)
    out["ok"] = bool(pngs) and finite and resume["ok"]
    return out


def summarize(work: Path, out: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``out/summary.json`` (every part so far, failures named) and ``out/logs.tar.gz``."""
    parts = {}
    for path in sorted((work / PARTS_DIR).glob("*.json")):
        record = json.loads(path.read_text())
        log = work / "logs" / f"{path.stem}.log"
        text = log.read_text(errors="replace") if log.is_file() else ""
        record["result"] = last_json_object(text)
        parts[path.stem] = record
    failed = [name for name, r in parts.items() if r["status"] != "ok"]
    summary = {
        **meta,
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "parts": parts,
        "failed": failed,
        "ok": bool(parts) and not failed,
    }
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, out / "summary.json")
    with tarfile.open(out / ".logs.tar.gz.tmp", "w:gz") as tar:
        for log in sorted((work / "logs").glob("*.log")):
            tar.add(log, arcname=f"logs/{log.name}")
    os.replace(out / ".logs.tar.gz.tmp", out / "logs.tar.gz")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("mvq", "torchrun"):
        sub.add_parser(name).add_argument("args", nargs=argparse.REMAINDER)
    re_ = sub.add_parser("resume")
    re_.add_argument("run", type=Path)
    re_.add_argument("cut", type=Path)
    re_.add_argument("--killed", type=Path, help="the checkpoint the killed run left")
    re_.add_argument("--steps", type=int, required=True)
    re_.add_argument("--out", type=Path, help="also write the record to this JSON file")
    sub.add_parser("e2e").add_argument("runs", type=Path)
    sub.add_parser("claims").add_argument("log", type=Path)
    su = sub.add_parser("summarize")
    su.add_argument("work", type=Path)
    su.add_argument("out", type=Path)
    su.add_argument("--meta", type=Path, help="a JSON file of what the run ran on")
    args = ap.parse_args(argv)
    if args.command == "mvq":
        return run_mvq(args.args)
    if args.command == "torchrun":
        return run_torchrun(args.args)
    if args.command == "claims":
        return 1 if last_json_object(args.log.read_text(errors="replace")).get("ok") is False else 0
    if args.command == "summarize":
        meta = json.loads(args.meta.read_text()) if args.meta and args.meta.is_file() else {}
        summary = summarize(args.work, args.out, meta)
        return 0 if summary["ok"] else 1
    record = (
        compare_resume(args.run, args.cut, checkpoint_step(args.killed), args.steps)
        if args.command == "resume"
        else e2e_report(args.runs)
    )
    print(json.dumps(record))
    if getattr(args, "out", None):
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
