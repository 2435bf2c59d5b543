"""Train a token prior on a token directory (``mvq encode``) with the shared trainer.

The prior's token layout (vocabularies, grids) comes from the tokens; the run config names
the prior variant and overrides its other fields. The saved prior keeps the identity of the
tokenizer its tokens came from (``tokenizer.json``), so ``mvq sample`` can refuse a mismatch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mvq.core.token_files import TokenDataset, read_token_meta
from mvq.core.tokens import layout_overrides
from mvq.priors import PRIORS, create_prior
from mvq.training import TrainResult, train
from mvq.training.runconfig import ConfigError, RunConfig, check_model_config
from mvq.training.tokenizer_job import config_values, runnable_train_config

TOKENIZER_FILE = "tokenizer.json"


def prior_overrides(cfg: RunConfig, meta: dict[str, Any]) -> dict[str, Any]:
    """Config overrides of the prior: the tokens' layout, then ``cfg.model_config``."""
    overrides = layout_overrides(meta["layout"]) | cfg.model_config
    classes = overrides.get("num_classes", 0)
    if classes and classes != meta.get("num_classes", 0):
        raise ConfigError(
            f"model_config.num_classes={classes} but the tokens carry "
            f"{meta.get('num_classes', 0)} classes: set it to that, or 0 for an unconditional prior"
        )
    return overrides


def build_prior(cfg: RunConfig, meta: dict[str, Any]) -> nn.Module:
    """The registered prior ``cfg.model`` for the tokens described by ``meta``."""
    check_model_config(cfg, PRIORS)
    with config_values(f"model_config of {cfg.model}"):
        return create_prior(cfg.model, **prior_overrides(cfg, meta))


def train_prior(
    cfg: RunConfig, tokens: str | Path, run_dir: str | Path, resume: bool = False
) -> tuple[nn.Module, TrainResult]:
    """Check everything, then train; ``run_dir/model`` gets the prior and its tokenizer's id."""
    meta = read_token_meta(tokens)
    train_cfg = runnable_train_config(cfg)
    torch.manual_seed(train_cfg.seed)
    prior = build_prior(cfg, meta)
    train_set = TokenDataset(tokens, "train")
    val_set = TokenDataset(tokens, "val") if "val" in meta["splits"] else None
    identity = json.dumps(meta["tokenizer"], indent=2) + "\n"
    result = train(
        prior,
        train_set,
        val_set,
        train_cfg,
        run_dir,
        resume=resume,
        save_model=lambda m, path: m.save_pretrained(path, {TOKENIZER_FILE: identity}),
    )
    return prior, result
