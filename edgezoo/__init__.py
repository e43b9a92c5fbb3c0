"""edgezoo: QAT-ready ResNet, MobileNetV2 and DeepLabV3+ models for TI TIDL, with ONNX export."""

from edgezoo.check import CheckReport, Violation, check_model
from edgezoo.errors import (
    CheckpointMismatchError,
    DataError,
    DownloadError,
    EdgezooError,
    ExportVerificationError,
    HashMismatchError,
    InputShapeError,
    ModuleOnlyViolationError,
    TIDLRuleError,
    UnknownModelError,
    WeightsError,
)
from edgezoo.registry import get_model, list_models, model_info
from edgezoo.weights import LoadReport, load_weights

__version__ = "0.1.0"

__all__ = [
    "CheckReport",
    "CheckpointMismatchError",
    "DataError",
    "DownloadError",
    "EdgezooError",
    "ExportVerificationError",
    "HashMismatchError",
    "InputShapeError",
    "LoadReport",
    "ModuleOnlyViolationError",
    "TIDLRuleError",
    "UnknownModelError",
    "Violation",
    "WeightsError",
    "__version__",
    "check_model",
    "get_model",
    "list_models",
    "load_weights",
    "model_info",
]
