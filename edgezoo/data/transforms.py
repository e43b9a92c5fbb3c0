"""Map grey or RGB images (and masks) to a model's normalised 3-channel input.

Random choices use torch's global generator, which the engine reseeds every epoch (and DataLoader
workers derive their seeds from), so augmented runs repeat exactly and resume exactly.
"""

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""torchvision's ImageNet normalisation of 0..1 pixels (mean, std per RGB channel)."""

Transform = Callable[[np.ndarray], Tensor]
PairTransform = Callable[[np.ndarray, np.ndarray], tuple[Tensor, Tensor]]
Size = int | tuple[int, int]


def _pair(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def image_to_tensor(image: np.ndarray | Image.Image) -> Tensor:
    """A (3, H, W) float tensor in [0, 1] from a grey (H, W) or RGB (H, W, 3) uint8 image."""
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    tensor = torch.tensor(array, dtype=torch.float32).div_(255.0)
    if tensor.ndim == 2:
        return tensor.expand(3, -1, -1)
    return tensor.permute(2, 0, 1)


def resize_image(image: Tensor, size: Size) -> Tensor:
    """Bilinear resize of a (C, H, W) float image, antialiased when shrinking."""
    size = _pair(size)
    if tuple(image.shape[-2:]) == size:
        return image
    shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    return F.interpolate(
        image[None], size=size, mode="bilinear", align_corners=False, antialias=shrink
    )[0]


def resize_mask(mask: Tensor, size: Size) -> Tensor:
    """Nearest-neighbour resize of an (H, W) integer mask, so class ids stay class ids."""
    size = _pair(size)
    if tuple(mask.shape[-2:]) == size:
        return mask
    return F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()


class _Normalise:
    """Shared resize + normalisation settings."""

    def __init__(
        self,
        input_size: Size,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: bool = False,
    ) -> None:
        self.input_size = _pair(input_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augment = augment

    def _normalise(self, image: Tensor) -> Tensor:
        return (image - self.mean) / self.std

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(input_size={self.input_size}, "
            f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}, "
            f"augment={self.augment})"
        )


class ClassificationTransform(_Normalise):
    """Image -> resized, (randomly flipped,) normalised (3, H, W) input.

    Augmentation is a horizontal flip only: in the demo's few epochs, stronger augmentation
    slowed learning more than it reduced over-fitting.
    """

    def __call__(self, image: np.ndarray | Image.Image) -> Tensor:
        x = resize_image(image_to_tensor(image), self.input_size)
        if self.augment and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return self._normalise(x)


class SegmentationTransform(_Normalise):
    """(image, mask) -> resized, (flipped,) normalised (3, H, W) input and (H, W) int64 mask."""

    def __call__(self, image: np.ndarray | Image.Image, mask: np.ndarray) -> tuple[Tensor, Tensor]:
        x = resize_image(image_to_tensor(image), self.input_size)
        y = resize_mask(torch.from_numpy(np.asarray(mask, dtype=np.int64)), self.input_size)
        if self.augment and torch.rand(()) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        return self._normalise(x), y


class DetectionTransform(_Normalise):
    """(image, (M, 5) relative-box targets) -> resized, (flipped,) normalised (3, H, W) input
    and its targets (relative corners stay valid under resizing; a flip mirrors them)."""

    def __call__(self, image: np.ndarray | Image.Image, targets: Tensor) -> tuple[Tensor, Tensor]:
        x = resize_image(image_to_tensor(image), self.input_size)
        if self.augment and torch.rand(()) < 0.5:
            x, targets = x.flip(-1), targets[:, [0, 3, 2, 1, 4]] * _MIRROR + _MIRROR_SHIFT
        return self._normalise(x), targets


# Mirroring relative x corners: x1' = 1 - x2, x2' = 1 - x1 (columns reordered above).
_MIRROR = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])
_MIRROR_SHIFT = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0])
