"""The ``mvq`` command line: one subcommand per job (``mvq --help`` lists them).

An ``MVQError`` (bad config, missing data, broken checkpoint, unwritable run directory, a full
disk, a device this machine lacks) prints one line ``mvq: error: ...`` and exits with status 2;
``--debug`` (or ``MVQ_DEBUG=1``) shows its traceback instead. Any other exception is a bug: it
keeps its traceback (exit status 1). A training run or sweep stopped by SIGTERM or SIGUSR1
after its checkpoint prints one line ``mvq: SIGTERM: ...`` and exits with status 143 (SIGTERM)
or 75 (SIGUSR1: "checkpointed on request, requeue me"); see ``mvq.training.interrupt``.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mvq import __version__
from mvq.core.errors import DeviceError, MVQError, disk_full_cause
from mvq.core.host_memory import keep_freed_memory
from mvq.training.config import DEVICE_HELP
from mvq.training.interrupt import RunStopped
from mvq.training.runconfig import RunConfig, apply_override, load_run_config

if TYPE_CHECKING:
    import torch

DESCRIPTION = (
    "Train, sample and evaluate discrete image tokenizers (MVQ, VQ-VAE-2, FSQ) and their priors."
)
EPILOG = """example:
  mvq train --config configs/mvqvae_fmnist_s4_k16.yaml --out runs/mvq_s4 --max-steps 2000
  mvq sample --tokenizer runs/mvq_s4 --prior runs/prior -n 64 --out runs/samples

'mvq COMMAND --help' shows the options of a command. Bad input is one line 'mvq: error: ...'
(exit status 2); --debug or MVQ_DEBUG=1 shows its traceback."""
DEBUG_HELP = "show the traceback of an mvq error instead of one line (or set MVQ_DEBUG=1)"


def _print_rank0(summary: dict) -> None:
    """Print a run's JSON summary once, from rank 0 of a torchrun launch."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))


def _run_config(args: argparse.Namespace) -> RunConfig:
    """The YAML run config with the command line's overrides applied."""
    cfg = load_run_config(args.config)
    for key in ("max_steps", "seed", "batch_size", "lr", "device"):
        if getattr(args, key) is not None:
            cfg.train[key] = getattr(args, key)
    for assignment in args.set or ():
        apply_override(cfg, assignment)
    return cfg


def _train(args: argparse.Namespace) -> None:
    from mvq.training.tokenizer_job import train_tokenizer

    cfg = _run_config(args)
    model, result = train_tokenizer(cfg, args.out, resume=args.resume)
    summary = {"steps": result.steps, "images_per_s": round(result.items_per_second, 1)}
    if result.last_val_loss is not None:
        summary["val_loss"] = round(result.last_val_loss, 6)
    if hasattr(model.config, "perceptual"):  # a GAN tokenizer: say which objective it had
        summary["perceptual"] = model.config.perceptual
    _print_rank0(summary)


def _list(args: argparse.Namespace) -> None:
    from mvq.priors import list_priors
    from mvq.tokenizers import list_tokenizers

    print("\n".join(list_priors() if args.priors else list_tokenizers()))


def _device(name: str) -> torch.device:
    """``--device``, chosen as the trainer chooses (LOCAL_RANK's GPU under torchrun); a bad
    name or a device this machine lacks is a one-line ``DeviceError``."""
    from mvq.core.device import device_problem, resolve_device

    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    problem = device_problem(name, local_rank)
    if problem is not None:
        raise DeviceError(f"--device {name}: {problem}")
    return resolve_device(name, local_rank)


def _is_rank0() -> bool:
    """True unless this is a non-zero rank of a torchrun launch (which must not write)."""
    return int(os.environ.get("RANK", "0")) == 0


def _encode(args: argparse.Namespace) -> None:
    from mvq.core.token_files import tokenizer_identity
    from mvq.data import build_dataset, dataset_info
    from mvq.tokenizers import load_tokenizer
    from mvq.tokenizers.apply import encode_dataset

    device = _device(args.device)
    model = load_tokenizer(args.tokenizer)
    data = {"name": args.data, "root": args.root, "download": args.download}
    splits = {s: build_dataset(split=s, **data) for s in args.splits.split(",")}
    identity = tokenizer_identity(model, args.tokenizer)
    num_classes = dataset_info(args.data).num_classes
    if not _is_rank0():
        return  # every rank would write the same token directory
    model.to(device)
    out = encode_dataset(model, splits, args.out, identity, data, num_classes, seed=args.seed)
    print(
        json.dumps(
            {
                "out": str(out),
                "splits": {k: len(v) for k, v in splits.items()},
                "tokens_per_image": model.token_layout.num_tokens,
            }
        )
    )


def _train_prior(args: argparse.Namespace) -> None:
    from mvq.training.prior_job import train_prior

    cfg = _run_config(args)
    _, result = train_prior(cfg, args.tokens, args.out, resume=args.resume)
    summary = {"steps": result.steps, "tokens_sets_per_s": round(result.items_per_second, 1)}
    summary |= {
        k: round(v, 4) for k, v in result.train_logs.items() if k.startswith(("nll", "bits"))
    }
    if result.last_val_loss is not None:
        summary["val_nll_nats_per_token"] = round(result.last_val_loss, 4)
    _print_rank0(summary)


def _sample(args: argparse.Namespace) -> None:
    from mvq.sampling.pipeline import SampleOptions, run_sample

    options = SampleOptions(
        args.temperature, args.top_k, args.top_p, args.steps, args.schedule, args.batch_size
    )
    device = _device(args.device)
    if not _is_rank0():
        return  # every rank would write the same images
    report = run_sample(
        args.tokenizer, args.prior, args.n, args.out, options, args.label, args.seed, device
    )
    print(json.dumps(report))


def _reconstruct(args: argparse.Namespace) -> None:
    from mvq.tokenizers.apply import reconstruct

    summary = reconstruct(
        args.tokenizer, args.images, args.out, args.device, args.batch_size, args.seed
    )
    print(json.dumps(summary))


def _tokenize(args: argparse.Namespace) -> None:
    from mvq.tokenizers.apply import tokenize

    summary = tokenize(
        args.tokenizer, args.images, args.out, args.device, args.batch_size, args.seed
    )
    print(json.dumps(summary))


def _decode(args: argparse.Namespace) -> None:
    from mvq.tokenizers.apply import decode

    print(json.dumps(decode(args.tokenizer, args.tokens, args.out, args.device, args.batch_size)))


def _eval(args: argparse.Namespace) -> None:
    from pathlib import Path

    from mvq.eval.evaluate import EvalRequest, run_eval
    from mvq.eval.metrics_table import format_table

    paths = {
        k: Path(v) if v else None
        for k, v in (("tokenizer", args.tokenizer), ("prior", args.prior), ("images", args.images))
    }
    request = EvalRequest(
        Path(args.out),
        **paths,
        data=args.data,
        split=args.split,
        root=args.root,
        n=args.n,
        metrics=args.metrics,
        device=args.device,
        weights_dir=args.weights_dir,
        batch_size=args.batch_size,
        seed=args.seed,
        fd_classifier=args.fd_classifier,
    )
    print(format_table(run_eval(request)))
    print(f"wrote {Path(args.out) / 'eval.json'} and a row of {Path(args.out) / 'eval.csv'}")


def _configs(args: argparse.Namespace) -> None:
    from mvq.training.runconfig import write_paper_configs

    paths = write_paper_configs(args.out)
    print(f"wrote {len(paths)} run configs to {args.out}")


def _demo(args: argparse.Namespace) -> None:
    from mvq.experiments.demo import run

    run(args)


def _sweep(args: argparse.Namespace) -> int:
    from mvq.experiments.sweep import sweep_command

    return sweep_command(args)


def _viz(args: argparse.Namespace) -> None:
    from mvq.report.viz import run

    print(json.dumps(run(args)))


def _report(args: argparse.Namespace) -> None:
    from mvq.report.page import write_report

    print(write_report(args.dir, args.out))


def _device_argument(p: argparse.ArgumentParser, default: str | None = "auto") -> None:
    """``--device`` with the one help text of every command that runs a model."""
    where = default or "the config's train.device, else auto"
    p.add_argument("--device", default=default, help=f"{DEVICE_HELP} (default: {where})")


def _training_arguments(p: argparse.ArgumentParser) -> None:
    """The options ``train`` and ``train-prior`` share."""
    p.add_argument(
        "--out",
        "--run-dir",
        dest="out",
        required=True,
        metavar="DIR",
        help="run directory: checkpoints, logs and the trained model/ (--run-dir: the former name)",
    )
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--seed", type=int, help="seed of the run and its data order")
    p.add_argument("--batch-size", type=int, help="global batch size, split over the processes")
    p.add_argument("--lr", type=float, help="Adam learning rate")
    _device_argument(p, default=None)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the run directory's last checkpoint (none yet: start the run)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override a field, e.g. --set model_config.num_hypotheses=64",
    )


def _training_parsers(sub: argparse._SubParsersAction) -> None:
    """``train`` (a tokenizer), ``encode`` (its tokens) and ``train-prior``."""
    tr = _command(sub, "train", _train, "train a tokenizer from a YAML run config")
    tr.add_argument("--config", required=True, help="e.g. configs/mvqvae_fmnist_s4_k16.yaml")
    _training_arguments(tr)
    en = _command(sub, "encode", _encode, "encode a data set into tokens once, for priors")
    en.add_argument("--tokenizer", required=True, help="a saved tokenizer (run directory/model)")
    en.add_argument("--data", required=True, help="data set name, e.g. fashion_mnist")
    en.add_argument("--root", help="data set folder (default: the data set's usual place)")
    en.add_argument("--download", action="store_true", help="download the data if missing")
    en.add_argument("--splits", default="train,val", help="comma-separated splits")
    en.add_argument("--out", required=True, help="token directory to write")
    en.add_argument("--seed", type=int, default=0, help="seed of MVQ's mask search")
    _device_argument(en)
    tp = _command(sub, "train-prior", _train_prior, "train a token prior on a token directory")
    tp.add_argument("--tokens", required=True, help="token directory from 'mvq encode'")
    tp.add_argument("--config", required=True, help="e.g. configs/priors/transformer_4p1.yaml")
    _training_arguments(tp)


def _sample_parser(sub: argparse._SubParsersAction) -> None:
    sa = _command(sub, "sample", _sample, "sample images: prior -> tokens -> tokenizer")
    sa.add_argument("--tokenizer", required=True, help="the saved tokenizer")
    sa.add_argument("--prior", required=True, help="the saved prior (run directory/model)")
    sa.add_argument("-n", type=int, default=64, help="number of images (default: 64)")
    sa.add_argument("--out", required=True, help="folder for the PNGs and grid.png")
    sa.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="softmax temperature of the prior (default: 1.0)",
    )
    sa.add_argument("--top-k", type=int, help="sample among the k likeliest tokens only")
    sa.add_argument("--top-p", type=float, help="sample from the nucleus of probability p only")
    sa.add_argument("--steps", type=int, help="MaskGIT decoding steps (default min(8, tokens))")
    sa.add_argument("--schedule", default="cosine", help="MaskGIT mask schedule (default: cosine)")
    sa.add_argument("--label", type=int, help="class to sample (class-conditional priors)")
    sa.add_argument("--seed", type=int, default=0, help="seed of the sampler (default: 0)")
    sa.add_argument("--batch-size", type=int, default=64, help="images per batch (default: 64)")
    _device_argument(sa)


def _image_parsers(sub: argparse._SubParsersAction) -> None:
    """``reconstruct``, ``tokenize`` and ``decode``: a trained tokenizer on image files."""
    tok = "a trained tokenizer: its model/ folder, a run directory or a Hub id org/name"
    re_ = _command(sub, "reconstruct", _reconstruct, "a folder of images -> reconstructions (PNG)")
    tz = _command(sub, "tokenize", _tokenize, "a folder of images -> a token file")
    de = _command(sub, "decode", _decode, "a token file -> images (PNG)")
    for p in (re_, tz, de):
        p.add_argument("--tokenizer", required=True, help=tok)
    for p in (re_, tz):
        p.add_argument("--images", required=True, help="a folder of images (recursive) or one")
    re_.add_argument("--out", required=True, help="new folder for the PNGs (same names as IN)")
    tz.add_argument("--out", required=True, help="token file to write (.safetensors)")
    de.add_argument("--tokens", required=True, help="a token file from 'mvq tokenize'")
    de.add_argument("--out", required=True, help="new folder for the PNGs")
    for p in (re_, tz, de):
        _device_argument(p)
        p.add_argument("--batch-size", type=int, default=32, help="images per batch (default: 32)")
    for p in (re_, tz):
        p.add_argument("--seed", type=int, default=0, help="seed of MVQ's mask search")


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    ev = _command(sub, "eval", _eval, "metrics of a tokenizer, its samples, or a folder of images")
    ev.add_argument("--tokenizer", help="a saved tokenizer: reconstruction metrics")
    ev.add_argument("--prior", help="a saved prior of --tokenizer: sample metrics")
    ev.add_argument("--images", help="a folder of images to judge against the split")
    ev.add_argument("--data", default="fashion_mnist", help="reference data set")
    ev.add_argument("--split", default="test", help="reference split (test: the data's test split)")
    ev.add_argument("--root", help="data set folder (default: the data set's usual place)")
    ev.add_argument("-n", type=int, help="samples to draw (default 10000) / images to reconstruct")
    ev.add_argument(
        "--metrics", help="comma-separated metrics; each must run (default: all that can)"
    )
    ev.add_argument("--out", required=True, help="folder for eval.json and eval.csv")
    _device_argument(ev)
    ev.add_argument("--weights-dir", help="folder searched first for Inception/VGG16 weights")
    ev.add_argument(
        "--fd-classifier",
        default="shipped",
        metavar="shipped|local|PATH",
        help="classifier of fd_fmnist and the F-scores: shipped (mvq's, the default), local (the "
        "same recipe on the data at --root: trained once unless these are the shipped "
        "classifier's images) or a <key>.json that mvq saved",
    )
    ev.add_argument("--batch-size", type=int, default=250, help="images per batch (default: 250)")
    ev.add_argument("--seed", type=int, default=0, help="seed of samples, masks and subsets")


def _other_parsers(sub: argparse._SubParsersAction) -> None:
    """``list``, ``configs``, ``demo``, ``sweep``, ``viz`` and ``report``."""
    from mvq.experiments.demo import add_arguments as demo_arguments
    from mvq.experiments.sweep import add_arguments as sweep_arguments
    from mvq.report.viz import add_arguments as viz_arguments

    ls = _command(sub, "list", _list, "list the registered tokenizer (or prior) variants")
    ls.add_argument("--priors", action="store_true", help="list the priors instead")
    cf = _command(sub, "configs", _configs, "write the paper's run configs (configs/*.yaml)")
    cf.add_argument("--out", default="configs", help="output directory (default: configs)")
    demo_arguments(
        _command(sub, "demo", _demo, "the main job: MVQVAE vs VQ-VAE-2 on Fashion-MNIST")
    )
    sweep_arguments(
        _command(sub, "sweep", _sweep, "a resumable grid of runs with one budget, and its table")
    )
    viz_arguments(
        _command(sub, "viz", _viz, "figures of a trained tokenizer (transfer, compose, ...)")
    )
    rp = _command(sub, "report", _report, "one static HTML page of a run or a folder of runs")
    rp.add_argument("dir", help="a run directory, a demo directory or a sweep directory")
    rp.add_argument("--out", help="the HTML file (default: DIR/report.html)")


def _command(
    sub: argparse._SubParsersAction, name: str, func: object, text: str
) -> argparse.ArgumentParser:
    """Subcommand ``name`` running ``func(args)``, with ``text`` as its help and description;
    it also takes ``--debug`` (after the command, as ``mvq CMD --debug``)."""
    p = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mvq``."""
    parser = argparse.ArgumentParser(
        prog="mvq",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"mvq {__version__}",
        help="print the version of mvq and exit",
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="the job to run (one of these)"
    )
    _training_parsers(sub)
    _sample_parser(sub)
    _image_parsers(sub)
    _eval_parser(sub)
    _other_parsers(sub)
    return parser


def debug_requested(args: argparse.Namespace) -> bool:
    """``--debug`` given, or ``MVQ_DEBUG`` set to something other than empty or ``0``."""
    return args.debug or os.environ.get("MVQ_DEBUG", "").strip() not in ("", "0")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mvq`` console script; returns the exit status.

    An ``MVQError`` prints ``mvq: error: <one line>`` to stderr and returns 2 (re-raised with
    ``--debug`` or ``MVQ_DEBUG=1``), and so does an OS refusal on a path the user gave (no
    permission, read-only or full disk, a file where a folder must go) and a full disk
    anywhere; any other exception propagates with its traceback. A run stopped by SIGTERM or
    SIGUSR1 prints one line (rank 0) and returns ``RunStopped.status`` (143 or 75).
    """
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # every command's tensors: no page faults per batch (mvq.core.host_memory)
    try:
        if getattr(args, "device", None) is not None:
            _device(args.device)  # before anything is read or written
        code = args.func(args)
    except (MVQError, OSError) as err:
        if debug_requested(args) or not _user_error(err):
            raise
        print(f"mvq: error: {_one_line(err, getattr(args, 'out', None))}", file=sys.stderr)
        return 2
    except RunStopped as stop:
        if _is_rank0():
            print(f"mvq: {stop}", file=sys.stderr)
        return stop.status
    return code or 0


PATH_ERRNOS = (
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOSPC,
    errno.EEXIST,
    errno.ENOTDIR,
    errno.EISDIR,
)


def _user_error(err: BaseException) -> bool:
    """An ``MVQError``, an ``OSError`` about a named path that the user can fix, or a full
    disk (a write that does not name its file: a PNG, a log line)."""
    if isinstance(err, MVQError) or disk_full_cause(err) is not None:
        return True
    return isinstance(err, OSError) and err.filename is not None and err.errno in PATH_ERRNOS


def _one_line(err: BaseException, out: str | None = None) -> str:
    if isinstance(err, MVQError):
        return " ".join(str(err).split())
    if isinstance(err, OSError) and err.filename is not None:
        return f"cannot use {err.filename}: {err.strerror}; choose another path or fix it"
    where = f" under {out}" if out else ""
    return (
        f"no space left on the device while writing{where} ({err.strerror}): free some space "
        "there or write elsewhere (another --out)"
    )


if __name__ == "__main__":
    sys.exit(main())
