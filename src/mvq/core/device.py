"""Device names: "auto", "cpu", "cuda", "cuda:N" or "mps", checked against this machine."""

from __future__ import annotations

import re

import torch

from mvq.core.errors import DeviceError

DEVICE_NAME = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def device_problem(name: str, local_rank: int = 0) -> str | None:
    """Why device ``name`` cannot be used on this machine, or None when it can.

    ``name`` is "auto", "cpu", "cuda", "cuda:N" or "mps"; "cuda" is the local rank's GPU.
    """
    if not isinstance(name, str) or not DEVICE_NAME.fullmatch(name):
        return "not a device name; use auto, cpu, cuda, cuda:N or mps"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "mps" and not torch.backends.mps.is_available():
        return "MPS is not available on this machine; use --device cpu"
    if not name.startswith("cuda"):
        return None
    if not torch.cuda.is_available():
        return "CUDA is not available on this machine; use --device cpu"
    index, count = int(name[5:] or local_rank), torch.cuda.device_count()
    if index >= count:
        return f"this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}"
    return None


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """Turn ``TrainConfig.device`` into a device; "auto"/"cuda" use the local rank's GPU.

    Raises:
        DeviceError: ``name`` is not a device name, or this machine does not have it.
    """
    problem = device_problem(name, local_rank)
    if problem is not None:
        raise DeviceError(f"device '{name}': {problem}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device
