"""Users' own data: class-per-folder images (torchvision ImageFolder) and image/mask folders."""

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from tqdm import tqdm

from edgezoo.data.transforms import PairTransform, Transform
from edgezoo.errors import DataError
from edgezoo.text import preview

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
IGNORE_INDEX = 255


def image_folder(root: str | os.PathLike, transform: Transform) -> ImageFolder:
    """torchvision's ImageFolder (root/<class>/<image>), with a DataError naming the layout."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"image folder {root} does not exist; classification data needs "
            f"{root}/<class name>/<image files>"
        )
    try:
        return ImageFolder(str(root), transform=transform, loader=read_rgb_image)
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(
            f"{root} is not a classification image folder ({err}); it needs one sub-folder per "
            f"class holding {'/'.join(IMAGE_SUFFIXES)} images"
        ) from err


def read_rgb_image(path: str | os.PathLike) -> Image.Image:
    """An image file as RGB; DataError names a file that cannot be read."""
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise DataError(
            f"cannot read image {path} ({err}); replace or remove the file (a truncated or "
            "corrupt image?)"
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
                f"{preview(unmatched)}"
            )
        orphans = sorted(set(masks) - set(images))
        if orphans:
            logger.warning(
                "%d masks in %s have no image: %s", len(orphans), masks_dir, preview(orphans)
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
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
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

    def validate(self) -> None:
        """Check every mask's class ids and every image/mask size now, before training.

        Reads the masks and only the images' headers; DataError names the first bad pair.
        """
        for image_path, mask_path in tqdm(
            self.pairs, desc=f"checking masks in {self.root.name}", leave=False, disable=None
        ):
            mask = self.read_mask(mask_path)
            try:
                with Image.open(image_path) as opened:
                    size = opened.size
            except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
                raise DataError(f"cannot read image {image_path}: {err}") from err
            _check_same_size(image_path, size, mask_path, mask)

    def __getitem__(self, index: int):
        image_path, mask_path = self.pairs[index]
        mask = self.read_mask(mask_path)
        image = read_rgb_image(image_path)
        _check_same_size(image_path, image.size, mask_path, mask)
        if self.transform is None:
            return np.asarray(image), mask
        return self.transform(image, mask)


def _check_same_size(
    image_path: Path, image_size: tuple[int, int], mask_path: Path, mask: np.ndarray
) -> None:
    if image_size != (mask.shape[1], mask.shape[0]):
        raise DataError(
            f"image {image_path} is {image_size[0]}x{image_size[1]} but its mask {mask_path} "
            f"is {mask.shape[1]}x{mask.shape[0]}; they must match"
        )
