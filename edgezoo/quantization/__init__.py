"""Power-of-two quantization for TIDL: QAT, PTQ calibration, evaluation and deploy conversion.

q = QuantTrainModule(model, torch.rand(1, 3, 224, 224), total_epochs=10)
for epoch in range(10):
    q.start_epoch(epoch)      # freezes BN, then ranges, at TI's epochs
    q.train(); ...            # usual training loop on q
    q.eval(); ...             # validation; the next q.train() resumes range learning
torch.save(q.module.state_dict(), "qat.pth")   # original keys + range buffers
deploy = convert_to_deploy(q)                  # float model with Clip ranges, for ONNX

The layout follows the architecture: grid.py defines the power-of-two grid; pact2.py,
weight_layers.py, batch_norm.py and parameter_free.py are the quantized units, each owning what
it computes; planner.py decides where they go; wrappers.py, freeze.py, bias_calibration.py,
deploy.py and report.py are what a user calls.
"""

from edgezoo.quantization.batch_norm import (
    QuantBatchNorm1d,
    QuantBatchNorm2d,
    QuantBatchNorm3d,
    QuantFrozenBatchNorm2d,
)
from edgezoo.quantization.clip import Clip
from edgezoo.quantization.config import QuantizationConfig
from edgezoo.quantization.deploy import convert_to_deploy
from edgezoo.quantization.freeze import (
    QATSchedule,
    clip_only,
    freeze_bn,
    freeze_quant_range,
    write_back_quantized_weights,
)
from edgezoo.quantization.grid import (
    ceil2,
    fake_quantize_activation,
    fake_quantize_bias,
    fake_quantize_weight,
    weight_scale,
)
from edgezoo.quantization.layer_spec import LayerRule
from edgezoo.quantization.learned_range import learned_range_parameters
from edgezoo.quantization.modes import WRAPPER_MODES
from edgezoo.quantization.pact2 import PACT2
from edgezoo.quantization.parameter_free import QuantizedLayer
from edgezoo.quantization.quantized_model import (
    GraphQuantization,
    activation_ranges,
    graph_quantization,
    is_quantized,
    named_activation_ranges,
)
from edgezoo.quantization.report import LayerReport, LayerStats, layer_report
from edgezoo.quantization.selection import MixedPrecisionChoice, select_16bit_layers
from edgezoo.quantization.weight_layers import QuantConv2d, QuantLinear
from edgezoo.quantization.wrappers import (
    QUANT_WRAPPERS,
    QuantCalibrateModule,
    QuantTestModule,
    QuantTrainModule,
    wrap_model,
)

__all__ = [
    "PACT2",
    "QUANT_WRAPPERS",
    "WRAPPER_MODES",
    "Clip",
    "GraphQuantization",
    "LayerReport",
    "LayerRule",
    "LayerStats",
    "MixedPrecisionChoice",
    "QATSchedule",
    "QuantBatchNorm1d",
    "QuantBatchNorm2d",
    "QuantBatchNorm3d",
    "QuantCalibrateModule",
    "QuantConv2d",
    "QuantFrozenBatchNorm2d",
    "QuantLinear",
    "QuantTestModule",
    "QuantTrainModule",
    "QuantizationConfig",
    "QuantizedLayer",
    "activation_ranges",
    "ceil2",
    "clip_only",
    "convert_to_deploy",
    "fake_quantize_activation",
    "fake_quantize_bias",
    "fake_quantize_weight",
    "freeze_bn",
    "freeze_quant_range",
    "graph_quantization",
    "is_quantized",
    "layer_report",
    "learned_range_parameters",
    "named_activation_ranges",
    "select_16bit_layers",
    "weight_scale",
    "wrap_model",
    "write_back_quantized_weights",
]
