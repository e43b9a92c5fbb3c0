"""Mean average precision with the field's evaluator: pycocotools' COCOeval on boxes in memory.

mAP@[.5:.95] (COCO's primary metric), mAP@.5 and per-class AP, in percent, over all object
sizes with up to 100 detections per image.
"""

import contextlib
import io
from collections.abc import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from edgezoo.detection.postprocess import Detections

_ALL_AREAS, _MAX_DETECTIONS = 0, 2  # COCOeval's indices of area "all" and maxDets 100


def coco_map(
    detections: Sequence[Detections],
    objects: Sequence[tuple[Tensor, Tensor]],
    num_classes: int,
    image_size: float = 1.0,
    per_class: bool = False,
) -> dict[str, float]:
    """{"map", "map50"} (with per_class, also "ap_class_<c>" each) of each image's detections
    against its (labels, relative boxes); image_size scales relative boxes to pixels (AP does
    not depend on it)."""
    truth = _coco_ground_truth(objects, num_classes, image_size)
    results = [
        {
            "image_id": i,
            "category_id": int(label),
            "bbox": _xywh(box, image_size),
            "score": float(score),
        }
        for i, found in enumerate(detections)
        for box, score, label in zip(found.boxes, found.scores, found.labels, strict=True)
    ]
    classes = range(num_classes if per_class else 0)
    if not results or not truth.dataset["annotations"]:
        return {"map": 0.0, "map50": 0.0} | {f"ap_class_{c}": 0.0 for c in classes}
    with contextlib.redirect_stdout(io.StringIO()):  # COCO's tools print their progress
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    precision = evaluation.eval["precision"][:, :, :, _ALL_AREAS, _MAX_DETECTIONS]
    return {
        "map": 100.0 * float(evaluation.stats[0]),
        "map50": 100.0 * float(evaluation.stats[1]),
        **{f"ap_class_{c}": _mean(precision[:, :, c]) for c in classes},
    }


def _coco_ground_truth(
    objects: Sequence[tuple[Tensor, Tensor]], num_classes: int, image_size: float
) -> COCO:
    annotations = []
    for i, (labels, boxes) in enumerate(objects):
        for label, box in zip(labels, boxes, strict=True):
            x, y, w, h = _xywh(box, image_size)
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i, "category_id": int(label),
                 "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
            )  # fmt: skip
    truth = COCO()
    truth.dataset = {
        "images": [{"id": i} for i in range(len(objects))],
        "annotations": annotations,
        "categories": [{"id": c} for c in range(num_classes)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        truth.createIndex()
    return truth


def _xywh(box: Tensor, scale: float) -> list[float]:
    x1, y1, x2, y2 = (float(v) * scale for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def _mean(precision: np.ndarray) -> float:
    """AP in percent of one class (-1 marks classes without objects: 0)."""
    valid = precision[precision > -1]
    return 100.0 * float(valid.mean()) if valid.size else 0.0
