"""Shared fixtures: a tiny trained MVQVAE run and a saved VQVAE2 (for the viz and report tests)."""

from pathlib import Path

import pytest
import torch
import yaml

FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def tiny_mvq_run(tmp_path_factory) -> Path:
    """``mvq train`` of a narrow MVQVAE (J = 8) for 6 steps on Fashion-MNIST: a real run dir."""
    if not FMNIST.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
    from mvq.cli import main

    tmp = tmp_path_factory.mktemp("viz_run")
    cfg = tmp / "run.yaml"
    cfg.write_text(yaml.safe_dump({"model": "mvqvae_fmnist_s4_k16",
                                   "data": {"name": "fashion_mnist"}}))  # fmt: skip
    sets = ["model_config.channels=16", "model_config.res_channels=8",
            "model_config.num_hypotheses=8", "train.log_every=2", "train.val_every=3",
            "train.val_batches=1", "train.sample_every=6"]  # fmt: skip
    argv = ["train", "--config", str(cfg), "--run-dir", str(tmp / "mvq"), "--max-steps", "6",
            "--batch-size", "8", *(a for s in sets for a in ("--set", s))]  # fmt: skip
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
