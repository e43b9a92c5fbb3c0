"""edgezoo: QAT-ready ResNet, MobileNetV2 and DeepLabV3+ models for TI TIDL, with ONNX export."""

from edgezoo.errors import (
    CheckpointMismatchError,
    DataError,
    DownloadError,
    EdgezooError,
    ExportVerificationError,
    HashMismatchError,
    ModuleOnlyViolationError,
    TIDLRuleError,
    UnknownModelError,
    WeightsError,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointMismatchError",
    "DataError",
    "DownloadError",
    "EdgezooError",
    "ExportVerificationError",
    "HashMismatchError",
    "ModuleOnlyViolationError",
    "TIDLRuleError",
    "UnknownModelError",
    "WeightsError",
    "__version__",
]
