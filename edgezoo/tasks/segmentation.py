"""Semantic segmentation: a class per pixel, per-pixel cross entropy, mIoU."""

import os
from collections.abc import Sequence

import torch
from torch import Tensor

from edgezoo.data.composite import (
    COMPOSITE_CLASSES,
    COMPOSITE_NUM_CLASSES,
    CompositeFashionSegmentation,
)
from edgezoo.data.fashion_mnist import ItemArrays
from edgezoo.data.folders import IGNORE_INDEX, SegmentationFolder
from edgezoo.data.sources import (
    COMPOSITE_DETECTION_NAME,
    TaskData,
    check_num_classes,
    fashion_mnist_items,
    split_folders,
)
from edgezoo.data.transforms import SegmentationTransform, Size
from edgezoo.errors import DataError
from edgezoo.tasks.base import DemoDefaults, Reduce, Task, no_reduce
from edgezoo.tidl.options import POST_PROC_SEGMENTATION

SEGMENTATION = "segmentation"
COMPOSITE_CANVAS = 64


class SegmentationMeter:
    """Loss, mIoU and pixel accuracy (percent) from a confusion matrix summed over ranks."""

    def __init__(
        self, num_classes: int, ignore_index: int | None = 255, device: torch.device | str = "cpu"
    ) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)
        self.loss_sum = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, batches

    @torch.no_grad()
    def update(self, logits: Tensor, targets: Tensor, loss: Tensor) -> None:
        """Add one batch: logits (N, C, H, W), targets (N, H, W) class ids."""
        predictions = logits.argmax(dim=1)
        valid = (targets >= 0) & (targets < self.num_classes)
        if self.ignore_index is not None:
            valid &= targets != self.ignore_index
        index = targets[valid] * self.num_classes + predictions[valid]
        counts = torch.bincount(index, minlength=self.num_classes**2)
        self.confusion += counts.view(self.num_classes, self.num_classes).to(self.confusion)
        n = targets.shape[0]
        self.loss_sum += torch.stack(
            [loss.detach().double().to(self.loss_sum.device) * n, self.loss_sum.new_tensor(n)]
        )

    def compute(self, reduce: Reduce = no_reduce) -> dict[str, float]:
        """{"loss", "miou", "pixel_acc"}, summed by `reduce` first.

        mIoU averages the classes that occur in the targets or the predictions.
        """
        confusion = reduce(self.confusion.clone())
        loss, n = reduce(self.loss_sum.clone()).tolist()
        true_positive = confusion.diag()
        union = confusion.sum(0) + confusion.sum(1) - true_positive
        present = union > 0
        iou = true_positive[present] / union[present]
        total = confusion.sum()
        return {
            "loss": loss / max(n, 1.0),
            "miou": 100.0 * float(iou.mean()) if present.any() else 0.0,
            "pixel_acc": 100.0 * float(true_positive.sum() / total) if total > 0 else 0.0,
        }


class Segmentation(Task):
    """Logits (N, classes, H, W); masks (N, H, W) class ids, 255 ignored; TIDL's segmentation
    post-processing (the graph may end in ArgMax)."""

    name = SEGMENTATION
    primary_metric = "miou"
    metric_label = "mIoU (%)"
    output_rank = 4
    tidl_post_proc_type = POST_PROC_SEGMENTATION
    export_argmax = True
    composite_scenes = True
    builtin_input_size = 64
    # From small AdamW sweeps on composite scenes (mIoU after 4 epochs: lr 2e-3 20.6 %, 5e-3
    # 26.4 %, 1e-2 30.4 %, 2e-2 33.8 %).
    demo = DemoDefaults(
        model="deeplabv3plus_mobilenetv2",
        data="composite",
        full_data="fashion-mnist",
        input_size=64,
        batch_size=16,
        float_epochs=4,
        qat_epochs=2,
        calibration_batches=32,
        lr=2e-2,
        qat_lr=5e-4,
        scenes=(2000, 500),
        backbone_weights=True,
    )

    def make_meter(
        self, num_classes: int, ignore_index: int | None, device: torch.device | str = "cpu"
    ) -> SegmentationMeter:
        return SegmentationMeter(num_classes, ignore_index, device)

    def build_data(
        self,
        data: str | os.PathLike,
        input_size: Size,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        num_classes: int | None,
        augment: bool,
        composite_seed: int,
        composite_scenes: tuple[int | None, int | None],
    ) -> TaskData:
        """COMPOSITE scenes of Fashion-MNIST items (a data name or idx folder), or users'
        images/ + masks/ folders."""
        if os.fspath(data) == COMPOSITE_DETECTION_NAME:
            raise DataError(
                "'composite-detection' is a detection set; segmentation's composite scenes are "
                "'composite' (or 'embedded' / 'fashion-mnist')"
            )
        items = fashion_mnist_items(os.fspath(data))
        if items is None:
            return _folder_data(data, input_size, mean, std, num_classes, augment)
        check_num_classes(num_classes, COMPOSITE_NUM_CLASSES, "the composite set")
        train_items, val_items = items
        train = _composite(
            train_items, composite_scenes[0], input_size, mean, std, augment, composite_seed
        )
        val = _composite(
            val_items, composite_scenes[1], input_size, mean, std, False, composite_seed + 1
        )
        return TaskData(
            train=train,
            val=val,
            task=SEGMENTATION,
            num_classes=COMPOSITE_NUM_CLASSES,
            classes=COMPOSITE_CLASSES,
            description=(
                f"COMPOSITE segmentation scenes ({COMPOSITE_CANVAS}x{COMPOSITE_CANVAS}, 1-3 "
                f"items) built from {train_items.source} items: {len(train)} train / "
                f"{len(val)} val scenes"
            ),
            ignore_index=IGNORE_INDEX,
        )

    def model_config_postprocess(self, argmax: bool) -> dict[str, object]:
        return {"with_argmax": not argmax}


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


def _folder_data(
    root: str | os.PathLike,
    input_size: Size,
    mean: Sequence[float],
    std: Sequence[float],
    num_classes: int | None,
    augment: bool,
) -> TaskData:
    """Users' folders: root/train and root/val, each an images/ + masks/ pair."""
    splits = split_folders(root)
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
        task=SEGMENTATION,
        num_classes=num_classes,
        classes=train.classes,
        description=f"segmentation folders {root}: {len(train)} train / {len(val)} val",
        ignore_index=IGNORE_INDEX,
    )
