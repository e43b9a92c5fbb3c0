"""The detection target format: one (M, 5) float tensor per image, rows [class, x1, y1, x2, y2]
with box corners relative to the image (0..1), batched by padding with class -1 rows.

Relative corners survive resizing and flipping unchanged (or mirrored), and a padded tensor
moves to a device and through torch's DataLoader like any other target.
"""

from collections.abc import Sequence

import torch
from torch import Tensor

PADDING_CLASS = -1
"""The class of a padding row (no object)."""

TARGET_COLUMNS = 5


def collate_detection(batch: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Stack the images; pad each image's (M, 5) targets with class -1 rows to the batch's
    largest M (at least one row)."""
    images = torch.stack([image for image, _ in batch])
    rows = max(1, max(len(target) for _, target in batch))
    targets = torch.full((len(batch), rows, TARGET_COLUMNS), float(PADDING_CLASS))
    for i, (_, target) in enumerate(batch):
        targets[i, : len(target)] = target
    return images, targets


def objects_of(targets: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Per image of a padded batch: (labels (M,) int64, boxes (M, 4) relative xyxy)."""
    found = []
    for target in targets:
        real = target[:, 0] > PADDING_CLASS
        found.append((target[real, 0].long(), target[real, 1:]))
    return found
