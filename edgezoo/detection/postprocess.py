"""What TIDL's detection output layer does after the heads (and edgezoo does on the host):
scores above a threshold, the best `top_k` per class, per-class NMS, the best `keep_top_k`."""

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from edgezoo.errors import UsageError


@dataclass(frozen=True)
class DetectionOutputSettings:
    """The detection output parameters the prototxt gives TIDL and the host decoding uses.

    confidence_threshold 0.05 keeps the low-scoring boxes mean average precision counts (TI's
    exporters write 0.3 for deployment; set it here or override it in TIDL's options).
    """

    nms_threshold: float = 0.45
    top_k: int = 200
    keep_top_k: int = 200
    confidence_threshold: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 < self.nms_threshold <= 1.0 or not 0.0 <= self.confidence_threshold < 1.0:
            raise UsageError(
                f"nms_threshold {self.nms_threshold} must be in (0, 1] and confidence_threshold "
                f"{self.confidence_threshold} in [0, 1)"
            )
        if self.top_k < 1 or self.keep_top_k < 1:
            raise UsageError(f"top_k {self.top_k} and keep_top_k {self.keep_top_k} must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Detections:
    """One image's detections: boxes (K, 4) relative xyxy, scores (K,), labels (K,) int64."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor


def select_detections(
    boxes: Tensor, scores: Tensor, settings: DetectionOutputSettings
) -> Detections:
    """boxes (A, 4) and per-class scores (A, C) of one image -> its final detections."""
    kept_boxes, kept_scores, kept_labels = [], [], []
    for label in range(scores.shape[1]):
        score = scores[:, label]
        candidates = torch.nonzero(score > settings.confidence_threshold).flatten()
        if candidates.numel() > settings.top_k:
            best = score[candidates].topk(settings.top_k).indices
            candidates = candidates[best]
        kept_boxes.append(boxes[candidates])
        kept_scores.append(score[candidates])
        kept_labels.append(torch.full_like(candidates, label))
    boxes, scores, labels = torch.cat(kept_boxes), torch.cat(kept_scores), torch.cat(kept_labels)
    keep = batched_nms(boxes, scores, labels, settings.nms_threshold)[: settings.keep_top_k]
    return Detections(boxes[keep], scores[keep], labels[keep])
