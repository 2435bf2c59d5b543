"""The ``mvq`` command line: ``mvq train``, ``mvq list``, ``mvq configs``, ``mvq demo``.

Every expected failure (bad config, missing data, broken checkpoint, unwritable run directory)
prints one line ``mvq: error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from mvq.pretrained import CheckpointError
from mvq.runconfig import ConfigError, apply_override, load_run_config
from mvq.training import RunDirError, TrainingDiverged

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


def _train(args: argparse.Namespace) -> None:
    from mvq.train_tokenizer import train_tokenizer

    cfg = load_run_config(args.config)
    for flag, key in (("max_steps", "max_steps"), ("seed", "seed"), ("batch_size", "batch_size"),
                      ("lr", "lr"), ("device", "device")):  # fmt: skip
        if getattr(args, flag) is not None:
            cfg.train[key] = getattr(args, flag)
    for assignment in args.set or ():
        apply_override(cfg, assignment)
    model, result = train_tokenizer(cfg, args.run_dir, resume=args.resume)
    summary = {"steps": result.steps, "images_per_s": round(result.items_per_second, 1)}
    if result.last_val_loss is not None:
        summary["val_loss"] = round(result.last_val_loss, 6)
    print(json.dumps(summary))


def _list(args: argparse.Namespace) -> None:
    from mvq.tokenizers import list_tokenizers

    print("\n".join(list_tokenizers()))


def _configs(args: argparse.Namespace) -> None:
    from mvq.runconfig import write_paper_configs

    paths = write_paper_configs(args.out)
    print(f"wrote {len(paths)} run configs to {args.out}")


def _demo(args: argparse.Namespace) -> None:
    from mvq.demo import run

    run(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mvq``."""
    parser = argparse.ArgumentParser(prog="mvq", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train a tokenizer from a YAML run config")
    tr.add_argument(
        "--config", required=True, help="run config, e.g. configs/mvqvae_fmnist_s4_k16.yaml"
    )
    tr.add_argument("--run-dir", required=True, help="where checkpoints, logs and the model go")
    tr.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    tr.add_argument("--seed", type=int, help="seed of the run and its data order")
    tr.add_argument("--batch-size", type=int, help="global batch size")
    tr.add_argument("--lr", type=float, help="Adam learning rate")
    tr.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    tr.add_argument("--resume", action="store_true", help="continue from run-dir's checkpoint")
    tr.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                    help="override a field, e.g. --set model_config.num_hypotheses=64")  # fmt: skip
    tr.set_defaults(func=_train)
    ls = sub.add_parser("list", help="list the registered tokenizer variants")
    ls.set_defaults(func=_list)
    cf = sub.add_parser("configs", help="write the paper's run configs (configs/*.yaml)")
    cf.add_argument("--out", default="configs", help="output directory")
    cf.set_defaults(func=_configs)
    from mvq.demo import add_arguments

    dm = sub.add_parser("demo", help="the main job: MVQVAE vs VQ-VAE-2 on Fashion-MNIST")
    add_arguments(dm)
    dm.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mvq`` console script."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except EXPECTED_ERRORS as err:
        message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        print(f"mvq: error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
