"""Datasets: Fashion-MNIST (full and embedded subset), composite segmentation scenes, folders."""

from edgezoo.data.composite import (
    COMPOSITE_CLASSES,
    COMPOSITE_NUM_CLASSES,
    CompositeFashionSegmentation,
)
from edgezoo.data.fashion_mnist import (
    DEBIAN_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    ItemArrays,
    ItemClassification,
    embedded_dir,
    fashion_mnist_dir,
    is_fashion_mnist_dir,
    load_embedded_fashion_mnist,
    load_fashion_mnist,
)
from edgezoo.data.folders import IGNORE_INDEX, SegmentationFolder, image_folder
from edgezoo.data.idx import read_idx, write_idx
from edgezoo.data.sources import DATA_NAMES, TaskData, hold_out
from edgezoo.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassificationTransform,
    SegmentationTransform,
)
from edgezoo.data.validation import VALIDATION_SEED, VALIDATION_SIZE, validation_split

__all__ = [
    "COMPOSITE_CLASSES",
    "COMPOSITE_NUM_CLASSES",
    "DATA_NAMES",
    "DEBIAN_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VALIDATION_SEED",
    "VALIDATION_SIZE",
    "ClassificationTransform",
    "CompositeFashionSegmentation",
    "ItemArrays",
    "ItemClassification",
    "SegmentationFolder",
    "SegmentationTransform",
    "TaskData",
    "embedded_dir",
    "fashion_mnist_dir",
    "hold_out",
    "image_folder",
    "is_fashion_mnist_dir",
    "load_embedded_fashion_mnist",
    "load_fashion_mnist",
    "read_idx",
    "validation_split",
    "write_idx",
]
