"""Fixtures shared by several test files."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on tiny batches on two shared cores OpenMP's hand-offs and barriers
    cost more than they save, and can slow a step down tenfold."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def seeded_images(seed: int = 1, shape: tuple[int, ...] = (4, 3, 16, 16)) -> torch.Tensor:
    """A reproducible batch of random images (its own generator: the global seed is untouched)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def is_power_of_two(t: torch.Tensor) -> bool:
    """Whether every entry of t is a positive power of two (mantissa exactly 0.5)."""
    mantissa, _ = torch.frexp(t)
    return bool(torch.all(mantissa == 0.5))


def briefly_trained(model, size: int, config=None, steps: int = 3):
    """model wrapped for QAT (QuantTrainModule) after a few SGD steps on seeded random images,
    so its ranges saw data; returned in eval mode."""
    from edgezoo.quantization import QuantTrainModule

    torch.manual_seed(0)
    q = QuantTrainModule(model, torch.rand(1, 3, size, size), config=config).train()
    optimizer = torch.optim.SGD(q.parameters(), lr=1e-3)
    for step in range(steps):
        loss = q(seeded_images(step, (4, 3, size, size))).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return q.eval()


CONVERTED_FAMILIES = (
    "densenet121",
    "efficientnet_v2_s",
    "fcn_resnet50",
    "regnet_x_400mf",
    "regnet_y_400mf",
    "shufflenet_v2_x0_5",
    "squeezenet1_1",
)
"""One converted torchvision zoo model per family: the others are the same conversion, bigger."""
