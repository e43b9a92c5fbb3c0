"""Users' own data: class-per-folder images (torchvision ImageFolder) and image/mask folders."""

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from edgezoo.data.transforms import PairTransform, Transform
from edgezoo.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
IGNORE_INDEX = 255
_PREVIEW = 5


def _preview(names: list[str]) -> str:
    shown = ", ".join(names[:_PREVIEW])
    return shown if len(names) <= _PREVIEW else f"{shown}, ... ({len(names)} in all)"


def image_folder(root: str | os.PathLike, transform: Transform) -> ImageFolder:
    """torchvision's ImageFolder (root/<class>/<image>), with a DataError naming the layout."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"image folder {root} does not exist; classification data needs "
            f"{root}/<class name>/<image files>"
        )
    try:
        return ImageFolder(str(root), transform=transform)
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(
            f"{root} is not a classification image folder ({err}); it needs one sub-folder per "
            f"class holding {'/'.join(IMAGE_SUFFIXES)} images"
        ) from err


class SegmentationFolder(Dataset):
    """Segmentation pairs from root/images/<stem>.<ext> and root/masks/<stem>.png.

    A mask is a single-channel PNG (mode L or P) whose pixel values are class ids
    0..num_classes-1, or `ignore_index` for pixels no loss or metric should count.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        num_classes: int,
        transform: PairTransform | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.root = Path(root).expanduser()
        self.num_classes = num_classes
        self.transform = transform
        self.ignore_index = ignore_index
        self.classes = tuple(str(i) for i in range(num_classes))
        images_dir, masks_dir = self.root / "images", self.root / "masks"
        for folder in (images_dir, masks_dir):
            if not folder.is_dir():
                raise DataError(
                    f"segmentation folder {self.root} lacks {folder.name}/; it needs images/ "
                    "(image files) and masks/ (PNG class-id masks with the same file stems)"
                )
        images = {
            p.stem: p for p in sorted(images_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES
        }
        masks = {p.stem: p for p in sorted(masks_dir.iterdir()) if p.suffix.lower() == ".png"}
        if not images:
            raise DataError(f"{images_dir} holds no {'/'.join(IMAGE_SUFFIXES)} images")
        unmatched = sorted(set(images) - set(masks))
        if unmatched:
            raise DataError(
                f"{len(unmatched)} images in {images_dir} have no mask masks/<stem>.png: "
                f"{_preview(unmatched)}"
            )
        orphans = sorted(set(masks) - set(images))
        if orphans:
            logger.warning(
                "%d masks in %s have no image: %s", len(orphans), masks_dir, _preview(orphans)
            )
        self.pairs = [(images[stem], masks[stem]) for stem in sorted(images)]

    def __len__(self) -> int:
        return len(self.pairs)

    def read_mask(self, path: Path) -> np.ndarray:
        """A mask's class ids as int64, after checking every id is a class or the ignore index."""
        try:
            with Image.open(path) as mask_image:
                if mask_image.mode not in ("L", "P", "I", "I;16"):
                    raise DataError(
                        f"mask {path} has mode {mask_image.mode}; masks must be single-channel "
                        "PNGs (mode L or P) whose pixel values are class ids"
                    )
                mask = np.asarray(mask_image, dtype=np.int64)
        except (OSError, UnidentifiedImageError) as err:
            raise DataError(f"cannot read mask {path}: {err}") from err
        ids = np.unique(mask)
        bad = ids[((ids < 0) | (ids >= self.num_classes)) & (ids != self.ignore_index)]
        if bad.size:
            raise DataError(
                f"mask {path} holds class ids {bad.tolist()}, but num_classes is "
                f"{self.num_classes} (valid ids 0..{self.num_classes - 1}, and "
                f"{self.ignore_index} for ignored pixels); fix the mask or raise num_classes"
            )
        return mask

    def __getitem__(self, index: int):
        image_path, mask_path = self.pairs[index]
        mask = self.read_mask(mask_path)
        try:
            with Image.open(image_path) as opened:
                image = opened.convert("RGB")
        except (OSError, UnidentifiedImageError) as err:
            raise DataError(f"cannot read image {image_path}: {err}") from err
        if image.size != (mask.shape[1], mask.shape[0]):
            raise DataError(
                f"image {image_path} is {image.size[0]}x{image.size[1]} but its mask {mask_path} "
                f"is {mask.shape[1]}x{mask.shape[0]}; they must match"
            )
        if self.transform is None:
            return np.asarray(image), mask
        return self.transform(image, mask)
