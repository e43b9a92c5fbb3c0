"""Reduce activation-range statistics across DDP ranks so every rank learns the same clips.

PACT2 computes per-batch statistics (extrema, then a histogram over the common extrema). Under
DistributedDataParallel each rank sees a different shard of the batch; reducing the extrema
with MAX and the integer histogram with SUM gives every rank exactly the statistics a single
process would compute on the concatenated batch, so ranges never drift apart between ranks.
Outside an initialised multi-process group every function here is a no-op.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor

__all__ = ["is_distributed", "sync_extrema_", "sync_histogram_"]


def is_distributed(group: dist.ProcessGroup | None = None) -> bool:
    """True when torch.distributed is initialised with more than one rank in group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def sync_extrema_(stats: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """All-reduce with MAX, in place, a tensor of statistics packed so that MAX combines them.

    PACT2 packs [-min, max, non-finite flag]: the global min, the global max and "any rank saw
    NaN/Inf" all come out of one collective.
    """
    if is_distributed(group):
        dist.all_reduce(stats, op=dist.ReduceOp.MAX, group=group)
    return stats


def sync_histogram_(counts: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """All-reduce with SUM, in place, integer histogram counts taken over a common range."""
    if is_distributed(group):
        dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=group)
    return counts
