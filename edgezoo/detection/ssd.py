"""SSD as TIDL runs it (meta_arch_type 3, written as `caffe_ssd`): per level a box head
(priors x 4 channels) and a class head (priors x (classes + 1)), background last; CENTER_SIZE
box coding; softmax scores; TIDL's detection output (edgezoo.detection.postprocess).

The training loss is SSD's MultiBox loss: anchors matched to objects with torchvision's
SSDMatcher (IoU 0.5, each object's best anchor kept), boxes encoded with torchvision's
BoxCoder, smooth L1 on matched anchors, cross entropy with 3:1 hard negative mining.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder, SSDMatcher
from torchvision.ops import box_iou

from edgezoo.detection.postprocess import DetectionOutputSettings, Detections, select_detections
from edgezoo.detection.prototxt import Symbol
from edgezoo.detection.ssd_boxes import SSD_VARIANCES, GridSize, SSDBoxes
from edgezoo.detection.targets import objects_of

SSD_META_ARCH_TYPE = 3
"""TIDL's object_detection:meta_arch_type for ONNX SSD."""

NEGATIVES_PER_POSITIVE = 3
MATCH_IOU = 0.5


@dataclass(frozen=True)
class SSDMetaArch:
    """What an SSD's heads mean: output names per level, classes, prior boxes, decoding."""

    kind: ClassVar[str] = "ssd"
    meta_arch_type: ClassVar[int] = SSD_META_ARCH_TYPE
    num_classes: int
    boxes: SSDBoxes
    box_outputs: tuple[str, ...]
    class_outputs: tuple[str, ...]
    output: DetectionOutputSettings = field(default_factory=DetectionOutputSettings)

    @property
    def background(self) -> int:
        """The background class index (last, as TI's exporters write it)."""
        return self.num_classes

    @property
    def head_outputs(self) -> tuple[str, ...]:
        return (*self.box_outputs, *self.class_outputs)

    def grid_sizes(self, outputs: Mapping[str, Tensor]) -> list[GridSize]:
        return [tuple(outputs[name].shape[-2:]) for name in self.box_outputs]

    def flatten(self, outputs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(N, A, 4) box codes and (N, A, classes + 1) class logits, in the anchors' order."""
        return (
            _per_anchor([outputs[name] for name in self.box_outputs], 4),
            _per_anchor([outputs[name] for name in self.class_outputs], self.num_classes + 1),
        )

    def anchors(self, outputs: Mapping[str, Tensor]) -> Tensor:
        return self.boxes.anchors(self.grid_sizes(outputs)).to(outputs[self.box_outputs[0]])

    def loss(self, outputs: Mapping[str, Tensor], targets: Tensor) -> Tensor:
        """MultiBox loss: (smooth L1 + mined cross entropy) / matched anchors."""
        codes, logits = self.flatten(outputs)
        anchors = self.anchors(outputs)
        matched = [_match(anchors, boxes) for _, boxes in objects_of(targets)]
        box_loss, classes = codes.new_zeros(()), []
        for i, ((labels, boxes), index) in enumerate(
            zip(objects_of(targets), matched, strict=True)
        ):
            found = index >= 0
            wanted = _coder().encode_single(boxes[index[found]], anchors[found])
            box_loss = box_loss + F.smooth_l1_loss(codes[i, found], wanted, reduction="sum")
            target = torch.full_like(index, self.background)
            target[found] = labels[index[found]]
            classes.append(target)
        classes = torch.stack(classes)
        positive = classes != self.background
        per_anchor = F.cross_entropy(logits.flatten(0, 1), classes.flatten(), reduction="none")
        per_anchor = per_anchor.view_as(classes)
        mined = _hard_negatives(per_anchor, positive)
        class_loss = per_anchor[positive].sum() + per_anchor[mined].sum()
        return (box_loss + class_loss) / max(1, int(positive.sum()))

    def decode(self, outputs: Mapping[str, Tensor]) -> list[Detections]:
        """Each image's detections, as TIDL's detection output computes them."""
        codes, logits = self.flatten(outputs)
        anchors = self.anchors(outputs)
        scores = logits.float().softmax(-1)
        keep = [c for c in range(self.num_classes + 1) if c != self.background]
        return [
            select_detections(
                _coder().decode_single(codes[i].float(), anchors.float()),
                scores[i][:, keep],
                self.output,
            )
            for i in range(codes.shape[0])
        ]

    def meta_arch(self, in_size: GridSize, grid_sizes: Sequence[GridSize]) -> dict[str, Any]:
        """The `caffe_ssd` message TIDL reads (prior boxes in pixels for an (H, W) input)."""
        return {
            "name": "ssd",
            "caffe_ssd": {
                "box_input": list(self.box_outputs),
                "class_input": list(self.class_outputs),
                "output": ["boxes", "labels"],
                "in_width": in_size[1],
                "in_height": in_size[0],
                "prior_box_param": self.boxes.prior_box_params(in_size, grid_sizes),
                "detection_output_param": {
                    "num_classes": self.num_classes + 1,
                    "share_location": True,
                    "background_label_id": self.background,
                    "nms_param": {
                        "nms_threshold": self.output.nms_threshold,
                        "top_k": self.output.top_k,
                    },
                    "code_type": Symbol("CENTER_SIZE"),
                    "keep_top_k": self.output.keep_top_k,
                    "confidence_threshold": self.output.confidence_threshold,
                },
                "framework": "edgezoo",
            },
        }

    def head_channels(self) -> dict[str, int]:
        """Each head output's channel count: priors x 4 or priors x (classes + 1)."""
        priors = self.boxes.priors_per_level
        channels = {name: p * 4 for name, p in zip(self.box_outputs, priors, strict=True)}
        classes = self.num_classes + 1
        channels.update((n, p * classes) for n, p in zip(self.class_outputs, priors, strict=True))
        return channels

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "num_classes": self.num_classes,
            "boxes": self.boxes.to_dict(),
            "box_outputs": list(self.box_outputs),
            "class_outputs": list(self.class_outputs),
            "output": self.output.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SSDMetaArch":
        return cls(
            int(data["num_classes"]),
            SSDBoxes.from_dict(data["boxes"]),
            tuple(data["box_outputs"]),
            tuple(data["class_outputs"]),
            DetectionOutputSettings(**data["output"]),
        )


def _coder() -> BoxCoder:
    """CENTER_SIZE coding without torchvision's clamp of the size codes (TIDL has none)."""
    return BoxCoder(tuple(1.0 / v for v in SSD_VARIANCES), bbox_xform_clip=math.inf)


def _per_anchor(maps: Sequence[Tensor], values: int) -> Tensor:
    """(N, priors * values, H, W) maps -> (N, levels * H * W * priors, values)."""
    flat = []
    for x in maps:
        n, _, h, w = x.shape
        flat.append(x.view(n, -1, values, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, values))
    return torch.cat(flat, dim=1)


def _match(anchors: Tensor, boxes: Tensor) -> Tensor:
    """Per anchor the index of its object, or -1 (background)."""
    if boxes.numel() == 0:
        return torch.full((anchors.shape[0],), -1, dtype=torch.long, device=anchors.device)
    return SSDMatcher(MATCH_IOU)(box_iou(boxes, anchors))


def _hard_negatives(per_anchor: Tensor, positive: Tensor) -> Tensor:
    """The background anchors with the highest loss, three per positive in each image."""
    wanted = NEGATIVES_PER_POSITIVE * positive.sum(1, keepdim=True)
    negative = per_anchor.detach().masked_fill(positive, -math.inf)
    order = negative.argsort(1, descending=True)
    rank = order.argsort(1)
    return rank < wanted
