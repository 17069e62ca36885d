"""The memory bank of Eq. 4/5: a FIFO queue of teacher region embeddings from earlier batches.

The paper says only "features of augmented regions in previous batches" (Sec. 4.2). As in MoCo,
the keys of every process are gathered before they are enqueued, so each process holds the same
queue and the negatives come from the whole global batch history (ours; docs/design.md).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RegionQueue", "gather_from_all_processes"]


@torch.no_grad()
def gather_from_all_processes(x: Tensor) -> Tensor:
    """Concatenate ``x`` (same shape on every process) from all processes in rank order."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


class RegionQueue(nn.Module):
    """FIFO memory bank of ``size`` L2-normalised ``dim``-d keys.

    The buffers ``keys``, ``ptr`` (next write row) and ``num_enqueued`` (total keys ever
    written) are part of the state dict, so a checkpoint restores the queue exactly. The
    initial content is random unit vectors (MoCo's initialisation), drawn from an explicit
    generator so two runs with the same ``seed`` start from the same queue.
    """

    def __init__(self, size: int, dim: int, seed: int = 0) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"RegionQueue needs size >= 1 and dim >= 1, got size={size}, dim={dim}")
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("keys", F.normalize(torch.randn(size, dim, generator=g), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("num_enqueued", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    def fill(self) -> float:
        """Fraction of the queue holding real keys (the rest is the random initialisation)."""
        return min(int(self.num_enqueued), self.size) / self.size

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Gather ``keys`` (n, dim) from all processes, then write them at ``ptr`` (wrapping around)."""
        keys = F.normalize(gather_from_all_processes(keys.detach()).to(self.keys.dtype), dim=1)
        if keys.shape[0] > self.size:  # only the newest keys fit
            keys = keys[-self.size:]
        n = keys.shape[0]
        rows = (self.ptr + torch.arange(n, device=self.keys.device)) % self.size
        self.keys[rows] = keys
        self.ptr.copy_((self.ptr + n) % self.size)
        self.num_enqueued.add_(n)
