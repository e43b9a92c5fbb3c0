"""QuantTrainModule under DistributedDataParallel (2 gloo processes): ranges stay identical."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from edgezoo.layers import AddBlock
from edgezoo.quantization import QuantTrainModule, activation_ranges

WORLD_SIZE = 2
STEPS = 3
RANGE_BUFFERS = ("clips_act", "running_min", "running_max", "num_batches_tracked")


class SmallNet(nn.Module):
    """Conv-BN-ReLU, conv-BN into a residual add, ReLU, max pool, global pool, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.add = AddBlock()
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.add((x, self.bn2(self.conv2(x)))))
        return self.fc(self.flatten(self.avgpool(self.pool(x))))


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(8, 3, 12, 12, generator=generator),
            torch.randint(0, 3, (8,), generator=generator),
        )
        for _ in range(STEPS)
    ]


def range_snapshot(model: nn.Module) -> list[dict[str, torch.Tensor]]:
    return [
        {name: getattr(pact, name).clone() for name in RANGE_BUFFERS}
        for pact in activation_ranges(model)
    ]


def train_steps(
    q: nn.Module, batch_slice: slice, bn_frozen: bool
) -> list[list[dict[str, torch.Tensor]]]:
    """A few SGD steps on the given slice of each batch; the ranges after every step."""
    wrapper = q.module if isinstance(q, DistributedDataParallel) else q
    wrapper.freeze_bn(bn_frozen)
    optimizer = torch.optim.SGD(q.parameters(), lr=0.1)
    snapshots = []
    for images, labels in batches():
        loss = F.cross_entropy(q(images[batch_slice]), labels[batch_slice])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        snapshots.append(range_snapshot(wrapper))
    return snapshots


def new_wrapper() -> QuantTrainModule:
    torch.manual_seed(0)
    return QuantTrainModule(SmallNet(), torch.randn(1, 3, 12, 12))


def ddp_worker(rank: int, init_file: str, result_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        shard = slice(rank * 4, rank * 4 + 4)
        results = {}
        for bn_frozen in (True, False):
            # No buffer sync in forward: equal ranges must come from the range sync itself.
            ddp = DistributedDataParallel(new_wrapper(), forward_sync_buffers=False)
            results[bn_frozen] = train_steps(ddp, shard, bn_frozen)
        torch.save(results, os.path.join(result_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def assert_same_ranges(a, b, exact: bool) -> None:
    assert len(a) == len(b) == STEPS
    for step_a, step_b in zip(a, b, strict=True):
        assert len(step_a) == len(step_b) == 5
        for pact_a, pact_b in zip(step_a, step_b, strict=True):
            for name in RANGE_BUFFERS:
                if exact or name in ("clips_act", "num_batches_tracked"):
                    assert torch.equal(pact_a[name], pact_b[name]), name
                else:
                    torch.testing.assert_close(pact_a[name], pact_b[name], rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ddp_ranks_hold_identical_ranges_equal_to_one_process(tmp_path):
    mp.spawn(
        ddp_worker,
        args=(str(tmp_path / "init"), str(tmp_path)),
        nprocs=WORLD_SIZE,
        join=True,
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]
    for bn_frozen in (True, False):
        assert_same_ranges(ranks[0][bn_frozen], ranks[1][bn_frozen], exact=True)
    # With BN frozen each sample's activations do not depend on the rest of the batch, so the
    # two ranks together must learn what one process learns on the concatenated batch.
    single = train_steps(new_wrapper(), slice(0, 8), bn_frozen=True)
    assert_same_ranges(ranks[0][True], single, exact=False)
    # The ranges really moved during the run (not just the initial values on both sides).
    assert all(int(p["num_batches_tracked"]) == STEPS for p in single[-1])
    assert any(float(p["running_max"]) != 0.0 for p in single[-1])
