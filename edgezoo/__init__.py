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
    QuantizationModeError,
    RunExistsError,
    TIDLRuleError,
    UnknownModelError,
    WeightsError,
)
from edgezoo.export import ExportReport, GraphViolation, VerifyReport, export_onnx, verify_onnx
from edgezoo.quantization import (
    QATSchedule,
    QuantCalibrateModule,
    QuantTestModule,
    QuantTrainModule,
    clip_only,
    convert_to_deploy,
    freeze_bn,
    freeze_quant_range,
    layer_report,
    unfreeze_bn,
    unfreeze_quant_range,
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
    "ExportReport",
    "ExportVerificationError",
    "GraphViolation",
    "HashMismatchError",
    "InputShapeError",
    "LoadReport",
    "ModuleOnlyViolationError",
    "QATSchedule",
    "QuantCalibrateModule",
    "QuantTestModule",
    "QuantTrainModule",
    "QuantizationModeError",
    "RunExistsError",
    "TIDLRuleError",
    "UnknownModelError",
    "VerifyReport",
    "Violation",
    "WeightsError",
    "__version__",
    "check_model",
    "clip_only",
    "convert_to_deploy",
    "export_onnx",
    "freeze_bn",
    "freeze_quant_range",
    "get_model",
    "layer_report",
    "list_models",
    "load_weights",
    "model_info",
    "unfreeze_bn",
    "unfreeze_quant_range",
    "verify_onnx",
]
