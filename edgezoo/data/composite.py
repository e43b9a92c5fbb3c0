"""A COMPOSITE segmentation set: real Fashion-MNIST items pasted onto a blank canvas.

No multi-object segmentation set with masks ships offline, so this set stands in for one: the
pixels are real, the scenes are synthetic. Results on it are composite-set results, never
comparable with a real segmentation benchmark.
"""

import numpy as np
from torch.utils.data import Dataset

from edgezoo.data.fashion_mnist import FASHION_MNIST_CLASSES, ItemArrays
from edgezoo.data.transforms import PairTransform
from edgezoo.errors import UsageError

COMPOSITE_CLASSES = ("background", *FASHION_MNIST_CLASSES)
COMPOSITE_NUM_CLASSES = len(COMPOSITE_CLASSES)


class CompositeFashionSegmentation(Dataset):
    """Composite scenes of 1..max_items Fashion-MNIST items; mask = class id + 1, background 0.

    Scene i depends only on (seed, i): item choice, position and order are drawn from a
    generator seeded with both, so every process and every epoch sees the same scenes.
    Item pixels brighter than `threshold` are labelled and overwrite what lies beneath; fainter
    ones only brighten the canvas and keep the label beneath.
    """

    def __init__(
        self,
        items: ItemArrays,
        length: int | None = None,
        transform: PairTransform | None = None,
        canvas_size: int = 64,
        max_items: int = 3,
        threshold: int = 32,
        seed: int = 0,
    ) -> None:
        item_size = items.images.shape[-1]
        if canvas_size < item_size:
            raise UsageError(f"canvas_size {canvas_size} is smaller than an item ({item_size})")
        self.items = items
        self.length = len(items) if length is None else length
        self.transform = transform
        self.canvas_size = canvas_size
        self.max_items = max_items
        self.threshold = threshold
        self.seed = seed
        self.classes = COMPOSITE_CLASSES

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw composite scene: a grey uint8 canvas and its int64 class-id mask."""
        if not 0 <= index < self.length:
            raise IndexError(f"scene {index} out of range for {self.length} scenes")
        rng = np.random.default_rng([self.seed, index])
        image = np.zeros((self.canvas_size, self.canvas_size), np.uint8)
        mask = np.zeros((self.canvas_size, self.canvas_size), np.int64)
        item_h, item_w = self.items.images.shape[-2:]
        for item in rng.integers(0, len(self.items), size=rng.integers(1, self.max_items + 1)):
            top = rng.integers(0, self.canvas_size - item_h + 1)
            left = rng.integers(0, self.canvas_size - item_w + 1)
            pixels = self.items.images[item]
            window = (slice(top, top + item_h), slice(left, left + item_w))
            solid = pixels > self.threshold
            image[window] = np.where(solid, pixels, np.maximum(image[window], pixels))
            mask[window] = np.where(solid, self.items.labels[item] + 1, mask[window])
        return image, mask

    def __getitem__(self, index: int):
        image, mask = self.scene(index)
        if self.transform is None:
            return image, mask
        return self.transform(image, mask)
