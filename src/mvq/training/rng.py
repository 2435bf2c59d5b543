"""Seeding, saving and restoring every RNG a training step may draw from."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and every CUDA device) global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """The state of the Python, NumPy, torch CPU and (when in use) CUDA RNGs."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": cuda,
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Put back a state from ``capture_rng``."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def rng_to_tensors(state: dict[str, Any]) -> dict[str, Any]:
    """A ``capture_rng`` state as tensors and plain numbers only, for ``weights_only`` loading.

    Python's Mersenne Twister becomes its 625 words (int64) plus version and cached Gaussian;
    NumPy's its 624 key words plus position and cached Gaussian.
    """
    version, words, gauss = state["python"]
    kind, key, pos, has_gauss, cached = state["numpy"]
    return {
        "python": {
            "version": version,
            "state": torch.tensor(words, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "kind": str(kind),
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": state["torch"],
        "cuda": None if state["cuda"] is None else list(state["cuda"]),
    }


def rng_from_tensors(state: dict[str, Any]) -> dict[str, Any]:
    """The ``capture_rng`` state that ``rng_to_tensors`` stored."""
    py, npy = state["python"], state["numpy"]
    return {
        "python": (py["version"], tuple(py["state"].tolist()), py["gauss"]),
        "numpy": (
            npy["kind"],
            npy["key"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached"],
        ),
        "torch": state["torch"],
        "cuda": state["cuda"],
    }


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (validation, image callbacks) without moving the training RNG streams."""
    state = capture_rng()
    try:
        yield
    finally:
        restore_rng(state)
