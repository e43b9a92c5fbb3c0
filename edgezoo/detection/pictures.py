"""A picture of a detector's predictions: the first scenes of a set with their boxes, for the
demo and for users to see what the numbers mean."""

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from edgezoo.detection.postprocess import Detections
from edgezoo.fileio import atomic_path

SHOWN_SCORE = 0.3
"""Boxes scoring below this are left out of the picture (TI's deployment threshold)."""


def draw_detections(
    images: Tensor,
    found: Sequence[Detections],
    classes: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    path: Path,
) -> None:
    """Save the normalised images (N, 3, H, W) with their detections above SHOWN_SCORE."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    count = len(images)
    figure = Figure(figsize=(2.6 * count, 2.9), dpi=100)
    pixels = images * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    for i, (image, detections) in enumerate(zip(pixels, found, strict=True)):
        axes = figure.add_subplot(1, count, i + 1)
        height, width = image.shape[-2:]
        axes.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
        keep = detections.scores >= SHOWN_SCORE
        for box, score, label in zip(
            detections.boxes[keep], detections.scores[keep], detections.labels[keep], strict=True
        ):
            x1, y1, x2, y2 = (float(v) for v in box * torch.tensor([width, height] * 2))
            axes.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime"))
            axes.text(x1, y1, f"{classes[int(label)]} {score:.2f}", color="lime", fontsize=6,
                      verticalalignment="bottom")  # fmt: skip
        axes.set_axis_off()
    figure.suptitle(f"predicted boxes (score >= {SHOWN_SCORE})", fontsize=9)
    figure.tight_layout()
    with atomic_path(path) as partial:
        figure.savefig(partial, format="png")
