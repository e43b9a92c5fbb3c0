"""Object detection: raw head outputs whose meaning the model's meta-architecture holds
(edgezoo.detection), padded relative-box targets, COCO mAP, TIDL's detection post-processing.

The task is bound to a model (`bind`) or to a graph's recorded meta-architecture
(`bind_graph`) before it computes a loss or metrics: prior boxes and decoding belong to the
detector, not to the task.
"""

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
import torch.distributed as dist
from torch import Tensor, nn

from edgezoo.data.coco_folders import CocoDetectionFolder
from edgezoo.data.composite_detection import DETECTION_CLASSES, CompositeFashionDetection
from edgezoo.data.sources import (
    COMPOSITE_DETECTION_NAME,
    COMPOSITE_NAME,
    TaskData,
    check_num_classes,
    fashion_mnist_items,
    split_folders,
)
from edgezoo.data.transforms import DetectionTransform, Size
from edgezoo.detection import (
    Detections,
    MetaArch,
    coco_map,
    collate_detection,
    graph_meta_arch,
    meta_arch_of,
    objects_of,
)
from edgezoo.detection.pictures import draw_detections
from edgezoo.errors import UsageError
from edgezoo.module_state import kept_modes
from edgezoo.tasks.base import DemoDefaults, Reduce, Task, no_reduce
from edgezoo.tidl.options import POST_PROC_DETECTION

DETECTION = "detection"
EXAMPLE_SCENES = 4
COMPOSITE_CANVAS = 128


class DetectionMeter:
    """Loss and COCO mAP: keeps each image's detections and objects, evaluates them at the end
    (gathered from every process under torch.distributed)."""

    def __init__(self, meta: MetaArch, num_classes: int) -> None:
        self.meta = meta
        self.num_classes = num_classes
        self.detections: list[Detections] = []
        self.objects: list[tuple[Tensor, Tensor]] = []
        self.loss_sum = [0.0, 0]

    @torch.no_grad()
    def update(self, outputs: Mapping[str, Tensor], targets: Tensor, loss: Tensor) -> None:
        found = self.meta.decode({name: t.detach() for name, t in outputs.items()})
        self.detections.extend(
            Detections(d.boxes.cpu(), d.scores.cpu(), d.labels.cpu()) for d in found
        )
        self.objects.extend((labels.cpu(), boxes.cpu()) for labels, boxes in objects_of(targets))
        self.loss_sum[0] += float(loss) * len(targets)
        self.loss_sum[1] += len(targets)

    def compute(self, reduce: Reduce = no_reduce) -> dict[str, float]:
        """{"loss", "map", "map50", "ap_class_<c>"...}; `reduce` is not used (detections are
        gathered, not summed)."""
        detections, objects, loss_sum = self.detections, self.objects, [self.loss_sum]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, (detections, objects, self.loss_sum))
            detections = [d for part in parts for d in part[0]]
            objects = [o for part in parts for o in part[1]]
            loss_sum = [part[2] for part in parts]
        total, count = sum(s for s, _ in loss_sum), sum(n for _, n in loss_sum)
        return {"loss": total / max(count, 1), **coco_map(detections, objects, self.num_classes)}


class Detection(Task):
    """Dict of raw head outputs; (N, M, 5) padded targets [class, x1, y1, x2, y2] (relative);
    TIDL's detection post-processing from the meta-architecture prototxt."""

    name = DETECTION
    primary_metric = "map"
    metric_label = "mAP@[.5:.95] (%)"
    output_rank = 0  # several rank-4 head outputs: recognised by the recorded meta-architecture
    tidl_post_proc_type = POST_PROC_DETECTION
    composite_scenes = True
    builtin_input_size = COMPOSITE_CANVAS
    collate_fn = staticmethod(collate_detection)
    supports_distillation = False
    # Sized for the demo's five minutes on two cores: YOLOX-nano, which trains from scratch
    # (no weights to download) about twice as fast per step as SSDLite.
    demo = DemoDefaults(
        model="yolox_nano_lite",
        data=COMPOSITE_DETECTION_NAME,
        full_data="fashion-mnist",
        input_size=COMPOSITE_CANVAS,
        batch_size=16,
        float_epochs=6,
        qat_epochs=1,
        calibration_batches=10,
        lr=3e-3,
        qat_lr=1e-4,
        scenes=(1500, 200),
    )

    def __init__(self, meta: MetaArch | None = None) -> None:
        self.meta = meta

    def bind(self, model: nn.Module) -> "Detection":
        return Detection(meta_arch_of(model))

    def bind_graph(self, proto: onnx.ModelProto) -> "Detection":
        meta = graph_meta_arch(proto)
        if meta is None:
            raise UsageError(
                f"the graph {proto.graph.name or ''} records no detection meta-architecture: "
                "evaluate a detector exported by edgezoo (export_onnx records what its heads mean)"
            )
        return Detection(meta)

    def _bound(self) -> MetaArch:
        if self.meta is None:
            raise UsageError(
                "the detection task needs the detector it measures: get_task('detection')"
                ".bind(model) (its prior boxes and decoding belong to the model)"
            )
        return self.meta

    def make_meter(
        self, num_classes: int, ignore_index: int | None, device: torch.device | str = "cpu"
    ) -> DetectionMeter:
        return DetectionMeter(self._bound(), num_classes)

    def outputs(self, output: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        return output

    def loss(
        self,
        outputs: Mapping[str, Tensor],
        targets: Tensor,
        ignore_index: int | None,
        label_smoothing: float,
    ) -> Tensor:
        """The meta-architecture's training loss (SSD: MultiBox)."""
        return self._bound().loss(outputs, targets)

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
        """COMPOSITE scenes of Fashion-MNIST items ('composite-detection', 'embedded',
        'fashion-mnist' or an idx folder), or COCO folders root/train and root/val."""
        name = os.fspath(data)
        if name == COMPOSITE_NAME:
            raise UsageError(
                "'composite' is the segmentation set; detection's is 'composite-detection'"
            )
        items = fashion_mnist_items("embedded" if name == COMPOSITE_DETECTION_NAME else name)
        if items is None:
            return _coco_data(name, input_size, mean, std, num_classes, augment)
        check_num_classes(num_classes, len(DETECTION_CLASSES), "the composite detection set")
        train_items = items[0]
        scenes = [
            CompositeFashionDetection(
                part, length=length, seed=composite_seed + offset, canvas_size=COMPOSITE_CANVAS,
                transform=DetectionTransform(input_size, mean, std, augment and offset == 0),
            )
            for offset, (part, length) in enumerate(zip(items, composite_scenes, strict=True))
        ]  # fmt: skip
        return TaskData(
            train=scenes[0],
            val=scenes[1],
            task=DETECTION,
            num_classes=len(DETECTION_CLASSES),
            classes=DETECTION_CLASSES,
            description=(
                f"COMPOSITE detection scenes ({COMPOSITE_CANVAS}x{COMPOSITE_CANVAS}, 1-6 items) "
                f"built from {train_items.source} items: {len(scenes[0])} train / "
                f"{len(scenes[1])} val scenes"
            ),
        )

    def example_picture(
        self,
        model: nn.Module,
        dataset: Any,
        classes: Sequence[str],
        normalisation: tuple[Sequence[float], Sequence[float]],
        path: "os.PathLike[str]",
    ) -> bool:
        """The first EXAMPLE_SCENES scenes with the model's boxes."""
        images = torch.stack([dataset[i][0] for i in range(min(EXAMPLE_SCENES, len(dataset)))])
        device = next(model.parameters()).device
        with torch.no_grad(), kept_modes(model):
            model.eval()
            found = meta_arch_of(model).decode(model(images.to(device)))
        found = [Detections(d.boxes.cpu(), d.scores.cpu(), d.labels.cpu()) for d in found]
        draw_detections(images, found, classes, *normalisation, Path(path))
        return True

    def model_config_postprocess(self, argmax: bool) -> dict[str, object]:
        # edgeai-benchmark's reading of an mmdet-style SSD's TIDL output (boxes in pixels).
        return {"formatter": "DetectionBoxSL2BoxLS", "normalized_detections": False}


def _coco_data(
    root: str,
    input_size: Size,
    mean: Sequence[float],
    std: Sequence[float],
    num_classes: int | None,
    augment: bool,
) -> TaskData:
    """Users' COCO folders root/train and root/val (images/ + annotations.json each)."""
    splits = split_folders(root)
    train = CocoDetectionFolder(splits["train"], DetectionTransform(input_size, mean, std, augment))
    val = CocoDetectionFolder(
        splits["val"], DetectionTransform(input_size, mean, std), categories=train.categories
    )
    check_num_classes(num_classes, len(train.classes), f"the COCO folders {root}")
    return TaskData(
        train=train,
        val=val,
        task=DETECTION,
        num_classes=len(train.classes),
        classes=train.classes,
        description=f"COCO detection folders {root}: {len(train)} train / {len(val)} val images",
    )
