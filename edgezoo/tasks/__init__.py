"""Tasks as objects: each owns its loss, metrics, data, exported outputs, TIDL settings and how
results are shown; everything else asks `get_task(name)`. A new task is a module here that
subclasses Task and registers an instance."""

from edgezoo.tasks.base import DemoDefaults, Meter, Task, no_reduce
from edgezoo.tasks.classification import CLASSIFICATION, Classification, ClassificationMeter
from edgezoo.tasks.data import build_task_data
from edgezoo.tasks.detection import DETECTION, Detection, DetectionMeter
from edgezoo.tasks.registry import get_task, register_task, task_names, task_of_graph
from edgezoo.tasks.segmentation import SEGMENTATION, Segmentation, SegmentationMeter

register_task(Classification())
register_task(Segmentation())
register_task(Detection())

__all__ = [
    "CLASSIFICATION",
    "DETECTION",
    "SEGMENTATION",
    "Classification",
    "ClassificationMeter",
    "DemoDefaults",
    "Detection",
    "DetectionMeter",
    "Meter",
    "Segmentation",
    "SegmentationMeter",
    "Task",
    "build_task_data",
    "get_task",
    "no_reduce",
    "register_task",
    "task_names",
    "task_of_graph",
]
