"""What every task's data have in common: the train / validation (/ test) container, the names
of the built-in sets, the Fashion-MNIST items a name stands for, users' split folders and the
held-out validation split. Each task builds its own datasets from these (edgezoo.tasks)."""

import os
from dataclasses import dataclass, replace
from pathlib import Path

from torch.utils.data import Dataset

from edgezoo.data.fashion_mnist import (
    ItemArrays,
    is_fashion_mnist_dir,
    load_embedded_fashion_mnist,
    load_fashion_mnist,
)
from edgezoo.data.validation import VALIDATION_SEED, validation_split
from edgezoo.errors import DataError

DATA_NAMES = ("embedded", "fashion-mnist", "composite", "composite-detection")
COMPOSITE_NAME = "composite"
COMPOSITE_DETECTION_NAME = "composite-detection"


@dataclass(frozen=True)
class TaskData:
    """Train and validation datasets of one task, with what a model and a report need to know.

    With a validation split held out of the training set, `val` is that split, `test` the data's
    own test set (kept for the final figure) and `held_out` the training items' indices in it.
    """

    train: Dataset
    val: Dataset
    task: str
    num_classes: int
    classes: tuple[str, ...]
    description: str
    ignore_index: int | None = None
    test: Dataset | None = None
    held_out: tuple[int, ...] = ()


def hold_out(data: TaskData, plain: TaskData, size: int, seed: int = VALIDATION_SEED) -> TaskData:
    """data with `size` training items held out as its validation set (read from `plain`, the
    same data without augmentation) and its own validation set kept as the test set."""
    if data.test is not None:
        raise DataError("this data already holds a validation split out of its training set")
    train, val = validation_split(data.train, size, seed, unaugmented=plain.train)
    return replace(
        data,
        train=train,
        val=val,
        test=data.val,
        held_out=tuple(val.indices),
        description=f"{data.description}; {size} training items held out for validation "
        f"(seed {seed}), the test set kept for the final figure",
    )


def fashion_mnist_items(name: str) -> tuple[ItemArrays, ItemArrays] | None:
    """(train, test) Fashion-MNIST items a data name stands for, or None for a folder."""
    if name in ("embedded", COMPOSITE_NAME):
        return load_embedded_fashion_mnist("train"), load_embedded_fashion_mnist("test")
    if name == "fashion-mnist":
        return load_fashion_mnist(None, "train"), load_fashion_mnist(None, "test")
    if is_fashion_mnist_dir(name):
        return load_fashion_mnist(name, "train"), load_fashion_mnist(name, "test")
    return None


def check_num_classes(requested: int | None, actual: int, what: str) -> None:
    """Refuse a num_classes that the data contradict."""
    if requested is not None and requested != actual:
        raise DataError(f"{what} has {actual} classes, but num_classes={requested} was asked for")


def split_folders(root: str | os.PathLike) -> dict[str, Path]:
    """root/train and root/val, or a DataError saying what the data directory needs."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(
            f"--data {root} is a file; pass one of {', '.join(DATA_NAMES)} or a directory "
            "holding Fashion-MNIST idx files, or train/ and val/ sub-folders"
        )
    if not root.is_dir():
        raise DataError(
            f"data directory {root} does not exist; pass one of {', '.join(DATA_NAMES)} or a "
            "directory holding Fashion-MNIST idx files, or train/ and val/ sub-folders"
        )
    splits = {split: root / split for split in ("train", "val")}
    missing = [f"{split}/" for split, path in splits.items() if not path.is_dir()]
    if missing:
        raise DataError(
            f"{root} lacks {' and '.join(missing)}: a data directory holds the Fashion-MNIST idx "
            "files, or train/ and val/ sub-folders (classification: one folder per class; "
            "segmentation: images/ and masks/)"
        )
    return splits
