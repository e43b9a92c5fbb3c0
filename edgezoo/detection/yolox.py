"""YOLOX as TIDL runs it (meta_arch_type 6, written as `tidl_yolo` with CODE_TYPE_YOLO_X):
per level one (N, 4 + 1 + C, H, W) map of box, objectness and class values; anchor-free
decoding (centre (t + cell) x stride, size exp(t) x stride: one "anchor" per level whose width
and height are the stride); score = sigmoid(objectness) x sigmoid(class); TIDL's detection
output (edgezoo.detection.postprocess).

The training loss is YOLOX's: SimOTA assignment (candidates inside a box or within 2.5 cells
of its centre, cost = class BCE + 3 x -log IoU, a dynamic k per object from its best IoUs),
then 5 x (1 - IoU^2) on assigned boxes, BCE on objectness everywhere and on IoU-weighted
classes where assigned, over the number of assigned points. Boxes and IoUs are in units of the
image (relative), so the input size never enters.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert, box_iou

from edgezoo.detection.postprocess import DetectionOutputSettings, Detections, select_detections
from edgezoo.detection.prototxt import Symbol
from edgezoo.detection.targets import objects_of

YOLO_META_ARCH_TYPE = 6
"""TIDL's object_detection:meta_arch_type for YOLOX / YOLOv5 / YOLOv7."""

CENTER_RADIUS = 2.5
IOU_COST = 3.0
BOX_WEIGHT = 5.0
TOP_IOUS = 10


@dataclass(frozen=True)
class YOLOXMetaArch:
    """What a YOLOX's head outputs mean: their names (one per stride), classes, decoding."""

    kind: ClassVar[str] = "yolox"
    meta_arch_type: ClassVar[int] = YOLO_META_ARCH_TYPE
    num_classes: int
    strides: tuple[int, ...]
    head_outputs: tuple[str, ...]
    output: DetectionOutputSettings = field(default_factory=DetectionOutputSettings)

    def grid_sizes(self, outputs: Mapping[str, Tensor]) -> list[tuple[int, int]]:
        return [tuple(outputs[name].shape[-2:]) for name in self.head_outputs]

    def flatten(self, outputs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(N, P, 5 + C) raw values and (P, 4) cells [column, row, 1 / W, 1 / H] of every point,
        level by level, row by row."""
        values, cells = [], []
        for name in self.head_outputs:
            x = outputs[name]
            n, c, h, w = x.shape
            values.append(x.permute(0, 2, 3, 1).reshape(n, h * w, c))
            rows, cols = torch.meshgrid(
                torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij"
            )
            size = torch.tensor([1.0 / w, 1.0 / h], device=x.device).expand(h * w, 2)
            cells.append(torch.cat([torch.stack([cols, rows], -1).reshape(-1, 2).float(), size], 1))
        return torch.cat(values, 1), torch.cat(cells, 0)

    @staticmethod
    def decoded_boxes(values: Tensor, cells: Tensor) -> Tensor:
        """Relative xyxy boxes: centre (t + cell) / cells, size exp(t) / cells."""
        centre = (values[..., :2] + cells[:, :2]) * cells[:, 2:]
        size = values[..., 2:4].exp() * cells[:, 2:]
        return box_convert(torch.cat([centre, size], -1), "cxcywh", "xyxy")

    def decode(self, outputs: Mapping[str, Tensor]) -> list[Detections]:
        """Each image's detections, as TIDL's detection output computes them."""
        values, cells = self.flatten(outputs)
        values = values.float()
        boxes = self.decoded_boxes(values, cells)
        scores = values[..., 4:5].sigmoid() * values[..., 5:].sigmoid()
        return [select_detections(boxes[i], scores[i], self.output) for i in range(len(values))]

    def loss(self, outputs: Mapping[str, Tensor], targets: Tensor) -> Tensor:
        """YOLOX's loss with SimOTA assignment, over the number of assigned points."""
        values, cells = self.flatten(outputs)
        boxes = self.decoded_boxes(values, cells)
        objectness = torch.zeros_like(values[..., 4])
        box_loss = class_loss = values.new_zeros(())
        assigned = 0
        for i, (labels, truth) in enumerate(objects_of(targets)):
            if len(labels) == 0:
                continue
            points, owners, ious = _simota(
                values[i].detach(), boxes[i].detach(), cells, labels, truth
            )
            objectness[i, points] = 1.0
            iou = torch.diag(box_iou(boxes[i, points], truth[owners]))
            box_loss = box_loss + (1.0 - iou.square()).sum()
            wanted = F.one_hot(labels[owners], self.num_classes).float() * ious[:, None]
            class_loss = class_loss + F.binary_cross_entropy_with_logits(
                values[i, points, 5:], wanted, reduction="sum"
            )
            assigned += len(points)
        object_loss = F.binary_cross_entropy_with_logits(
            values[..., 4], objectness, reduction="sum"
        )
        return (BOX_WEIGHT * box_loss + object_loss + class_loss) / max(1, assigned)

    def meta_arch(
        self, in_size: tuple[int, int], grid_sizes: Sequence[tuple[int, int]]
    ) -> dict[str, Any]:
        """The `tidl_yolo` message TIDL reads: one yolo_param per level, anchor = stride."""
        height, width = in_size
        return {
            "name": "yolox",
            "tidl_yolo": {
                "yolo_param": [
                    {"input": name, "anchor_width": [width / w], "anchor_height": [height / h]}
                    for name, (h, w) in zip(self.head_outputs, grid_sizes, strict=True)
                ],
                "detection_output_param": {
                    "num_classes": self.num_classes,
                    "share_location": True,
                    "background_label_id": -1,
                    "nms_param": {
                        "nms_threshold": self.output.nms_threshold,
                        "top_k": self.output.top_k,
                    },
                    "code_type": Symbol("CODE_TYPE_YOLO_X"),
                    "keep_top_k": self.output.keep_top_k,
                    "confidence_threshold": self.output.confidence_threshold,
                },
                "name": "yolox",
                "in_width": width,
                "in_height": height,
                "output": ["dets", "labels"],
                "framework": "edgezoo",
            },
        }

    def head_channels(self) -> dict[str, int]:
        """Each head output's channels: box (4) + objectness (1) + classes."""
        return {name: 5 + self.num_classes for name in self.head_outputs}

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "num_classes": self.num_classes,
            "strides": list(self.strides),
            "head_outputs": list(self.head_outputs),
            "output": self.output.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "YOLOXMetaArch":
        return cls(
            int(data["num_classes"]),
            tuple(int(s) for s in data["strides"]),
            tuple(data["head_outputs"]),
            DetectionOutputSettings(**data["output"]),
        )


def _simota(
    values: Tensor, boxes: Tensor, cells: Tensor, labels: Tensor, truth: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """(assigned points, the object each is assigned to, its IoU) of one image."""
    centres = (cells[:, :2] + 0.5) * cells[:, 2:]
    inside_box = _inside(centres, truth)
    middle = (truth[:, :2] + truth[:, 2:]) / 2
    radius = CENTER_RADIUS * cells[:, 2:]
    near_centre = ((centres[None] - middle[:, None]).abs() < radius[None]).all(-1)
    candidate = (inside_box | near_centre).any(0)
    if not candidate.any():
        candidate = torch.ones_like(candidate)
    index = torch.nonzero(candidate).flatten()
    ious = box_iou(truth, boxes[index])
    probability = (values[index, 5:].sigmoid() * values[index, 4:5].sigmoid()).sqrt()
    wanted = F.one_hot(labels, probability.shape[1]).float()
    class_cost = F.binary_cross_entropy(
        probability[None].expand(len(labels), -1, -1).clamp(1e-6, 1 - 1e-6),
        wanted[:, None].expand(-1, len(index), -1),
        reduction="none",
    ).sum(-1)
    both = inside_box[:, index] & near_centre[:, index]
    cost = class_cost + IOU_COST * -torch.log(ious + 1e-8) + 1e5 * (~both)
    return _dynamic_k(cost, ious, index)


def _inside(points: Tensor, boxes: Tensor) -> Tensor:
    """(objects, points): whether each point lies inside each box."""
    x, y = points[None, :, 0], points[None, :, 1]
    return (
        (x > boxes[:, None, 0])
        & (x < boxes[:, None, 2])
        & (y > boxes[:, None, 1])
        & (y < boxes[:, None, 3])
    )


def _dynamic_k(cost: Tensor, ious: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each object takes its k cheapest points (k from its best IoUs); a point claimed twice
    goes to the cheaper object."""
    matching = torch.zeros_like(cost, dtype=torch.bool)
    top = ious.topk(min(TOP_IOUS, ious.shape[1]), dim=1).values
    ks = top.sum(1).int().clamp(min=1)
    for obj, k in enumerate(ks.tolist()):
        matching[obj, cost[obj].topk(min(k, cost.shape[1]), largest=False).indices] = True
    shared = matching.sum(0) > 1
    if shared.any():
        cheapest = cost[:, shared].argmin(0)
        matching[:, shared] = False
        matching[cheapest, torch.nonzero(shared).flatten()] = True
    owned = matching.any(0)
    owners = matching[:, owned].float().argmax(0)
    return index[owned], owners, ious[owners, torch.nonzero(owned).flatten()]
