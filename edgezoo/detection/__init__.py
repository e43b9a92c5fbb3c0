"""Object detection: the target format, TIDL's meta-architectures (SSD), their prior boxes,
losses and host decoding, the prototxt TIDL reads, and COCO mean average precision."""

from edgezoo.detection.coco_map import coco_map
from edgezoo.detection.meta_arch import (
    META_ARCH_PROP,
    META_ARCHS,
    MetaArch,
    find_meta_arch,
    graph_meta_arch,
    meta_arch_from_json,
    meta_arch_of,
    meta_arch_to_json,
)
from edgezoo.detection.postprocess import DetectionOutputSettings, Detections, select_detections
from edgezoo.detection.prototxt import Symbol, parse_prototxt, to_prototxt
from edgezoo.detection.ssd import SSD_META_ARCH_TYPE, SSDMetaArch
from edgezoo.detection.ssd_boxes import (
    SSD_VARIANCES,
    SSDBoxes,
    caffe_prior_boxes,
    caffe_prior_sides,
)
from edgezoo.detection.targets import PADDING_CLASS, collate_detection, objects_of
from edgezoo.detection.yolox import YOLO_META_ARCH_TYPE, YOLOXMetaArch

__all__ = [
    "META_ARCHS",
    "META_ARCH_PROP",
    "PADDING_CLASS",
    "SSD_META_ARCH_TYPE",
    "SSD_VARIANCES",
    "YOLO_META_ARCH_TYPE",
    "DetectionOutputSettings",
    "Detections",
    "MetaArch",
    "SSDBoxes",
    "SSDMetaArch",
    "Symbol",
    "YOLOXMetaArch",
    "caffe_prior_boxes",
    "caffe_prior_sides",
    "coco_map",
    "collate_detection",
    "find_meta_arch",
    "graph_meta_arch",
    "meta_arch_from_json",
    "meta_arch_of",
    "meta_arch_to_json",
    "objects_of",
    "parse_prototxt",
    "select_detections",
    "to_prototxt",
]
