"""edgezoo: QAT-ready ResNet, MobileNetV2 and DeepLabV3+ models for TI TIDL, with ONNX export."""

from edgezoo.check import CheckReport, Violation, check_model
from edgezoo.conversion import ConversionReport, make_module_only
from edgezoo.distillation import DistillationLoss
from edgezoo.errors import EdgezooError, UsageError
from edgezoo.export import ExportReport, GraphViolation, VerifyReport, export_onnx, verify_onnx
from edgezoo.quantization import (
    LayerRule,
    QATSchedule,
    QuantCalibrateModule,
    QuantizationConfig,
    QuantTestModule,
    QuantTrainModule,
    clip_only,
    convert_to_deploy,
    freeze_bn,
    freeze_quant_range,
    layer_report,
    select_16bit_layers,
    wrap_model,
)
from edgezoo.registry import get_model, list_models, model_info
from edgezoo.simulation import simulate_tidl
from edgezoo.version import __version__
from edgezoo.weights import LoadReport, load_weights

__all__ = [
    "CheckReport",
    "ConversionReport",
    "DistillationLoss",
    "EdgezooError",
    "ExportReport",
    "GraphViolation",
    "LayerRule",
    "LoadReport",
    "QATSchedule",
    "QuantCalibrateModule",
    "QuantTestModule",
    "QuantTrainModule",
    "QuantizationConfig",
    "UsageError",
    "VerifyReport",
    "Violation",
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
    "make_module_only",
    "model_info",
    "select_16bit_layers",
    "simulate_tidl",
    "verify_onnx",
    "wrap_model",
]
