"""A batch sampler whose order depends only on (seed, epoch), so a run can resume mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch``'s permutation."""
    return seed * 1_000_003 + epoch


class EpochBatchSampler(Sampler[list[int]]):
    """Yields this rank's batches of indices for one epoch.

    Each epoch permutes ``range(size)`` with a generator seeded by ``epoch_seed(seed, epoch)``
    (no global RNG is touched). With ``drop_last`` the tail that cannot fill a batch on every
    rank is dropped; position ``i`` of the permutation goes to rank ``i % world_size`` as in
    ``DistributedSampler``, so batch ``k`` of all ranks together is ``perm[k*B*W:(k+1)*B*W]``
    whatever the world size. ``set_epoch(e, start_batch=k)`` skips the first ``k`` batches by
    index arithmetic, without loading them.

    Args:
        size: number of items in the dataset.
        batch_size: items per batch on this rank.
        seed: base seed of the permutations.
        rank: this process's rank.
        world_size: number of processes.
        shuffle: permute each epoch (False: dataset order, for validation).
        drop_last: drop items that do not fill a whole batch on every rank (training); without
            it ranks get ``perm[rank::world_size]`` and a possibly short last batch.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.size, self.batch_size = size, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        """Batches this rank gets in a whole epoch."""
        if self.drop_last:
            return self.size // (self.batch_size * self.world_size)
        mine = len(range(self.rank, self.size, self.world_size))
        return -(-mine // self.batch_size)

    def order_key(self) -> dict[str, int]:
        """What the order of every epoch depends on (checked when a run resumes)."""
        return {
            "size": self.size,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "world_size": self.world_size,
        }

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch to iterate and the number of its batches to skip."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} outside [0, {self.batches_per_epoch}]")
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(self.size, generator=gen)
        else:
            order = torch.arange(self.size)
        if self.drop_last:
            order = order[: self.batches_per_epoch * self.batch_size * self.world_size]
        mine = order[self.rank :: self.world_size]
        for b in range(self.start_batch, self.batches_per_epoch):
            yield mine[b * self.batch_size : (b + 1) * self.batch_size].tolist()
