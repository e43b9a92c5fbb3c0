"""Export for TI TIDL: verified ONNX Clip graphs, TIDL's import rules, and its config files."""

from edgezoo.export.onnx_export import export_onnx
from edgezoo.export.report import ExportReport, GraphViolation, VerifyReport
from edgezoo.export.session import onnxruntime_session
from edgezoo.export.tidl_config import TIDLInputSpec, write_tidl_configs
from edgezoo.export.verify import verify_onnx
from edgezoo.export.weight_grid import align_to_tidl_grid, tidl_requantize
from edgezoo.tidl.rules import TIDL_SUPPORTED_OPS

__all__ = [
    "TIDL_SUPPORTED_OPS",
    "ExportReport",
    "GraphViolation",
    "TIDLInputSpec",
    "VerifyReport",
    "align_to_tidl_grid",
    "export_onnx",
    "onnxruntime_session",
    "tidl_requantize",
    "verify_onnx",
    "write_tidl_configs",
]
