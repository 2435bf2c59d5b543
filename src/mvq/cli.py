"""The ``mvq`` command line: ``mvq train``, ``mvq list``, ``mvq configs``, ``mvq demo``,
``mvq encode``, ``mvq train-prior``, ``mvq sample``, ``mvq eval``, ``mvq sweep``,
``mvq reconstruct``, ``mvq tokenize``, ``mvq decode``, ``mvq viz``, ``mvq report``.

Every expected failure (bad config, missing data, broken checkpoint, unwritable run directory)
prints one line ``mvq: error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mvq.pretrained import CheckpointError
from mvq.runconfig import ConfigError, RunConfig, apply_override, load_run_config
from mvq.training import RunDirError, TrainingDiverged

if TYPE_CHECKING:
    import torch

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    CheckpointError,
    RunDirError,
    TrainingDiverged,
    ValueError,
    KeyError,
    FileNotFoundError,
    PermissionError,
)


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
    from mvq.train_tokenizer import train_tokenizer

    cfg = _run_config(args)
    model, result = train_tokenizer(cfg, args.run_dir, resume=args.resume)
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
    """``--device`` of encode and sample, chosen as the trainer chooses (LOCAL_RANK's GPU under
    torchrun); a bad name or CUDA without a GPU is a ``ValueError``."""
    from mvq.training.distributed import resolve_device

    try:
        return resolve_device(name, int(os.environ.get("LOCAL_RANK", 0)))
    except RuntimeError as err:
        raise ValueError(f"--device {name}: {err}") from None


def _is_rank0() -> bool:
    """True unless this is a non-zero rank of a torchrun launch (which must not write)."""
    return int(os.environ.get("RANK", "0")) == 0


def _encode(args: argparse.Namespace) -> None:
    from mvq.data import build_dataset, dataset_info
    from mvq.token_files import encode_dataset, tokenizer_identity
    from mvq.tokenizers import load_tokenizer

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
    print(json.dumps({"out": str(out), "splits": {k: len(v) for k, v in splits.items()},
                      "tokens_per_image": model.token_layout.num_tokens}))  # fmt: skip


def _train_prior(args: argparse.Namespace) -> None:
    from mvq.train_prior import train_prior

    cfg = _run_config(args)
    _, result = train_prior(cfg, args.tokens, args.run_dir, resume=args.resume)
    summary = {"steps": result.steps, "tokens_sets_per_s": round(result.items_per_second, 1)}
    summary |= {
        k: round(v, 4) for k, v in result.train_logs.items() if k.startswith(("nll", "bits"))
    }
    if result.last_val_loss is not None:
        summary["val_nll_nats_per_token"] = round(result.last_val_loss, 4)
    _print_rank0(summary)


def _sample(args: argparse.Namespace) -> None:
    from mvq.sample import SampleOptions, run_sample

    options = SampleOptions(args.temperature, args.top_k, args.top_p, args.steps, args.schedule,
                            args.batch_size)  # fmt: skip
    device = _device(args.device)
    if not _is_rank0():
        return  # every rank would write the same images
    report = run_sample(
        args.tokenizer, args.prior, args.n, args.out, options, args.label, args.seed, device
    )
    print(json.dumps(report))


def _reconstruct(args: argparse.Namespace) -> None:
    from mvq.apply_tokenizer import reconstruct

    summary = reconstruct(args.tokenizer, args.images, args.out, args.device, args.batch_size,
                          args.seed)  # fmt: skip
    print(json.dumps(summary))


def _tokenize(args: argparse.Namespace) -> None:
    from mvq.apply_tokenizer import tokenize

    summary = tokenize(args.tokenizer, args.images, args.out, args.device, args.batch_size,
                       args.seed)  # fmt: skip
    print(json.dumps(summary))


def _decode(args: argparse.Namespace) -> None:
    from mvq.apply_tokenizer import decode

    print(json.dumps(decode(args.tokenizer, args.tokens, args.out, args.device, args.batch_size)))


def _eval(args: argparse.Namespace) -> None:
    from pathlib import Path

    from mvq.evaluate import EvalRequest, format_table, run_eval

    paths = {k: Path(v) if v else None for k, v in (("tokenizer", args.tokenizer),
             ("prior", args.prior), ("images", args.images))}  # fmt: skip
    request = EvalRequest(Path(args.out), **paths, data=args.data, split=args.split,
                          root=args.root, n=args.n, metrics=args.metrics, device=args.device,
                          weights_dir=args.weights_dir, batch_size=args.batch_size,
                          seed=args.seed)  # fmt: skip
    print(format_table(run_eval(request)))
    print(f"wrote {Path(args.out) / 'eval.json'} and a row of {Path(args.out) / 'eval.csv'}")


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="metrics of a tokenizer, its samples, or a folder of images")
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
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ev.add_argument("--weights-dir", help="folder searched first for Inception/VGG16 weights")
    ev.add_argument("--batch-size", type=int, default=250)
    ev.add_argument("--seed", type=int, default=0)
    ev.set_defaults(func=_eval)


def _configs(args: argparse.Namespace) -> None:
    from mvq.runconfig import write_paper_configs

    paths = write_paper_configs(args.out)
    print(f"wrote {len(paths)} run configs to {args.out}")


def _demo(args: argparse.Namespace) -> None:
    from mvq.demo import run

    run(args)


def _sweep(args: argparse.Namespace) -> int:
    from mvq.sweep import sweep_command

    return sweep_command(args)



def _viz(args: argparse.Namespace) -> None:
    from mvq.viz import run

    print(json.dumps(run(args)))


def _report(args: argparse.Namespace) -> None:
    from mvq.report import write_report

    print(write_report(args.dir, args.out))


DEVICE_HELP = "auto (cuda if available), cpu, cuda or cuda:N; torchrun: LOCAL_RANK's GPU"


def _training_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", required=True, help="where checkpoints, logs and the model go")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--seed", type=int, help="seed of the run and its data order")
    p.add_argument("--batch-size", type=int, help="global batch size")
    p.add_argument("--lr", type=float, help="Adam learning rate")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from run-dir's last checkpoint (none yet: start the run)",
    )
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override a field, e.g. --set model_config.num_hypotheses=64")  # fmt: skip


def _sampling_parsers(sub: argparse._SubParsersAction) -> None:
    en = sub.add_parser("encode", help="encode a data set into tokens once, for priors")
    en.add_argument("--tokenizer", required=True, help="a saved tokenizer (run-dir/model)")
    en.add_argument("--data", required=True, help="data set name, e.g. fashion_mnist")
    en.add_argument("--root", help="data set folder (default: the data set's usual place)")
    en.add_argument("--download", action="store_true", help="download the data if missing")
    en.add_argument("--splits", default="train,val", help="comma-separated splits")
    en.add_argument("--out", required=True, help="token directory to write")
    en.add_argument("--seed", type=int, default=0, help="seed of MVQ's mask search")
    en.add_argument("--device", default="auto", help=DEVICE_HELP)
    en.set_defaults(func=_encode)
    tp = sub.add_parser("train-prior", help="train a token prior on a token directory")
    tp.add_argument("--tokens", required=True, help="token directory from `mvq encode`")
    tp.add_argument("--config", required=True, help="e.g. configs/priors/transformer_4p1.yaml")
    _training_arguments(tp)
    tp.set_defaults(func=_train_prior)
    sa = sub.add_parser("sample", help="sample images: prior -> tokens -> tokenizer")
    sa.add_argument("--tokenizer", required=True, help="the saved tokenizer")
    sa.add_argument("--prior", required=True, help="the saved prior (run-dir/model)")
    sa.add_argument("-n", type=int, default=64, help="number of images")
    sa.add_argument("--out", required=True, help="folder for the PNGs and grid.png")
    sa.add_argument("--temperature", type=float, default=1.0)
    sa.add_argument("--top-k", type=int)
    sa.add_argument("--top-p", type=float)
    sa.add_argument("--steps", type=int, help="MaskGIT decoding steps (default min(8, tokens))")
    sa.add_argument("--schedule", default="cosine", help="MaskGIT mask schedule")
    sa.add_argument("--label", type=int, help="class to sample (class-conditional priors)")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--batch-size", type=int, default=64)
    sa.add_argument("--device", default="auto", help=DEVICE_HELP)
    sa.set_defaults(func=_sample)


def _image_parsers(sub: argparse._SubParsersAction) -> None:
    """``reconstruct``, ``tokenize`` and ``decode``: a trained tokenizer on image files."""
    tok = "a trained tokenizer: its model/ folder, a run directory or a Hub id org/name"
    re_ = sub.add_parser("reconstruct", help="a folder of images -> reconstructions (PNG)")
    tz = sub.add_parser("tokenize", help="a folder of images -> a token file")
    de = sub.add_parser("decode", help="a token file -> images (PNG)")
    for p in (re_, tz, de):
        p.add_argument("--tokenizer", required=True, help=tok)
    for p in (re_, tz):
        p.add_argument("--images", required=True, help="a folder of images (recursive) or one")
    re_.add_argument("--out", required=True, help="new folder for the PNGs (same names as IN)")
    tz.add_argument("--out", required=True, help="token file to write (.safetensors)")
    de.add_argument("--tokens", required=True, help="a token file from `mvq tokenize`")
    de.add_argument("--out", required=True, help="new folder for the PNGs")
    for p in (re_, tz, de):
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
        p.add_argument("--batch-size", type=int, default=32, help="images per batch")
    for p in (re_, tz):
        p.add_argument("--seed", type=int, default=0, help="seed of MVQ's mask search")
    re_.set_defaults(func=_reconstruct)
    tz.set_defaults(func=_tokenize)
    de.set_defaults(func=_decode)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mvq``."""
    parser = argparse.ArgumentParser(prog="mvq", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train a tokenizer from a YAML run config")
    tr.add_argument("--config", required=True, help="e.g. configs/mvqvae_fmnist_s4_k16.yaml")
    _training_arguments(tr)
    tr.set_defaults(func=_train)
    ls = sub.add_parser("list", help="list the registered tokenizer (or prior) variants")
    ls.add_argument("--priors", action="store_true", help="list the priors instead")
    ls.set_defaults(func=_list)
    _sampling_parsers(sub)
    _image_parsers(sub)
    _eval_parser(sub)
    cf = sub.add_parser("configs", help="write the paper's run configs (configs/*.yaml)")
    cf.add_argument("--out", default="configs", help="output directory")
    cf.set_defaults(func=_configs)
    from mvq.demo import add_arguments

    dm = sub.add_parser("demo", help="the main job: MVQVAE vs VQ-VAE-2 on Fashion-MNIST")
    add_arguments(dm)
    dm.set_defaults(func=_demo)
    from mvq.sweep import add_arguments as add_sweep_arguments

    sw = sub.add_parser("sweep", help="a resumable grid of runs with one budget, and its table")
    add_sweep_arguments(sw)
    sw.set_defaults(func=_sweep)

    from mvq.viz import add_arguments as viz_arguments

    vz = sub.add_parser("viz", help="figures of a trained tokenizer (transfer, compose, ...)")
    viz_arguments(vz)
    vz.set_defaults(func=_viz)
    rp = sub.add_parser("report", help="one static HTML page of a run or a folder of runs")
    rp.add_argument("dir", help="a run directory, a demo directory or a sweep directory")
    rp.add_argument("--out", help="the HTML file (default: DIR/report.html)")
    rp.set_defaults(func=_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mvq`` console script."""
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except EXPECTED_ERRORS as err:
        message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        print(f"mvq: error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
