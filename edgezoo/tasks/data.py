"""Resolve a --data argument ("embedded", "fashion-mnist", "composite" or a directory) into a
task's train / validation (/ test) datasets."""

import os
from collections.abc import Sequence

from edgezoo.data.sources import TaskData, hold_out
from edgezoo.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Size
from edgezoo.tasks.base import Task
from edgezoo.tasks.registry import get_task


def build_task_data(
    data: str | os.PathLike,
    task: "str | Task",
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
    task = get_task(task)
    options = {
        "num_classes": num_classes,
        "composite_seed": composite_seed,
        "composite_scenes": composite_scenes,
    }
    built = task.build_data(data, input_size, mean, std, augment=augment, **options)
    if not validation_split:
        return built
    plain = task.build_data(data, input_size, mean, std, augment=False, **options)
    return hold_out(built, plain, validation_split)
