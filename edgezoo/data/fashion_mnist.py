"""Fashion-MNIST (Zalando Research, MIT licence): the full set from its idx files, or the subset
shipped inside edgezoo so that the demo runs offline anywhere."""

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from edgezoo.data.idx import read_idx
from edgezoo.data.transforms import Transform
from edgezoo.errors import DataError

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
SPLITS = ("train", "test")
_FILE_PREFIX = {"train": "train", "test": "t10k"}


@dataclass(frozen=True)
class ItemArrays:
    """Grey 28x28 items and their class ids, with a note of where they came from."""

    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int64
    source: str

    def __len__(self) -> int:
        return len(self.labels)


def split_file_names(split: str) -> tuple[str, str]:
    """The (images, labels) idx file names of a split, without the .gz suffix."""
    if split not in SPLITS:
        raise DataError(f"unknown Fashion-MNIST split {split!r}; use one of {SPLITS}")
    prefix = _FILE_PREFIX[split]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _expected_files() -> list[str]:
    return [f"{name}.gz" for split in SPLITS for name in split_file_names(split)]


def _find_file(root: Path, name: str) -> Path | None:
    """The .gz file if present, else the decompressed one torchvision's raw folder holds."""
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    return None


def is_fashion_mnist_dir(root: str | os.PathLike) -> bool:
    """Whether a directory holds all four Fashion-MNIST idx files."""
    root = Path(root)
    return all(_find_file(root, name) for split in SPLITS for name in split_file_names(split))


def fashion_mnist_dir(root: str | os.PathLike | None = None) -> Path:
    """The directory to read Fashion-MNIST from: root if given, else the Debian location."""
    if root is None:
        if not DEBIAN_FASHION_MNIST_DIR.is_dir():
            raise DataError(
                f"Fashion-MNIST was not found at {DEBIAN_FASHION_MNIST_DIR}. Install it with "
                f"`apt install {DEBIAN_PACKAGE}`, or pass a directory holding "
                f"{', '.join(_expected_files())}, or use the embedded subset ('embedded')"
            )
        root = DEBIAN_FASHION_MNIST_DIR
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"Fashion-MNIST directory {root} does not exist; it must hold "
            f"{', '.join(_expected_files())} (Debian package {DEBIAN_PACKAGE})"
        )
    missing = [
        f"{name}.gz"
        for split in SPLITS
        for name in split_file_names(split)
        if _find_file(root, name) is None
    ]
    if missing:
        raise DataError(
            f"{root} lacks the Fashion-MNIST files {', '.join(missing)}; it must hold "
            f"{', '.join(_expected_files())} (gzip-compressed or not; Debian package "
            f"{DEBIAN_PACKAGE})"
        )
    return root


def load_fashion_mnist(root: str | os.PathLike | None = None, split: str = "train") -> ItemArrays:
    """Read one split of Fashion-MNIST from root (default: the Debian location)."""
    root = fashion_mnist_dir(root)
    images_name, labels_name = split_file_names(split)
    images_path, labels_path = _find_file(root, images_name), _find_file(root, labels_name)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(
            f"{images_path} must hold uint8 images of shape (N, H, W), got {images.dtype} "
            f"{images.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{labels_path} must hold one label per image ({len(images)}), got shape {labels.shape}"
        )
    labels = labels.astype(np.int64)
    bad = np.unique(labels[(labels < 0) | (labels >= len(FASHION_MNIST_CLASSES))])
    if bad.size:
        raise DataError(f"{labels_path} holds class ids {bad.tolist()} outside 0..9")
    return ItemArrays(images, labels, f"Fashion-MNIST ({root})")


def embedded_dir() -> Path:
    """The package folder holding the embedded Fashion-MNIST subset (idx .gz files)."""
    return Path(str(resources.files("edgezoo.data").joinpath("embedded")))


def load_embedded_fashion_mnist(split: str = "train") -> ItemArrays:
    """The class-balanced Fashion-MNIST subset shipped with edgezoo (see embedded/README.md)."""
    items = load_fashion_mnist(embedded_dir(), split)
    return ItemArrays(items.images, items.labels, "embedded Fashion-MNIST subset")


class ItemClassification(Dataset):
    """A classification dataset over in-memory grey items; returns (input tensor, class id)."""

    def __init__(self, items: ItemArrays, transform: Transform) -> None:
        self.items = items
        self.transform = transform
        self.classes = FASHION_MNIST_CLASSES

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.transform(self.items.images[index]), int(self.items.labels[index])
