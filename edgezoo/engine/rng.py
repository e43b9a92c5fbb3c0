"""The random generators of a run: captured with a checkpoint, restored on resume, and seeded
per epoch so a resumed run repeats the uninterrupted one."""

import random
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state", "seed_epoch", "seed_everything"]


def capture_rng_state() -> dict[str, Any]:
    """The state of every random generator the engine's runs draw from."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back the generators captured by capture_rng_state."""
    torch.set_rng_state(state["torch"])
    version, *rest = state["python"]
    random.setstate((version, tuple(rest[0]), rest[1]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed torch, Python and NumPy, e.g. before building a model from random initialisation."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Seed every generator from (seed, epoch, rank), so an epoch's randomness does not depend
    on what ran before it: a resumed run repeats the uninterrupted one exactly."""
    mixed = np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0]
    torch.manual_seed(int(mixed))
    random.seed(int(mixed))
    np.random.seed(int(mixed))
