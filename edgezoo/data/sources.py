"""Resolve a --data argument ("embedded", "fashion-mnist", "composite" or a directory) into
train / validation datasets for a task."""

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from torch.utils.data import Dataset

from edgezoo.data.composite import (
    COMPOSITE_CLASSES,
    COMPOSITE_NUM_CLASSES,
    CompositeFashionSegmentation,
)
from edgezoo.data.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    ItemArrays,
    ItemClassification,
    is_fashion_mnist_dir,
    load_embedded_fashion_mnist,
    load_fashion_mnist,
)
from edgezoo.data.folders import IGNORE_INDEX, SegmentationFolder, image_folder
from edgezoo.data.transforms import (
    ClassificationTransform,
    SegmentationTransform,
    Size,
)
from edgezoo.data.validation import VALIDATION_SEED, validation_split
from edgezoo.errors import DataError
from edgezoo.tasks import CLASSIFICATION, IMAGENET_MEAN, IMAGENET_STD, SEGMENTATION, TASKS

DATA_NAMES = ("embedded", "fashion-mnist", "composite")
COMPOSITE_CANVAS = 64


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


def build_task_data(
    data: str | os.PathLike,
    task: str,
    input_size: Size,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    num_classes: int | None = None,
    augment: bool = True,
    composite_seed: int = 0,
    composite_scenes: tuple[int | None, int | None] = (None, None),
    validation_split: int = 0,
) -> TaskData:
    """Datasets for `task` from a data name or directory.

    Names: "embedded" (the Fashion-MNIST subset in the package), "fashion-mnist" (the full set
    at the Debian location), "composite" (segmentation scenes composed from the embedded items).
    For segmentation, "embedded" and "fashion-mnist" also mean composite scenes from those items.
    A directory holds Fashion-MNIST idx files, or train/ and val/ sub-folders: class folders
    (classification) or images/ + masks/ (segmentation, with num_classes given).
    composite_scenes: (train, val) scene counts of a composite set (default: one per item).
    validation_split: hold this many training items out (edgezoo.data.validation_split's seeded
    choice, read without augmentation) as `val`; the data's test set becomes `test`.
    """
    options = dict(
        num_classes=num_classes, composite_seed=composite_seed, composite_scenes=composite_scenes
    )
    built = _task_data(data, task, input_size, mean, std, augment=augment, **options)
    if not validation_split:
        return built
    plain = _task_data(data, task, input_size, mean, std, augment=False, **options)
    return hold_out(built, plain, validation_split)


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


def _task_data(
    data: str | os.PathLike,
    task: str,
    input_size: Size,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    num_classes: int | None,
    augment: bool,
    composite_seed: int,
    composite_scenes: tuple[int | None, int | None],
) -> TaskData:
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; use one of {TASKS}")
    name = os.fspath(data)
    if name == "composite" and task != SEGMENTATION:
        raise DataError("'composite' is a segmentation set; use it with a segmentation model")
    items = _fashion_mnist_items(name)
    if items is None:
        return _folder_data(Path(name), task, input_size, mean, std, num_classes, augment)
    train_items, val_items = items
    if task == CLASSIFICATION:
        _check_num_classes(num_classes, len(FASHION_MNIST_CLASSES), "Fashion-MNIST")
        return TaskData(
            train=ItemClassification(
                train_items, ClassificationTransform(input_size, mean, std, augment)
            ),
            val=ItemClassification(val_items, ClassificationTransform(input_size, mean, std)),
            task=task,
            num_classes=len(FASHION_MNIST_CLASSES),
            classes=FASHION_MNIST_CLASSES,
            description=f"{train_items.source}: {len(train_items)} train / {len(val_items)} test",
        )
    _check_num_classes(num_classes, COMPOSITE_NUM_CLASSES, "the composite set")
    return _composite_data(
        train_items, val_items, input_size, mean, std, augment, composite_seed, composite_scenes
    )


def _fashion_mnist_items(name: str) -> tuple[ItemArrays, ItemArrays] | None:
    """(train, test) Fashion-MNIST items a data name stands for, or None for a folder."""
    if name in ("embedded", "composite"):
        return load_embedded_fashion_mnist("train"), load_embedded_fashion_mnist("test")
    if name == "fashion-mnist":
        return load_fashion_mnist(None, "train"), load_fashion_mnist(None, "test")
    if is_fashion_mnist_dir(name):
        return load_fashion_mnist(name, "train"), load_fashion_mnist(name, "test")
    return None


def _composite_data(
    train_items: ItemArrays,
    val_items: ItemArrays,
    input_size: Size,
    mean: Sequence[float],
    std: Sequence[float],
    augment: bool,
    seed: int,
    scenes: tuple[int | None, int | None],
) -> TaskData:
    """Composite segmentation scenes built from Fashion-MNIST items."""
    train = _composite(train_items, scenes[0], input_size, mean, std, augment, seed)
    val = _composite(val_items, scenes[1], input_size, mean, std, False, seed + 1)
    return TaskData(
        train=train,
        val=val,
        task=SEGMENTATION,
        num_classes=COMPOSITE_NUM_CLASSES,
        classes=COMPOSITE_CLASSES,
        description=(
            f"COMPOSITE segmentation scenes ({COMPOSITE_CANVAS}x{COMPOSITE_CANVAS}, 1-3 items) "
            f"built from {train_items.source} items: {len(train)} train / {len(val)} val scenes"
        ),
        ignore_index=IGNORE_INDEX,
    )


def _composite(
    items: ItemArrays,
    length: int | None,
    input_size: Size,
    mean: Sequence[float],
    std: Sequence[float],
    augment: bool,
    seed: int,
) -> CompositeFashionSegmentation:
    return CompositeFashionSegmentation(
        items,
        length=length,
        transform=SegmentationTransform(input_size, mean, std, augment),
        canvas_size=COMPOSITE_CANVAS,
        seed=seed,
    )


def _check_num_classes(requested: int | None, actual: int, what: str) -> None:
    if requested is not None and requested != actual:
        raise DataError(f"{what} has {actual} classes, but num_classes={requested} was asked for")


def _folder_data(
    root: Path,
    task: str,
    input_size: Size,
    mean: Sequence[float],
    std: Sequence[float],
    num_classes: int | None,
    augment: bool,
) -> TaskData:
    """Users' folders: root/train and root/val, each an ImageFolder or an images/masks pair."""
    splits = _split_folders(root)
    if task == CLASSIFICATION:
        return _image_folder_data(root, splits, input_size, mean, std, num_classes, augment)
    if num_classes is None:
        raise DataError(
            f"segmentation folders {root} need the number of classes (--num-classes): masks "
            "hold class ids and nothing else tells how many there are"
        )
    train = SegmentationFolder(
        splits["train"], num_classes, SegmentationTransform(input_size, mean, std, augment)
    )
    val = SegmentationFolder(
        splits["val"], num_classes, SegmentationTransform(input_size, mean, std)
    )
    # A bad mask in val would otherwise surface only after a whole training epoch.
    train.validate()
    val.validate()
    return TaskData(
        train=train,
        val=val,
        task=task,
        num_classes=num_classes,
        classes=train.classes,
        description=f"segmentation folders {root}: {len(train)} train / {len(val)} val",
        ignore_index=IGNORE_INDEX,
    )


def _split_folders(root: Path) -> dict[str, Path]:
    """root/train and root/val, or a DataError saying what the data directory needs."""
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


def _image_folder_data(
    root: Path,
    splits: dict[str, Path],
    input_size: Size,
    mean: Sequence[float],
    std: Sequence[float],
    num_classes: int | None,
    augment: bool,
) -> TaskData:
    """Class-per-folder classification data."""
    train = image_folder(splits["train"], ClassificationTransform(input_size, mean, std, augment))
    val = image_folder(splits["val"], ClassificationTransform(input_size, mean, std))
    if train.classes != val.classes:
        raise DataError(
            f"{splits['train']} and {splits['val']} have different class folders: "
            f"{train.classes} vs {val.classes}"
        )
    _check_num_classes(num_classes, len(train.classes), str(root))
    return TaskData(
        train=train,
        val=val,
        task=CLASSIFICATION,
        num_classes=len(train.classes),
        classes=tuple(train.classes),
        description=f"image folders {root}: {len(train)} train / {len(val)} val",
    )
