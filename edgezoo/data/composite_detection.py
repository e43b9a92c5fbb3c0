"""A COMPOSITE detection set: real Fashion-MNIST items at random sizes and places on a blank
canvas, each boxed tightly around its own pixels.

No multi-object detection set ships offline, so this set stands in for one: the pixels are real,
the scenes are synthetic. Results on it are composite-set results, never comparable with a real
detection benchmark (COCO).
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from edgezoo.data.fashion_mnist import FASHION_MNIST_CLASSES, ItemArrays
from edgezoo.data.transforms import PairTransform
from edgezoo.errors import UsageError

DETECTION_CLASSES = FASHION_MNIST_CLASSES
PLACEMENT_TRIES = 20
MAX_OVERLAP = 0.3
"""Largest intersection over the smaller box an item may have with an earlier one."""


class CompositeFashionDetection(Dataset):
    """Scenes of 1..max_items Fashion-MNIST items scaled to min_side..max_side pixels on a
    canvas; targets (M, 5) [class, x1, y1, x2, y2] relative to the canvas, tight around each
    item's pixels brighter than `threshold` (edgezoo.detection.targets).

    Scene i depends only on (seed, i), so every process and epoch sees the same scenes. Items
    overlap at most MAX_OVERLAP of the smaller box (redrawn up to PLACEMENT_TRIES times, then
    left out), so each box still shows most of its item.
    """

    def __init__(
        self,
        items: ItemArrays,
        length: int | None = None,
        transform: PairTransform | None = None,
        canvas_size: int = 128,
        max_items: int = 6,
        sides: tuple[int, int] = (24, 64),
        threshold: int = 32,
        seed: int = 0,
    ) -> None:
        if not 8 <= sides[0] <= sides[1] <= canvas_size:
            raise UsageError(
                f"item sides {sides} must be 8 <= min <= max <= canvas_size {canvas_size}"
            )
        self.items = items
        self.length = len(items) if length is None else length
        self.transform = transform
        self.canvas_size = canvas_size
        self.max_items = max_items
        self.sides = sides
        self.threshold = threshold
        self.seed = seed
        self.classes = DETECTION_CLASSES

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> tuple[np.ndarray, Tensor]:
        """The raw scene: a grey uint8 canvas and its (M, 5) relative-box targets."""
        if not 0 <= index < self.length:
            raise IndexError(f"scene {index} out of range for {self.length} scenes")
        rng = np.random.default_rng([self.seed, index])
        canvas = np.zeros((self.canvas_size, self.canvas_size), np.uint8)
        boxes: list[list[float]] = []
        for item in rng.integers(0, len(self.items), size=rng.integers(1, self.max_items + 1)):
            side = int(rng.integers(self.sides[0], self.sides[1] + 1))
            pixels = _scaled(self.items.images[item], side)
            box = self._place(rng, pixels, boxes)
            if box is None:
                continue
            top, left = box
            window = canvas[top : top + side, left : left + side]
            np.maximum(window, pixels, out=window)
            boxes.append([float(self.items.labels[item]), *self._tight(pixels, top, left)])
        return canvas, torch.tensor(boxes, dtype=torch.float32).view(-1, 5)

    def _place(
        self, rng: np.random.Generator, pixels: np.ndarray, boxes: list[list[float]]
    ) -> tuple[int, int] | None:
        side = pixels.shape[0]
        for _ in range(PLACEMENT_TRIES):
            top, left = (int(v) for v in rng.integers(0, self.canvas_size - side + 1, size=2))
            box = self._tight(pixels, top, left)
            if all(_overlap(box, other[1:]) <= MAX_OVERLAP for other in boxes):
                return top, left
        return None

    def _tight(self, pixels: np.ndarray, top: int, left: int) -> list[float]:
        rows = np.flatnonzero((pixels > self.threshold).any(axis=1))
        cols = np.flatnonzero((pixels > self.threshold).any(axis=0))
        if rows.size == 0:  # a blank item: its whole square
            rows = cols = np.array([0, pixels.shape[0] - 1])
        size = float(self.canvas_size)
        return [
            (left + cols[0]) / size,
            (top + rows[0]) / size,
            (left + cols[-1] + 1) / size,
            (top + rows[-1] + 1) / size,
        ]

    def __getitem__(self, index: int):
        image, targets = self.scene(index)
        if self.transform is None:
            return image, targets
        return self.transform(image, targets)


def _scaled(pixels: np.ndarray, side: int) -> np.ndarray:
    """An item resized to side x side (bilinear, antialiased when shrinking)."""
    tensor = torch.from_numpy(pixels).float()[None, None]
    resized = F.interpolate(
        tensor, size=(side, side), mode="bilinear", align_corners=False, antialias=side < 28
    )
    return resized[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def _overlap(a: list[float], b: list[float]) -> float:
    """Intersection over the smaller box's area."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return width * height / smaller
