"""Batches as the DataLoader yields them: moved to the device unchanged, counted, split."""

from __future__ import annotations

from typing import Any

import torch


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor inside nested tuples, lists and dicts to ``device``; keep the structure."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(to_device(value, device) for value in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


def count_items(batch: Any) -> int:
    """Items in a batch: the leading size of its first tensor (0 if it holds none)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else 1
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for value in batch:
            n = count_items(value)
            if n:
                return n
    return 0


def split_batch(batch: Any, parts: int) -> list[Any]:
    """Split every tensor of a batch along its first dimension into ``parts`` equal chunks.

    Non-tensor leaves are shared by every part. ``parts=1`` returns ``[batch]`` unchanged.
    """
    if parts == 1:
        return [batch]
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 0 or batch.shape[0] % parts:
            raise ValueError(
                f"a batch of {batch.shape[0] if batch.dim() else 1} items does not "
                f"split into {parts} micro-batches"
            )
        return list(batch.chunk(parts))
    if isinstance(batch, dict):
        split = {key: split_batch(value, parts) for key, value in batch.items()}
        return [{key: split[key][i] for key in batch} for i in range(parts)]
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        columns = [split_batch(value, parts) for value in batch]
        return [type(batch)(*(c[i] for c in columns)) for i in range(parts)]
    if isinstance(batch, (list, tuple)):
        columns = [split_batch(value, parts) for value in batch]
        return [type(batch)(c[i] for c in columns) for i in range(parts)]
    return [batch] * parts
