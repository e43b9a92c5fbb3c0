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
