"""edgezoo: QAT-ready ResNet, MobileNetV2 and DeepLabV3+ models for TI TIDL, with ONNX export."""

import importlib
import warnings

from edgezoo.check import CheckReport, Violation, check_model
from edgezoo.conversion import ConversionReport, make_module_only
from edgezoo.distillation import DistillationLoss
from edgezoo.errors import EdgezooError, UsageError
from edgezoo.export import ExportReport, GraphViolation, VerifyReport, export_onnx, verify_onnx
from edgezoo.quantization import (
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
    "simulate_tidl",
    "verify_onnx",
    "wrap_model",
]


# Exceptions live in edgezoo.errors; the top level keeps the two a caller catches broadly. The
# others were importable from here in the previous release and still are, with a warning.
def __getattr__(name: str):
    errors = importlib.import_module("edgezoo.errors")
    if name in errors.__all__:
        warnings.warn(
            f"edgezoo.{name} moved to edgezoo.errors.{name}; import it from there",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(errors, name)
    if name in _DEPRECATED_FREEZE:
        quantization = importlib.import_module("edgezoo.quantization")
        return getattr(quantization, name)  # it warns when called
    raise AttributeError(f"module 'edgezoo' has no attribute {name!r}")


_DEPRECATED_FREEZE = ("unfreeze_bn", "unfreeze_quant_range")
