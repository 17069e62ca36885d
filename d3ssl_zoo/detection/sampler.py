"""Training batches for detection: grouped by aspect ratio, sharded across processes, resumable mid-epoch.

The idea of torchvision's ``GroupedBatchSampler`` (references/detection): a batch holds images of one
aspect-ratio group only (wide, ``width / height >= 1``, or tall), so the detector's transform pads the
batch to a tensor that is mostly image, not padding. Unlike torchvision's, sharding comes after
grouping and every position is a function of ``(seed, epoch)``, so that every process can find its
place in an epoch from the step number alone.

An epoch: the images are shuffled by a generator seeded with ``seed + epoch``; walking that order,
each image joins its group's open batch, and a batch is emitted when it fills (as torchvision's). A
group's last, incomplete batch is filled with the first images of that group's shuffled order. The
list of batches is then lengthened to a multiple of the number of processes by repeating its first
batches, and process ``rank`` takes batches ``rank, rank + P, rank + 2P, ...``. So every image is
trained on once per epoch over all processes; the only repeats are the at most ``batch_size - 1``
per group and ``P - 1`` batches that give every process the same number of full batches.
"""
from __future__ import annotations

from typing import Iterator, List, Sequence

import torch
from torch.utils.data import Sampler

__all__ = ["aspect_groups", "GroupedShardedBatchSampler"]


def aspect_groups(sizes: Sequence[tuple]) -> List[int]:
    """Group of each ``(width, height)``: 0 for wide or square images (``w / h >= 1``), 1 for tall ones."""
    return [0 if w >= h else 1 for w, h in sizes]


class GroupedShardedBatchSampler(Sampler[List[int]]):
    """Batches of ``batch_size`` dataset indices (one process's batch) for process ``rank`` of
    ``num_replicas``; see the module docstring for how an epoch is formed.

    ``set_epoch(epoch, start=k)`` makes the next iteration yield that epoch's batches from the
    ``k``-th on: a run resumed after ``k`` steps of an epoch continues with the batch it would have
    taken next, without reading the skipped images.
    """

    def __init__(self, groups: Sequence[int], batch_size: int, *, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not one of the {num_replicas} processes")
        if not groups:
            raise ValueError("no images to sample batches from")
        self.groups = list(groups)
        self.batch_size, self.num_replicas, self.rank, self.seed = batch_size, num_replicas, rank, seed
        self.epoch, self.start = 0, 0
        sizes = [self.groups.count(g) for g in set(self.groups)]
        self._num_batches = sum(-(-n // batch_size) for n in sizes)   # over all processes, before evening

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= len(self):
            raise ValueError(f"start {start} is outside an epoch of {len(self)} batches")
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        """Batches per epoch of each process."""
        return -(-self._num_batches // self.num_replicas)

    def epoch_batches(self) -> List[List[int]]:
        """Every process's batches of the current epoch, in order (before the split by rank)."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.groups), generator=g).tolist()
        batches: List[List[int]] = []
        open_batches: dict = {}
        first: dict = {}
        for i in order:
            group = self.groups[i]
            first.setdefault(group, []).append(i)
            batch = open_batches.setdefault(group, [])
            batch.append(i)
            if len(batch) == self.batch_size:
                batches.append(batch)
                open_batches[group] = []
        for group, batch in open_batches.items():
            if batch:
                fill = first[group]
                batches.append(batch + [fill[k % len(fill)] for k in range(self.batch_size - len(batch))])
        pad = len(self) * self.num_replicas - len(batches)
        return batches + [batches[k % len(batches)] for k in range(pad)]

    def __iter__(self) -> Iterator[List[int]]:
        mine = self.epoch_batches()[self.rank::self.num_replicas]
        start, self.start = self.start, 0    # a later iteration of the same epoch starts at its beginning
        yield from mine[start:]
