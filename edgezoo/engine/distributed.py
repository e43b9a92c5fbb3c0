"""torch.distributed set-up from torchrun's environment, and the collectives the engine needs."""

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from edgezoo.errors import DeviceUnavailableError, DistributedError

logger = logging.getLogger(__name__)

TIMEOUT_ENV = "EDGEZOO_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0
"""How long a collective waits for the other ranks before the job fails (gloo's own: 30 min)."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank, the world size and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and shows progress."""
        return self.rank == 0


def setup_distributed(device: str | None = None, timeout_s: float | None = None) -> DistContext:
    """Join the process group torchrun describes (WORLD_SIZE > 1), else run as one process.

    gloo on CPU, nccl on CUDA (one GPU per local rank). device: "cpu", "cuda" or None (CUDA when
    present). timeout_s: how long a collective waits for a stuck or lost rank before the job
    fails (default $EDGEZOO_DIST_TIMEOUT, else 300 s). Calling it again in a process that already
    joined a group reuses that group.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device {device!r} was asked for, but torch sees no CUDA GPU on this machine "
            f"(torch {torch.__version__}); use --device cpu, or install a CUDA build of torch"
        )
    if use_cuda:
        torch_device = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(torch_device)
    else:
        torch_device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        timeout = timeout_s if timeout_s is not None else dist_timeout_s()
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout))
        logger.info(
            "rank %d of %d joined the %s process group", dist.get_rank(), world_size, backend
        )
    rank = dist.get_rank() if dist.is_initialized() else 0
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    return DistContext(rank, world_size, local_rank, torch_device)


def dist_timeout_s() -> float:
    """The collective timeout: $EDGEZOO_DIST_TIMEOUT seconds, else DEFAULT_TIMEOUT_S."""
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise DistributedError(
            f"{TIMEOUT_ENV}={text!r} is not a number of seconds > 0; unset it for the default "
            f"{DEFAULT_TIMEOUT_S:g} s"
        )
    return value


def as_distributed_error(err: BaseException, rank: int) -> "DistributedError | None":
    """A clear error for a collective that failed because another rank is stuck or gone."""
    text = str(err)
    if not isinstance(err, RuntimeError) or not any(word in text for word in _LOST_RANK_WORDS):
        return None
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return DistributedError(
        f"rank {rank}: another process of the job stopped answering ({first[:160]}); the job "
        f"stops instead of waiting (timeout {dist_timeout_s():g} s, ${TIMEOUT_ENV}). The last "
        "finished epoch is in last.pth: restart the job with --resume"
    )


_LOST_RANK_WORDS = ("Timed out", "timed out", "Connection closed", "Connection reset", "peer")


def average_buffers(module: nn.Module) -> None:
    """Make every rank hold the mean over ranks of each floating-point buffer.

    Each rank updates BatchNorm running statistics on its own shard, so after an epoch they
    differ by rank; their mean is the statistic of the whole data seen, and afterwards every
    replica is identical (activation ranges are already synchronised, so they stay unchanged).
    """
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    world = dist.get_world_size()
    with torch.no_grad():
        for tensor in module.buffers():
            if tensor.is_floating_point():
                dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
                tensor.div_(world)


def cleanup_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks in place (a no-op in a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_floating_state(module: nn.Module) -> None:
    """Make every rank hold the mean of all ranks' floating-point parameters and buffers.

    PTQ calibration runs without DistributedDataParallel (there are no gradients), so each
    rank's bias nudges and statistics come from its own shard; averaging after each step keeps
    the replicas identical and equals a nudge by the mean over all shards.
    """
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    world = dist.get_world_size()
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
                tensor.div_(world)


def replica_divergence(module: nn.Module) -> float:
    """The largest absolute difference between any rank's state and rank 0's (0.0: in sync)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return 0.0
    worst = torch.zeros((), dtype=torch.float64, device=_device_of(module))
    with torch.no_grad():
        for tensor in module.state_dict().values():
            reference = tensor.detach().clone()
            dist.broadcast(reference, src=0)
            if tensor.numel():
                diff = (tensor.double() - reference.double()).abs().max()
                worst = torch.maximum(worst, diff)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _device_of(module: nn.Module) -> torch.device:
    for tensor in module.state_dict().values():
        return tensor.device
    return torch.device("cpu")
