"""A fixed validation split carved from a training set, for choosing settings without the test
set."""

import torch
from torch.utils.data import Dataset, Subset

from edgezoo.errors import DataError

__all__ = ["VALIDATION_SEED", "VALIDATION_SIZE", "validation_split"]

VALIDATION_SIZE = 5000
VALIDATION_SEED = 0
"""The split edgezoo's accuracy benchmark chooses its QAT recipe on: 5000 of Fashion-MNIST's
60000 training images, picked by a permutation seeded with 0."""


def validation_split(
    train: Dataset,
    size: int = VALIDATION_SIZE,
    seed: int = VALIDATION_SEED,
    unaugmented: Dataset | None = None,
) -> tuple[Subset, Subset]:
    """(train without the split, the split): `size` items chosen by a seeded permutation.

    unaugmented: the same items without training augmentation (the split is read from it, so
    validation sees plain images); default `train` itself.
    """
    total = len(train)
    if unaugmented is not None and len(unaugmented) != total:
        raise DataError(f"unaugmented has {len(unaugmented)} items, train {total}")
    if not 0 < size < total:
        raise DataError(f"a validation split of {size} items needs a training set larger than it")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed)).tolist()
    held_out = sorted(order[:size])
    kept = sorted(order[size:])
    return Subset(train, kept), Subset(unaugmented if unaugmented is not None else train, held_out)
