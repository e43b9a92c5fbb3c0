"""Power-of-two quantization for TIDL: QAT, PTQ calibration, evaluation and deploy conversion.

q = QuantTrainModule(model, torch.rand(1, 3, 224, 224), total_epochs=10)
for epoch in range(10):
    q.start_epoch(epoch)      # freezes BN, then ranges, at TI's epochs
    q.train(); ...            # usual training loop on q
    q.eval(); ...             # validation; the next q.train() resumes range learning
torch.save(q.module.state_dict(), "qat.pth")   # original keys + range buffers
deploy = convert_to_deploy(q)                  # float model with Clip ranges, for ONNX
"""

from edgezoo.quantization.clip import Clip
from edgezoo.quantization.deploy import convert_to_deploy
from edgezoo.quantization.fake_quant import (
    ceil2,
    fake_quantize_activation,
    fake_quantize_bias,
    fake_quantize_weight,
    weight_scale,
)
from edgezoo.quantization.freeze import (
    QATSchedule,
    clip_only,
    freeze_bn,
    freeze_quant_range,
    unfreeze_bn,
    unfreeze_quant_range,
)
from edgezoo.quantization.insertion import QuantizationConfig, activation_ranges, is_quantized
from edgezoo.quantization.pact2 import PACT2
from edgezoo.quantization.quant_norm import QuantBatchNorm1d, QuantBatchNorm2d, QuantBatchNorm3d
from edgezoo.quantization.quant_weight import QuantConv2d, QuantLinear
from edgezoo.quantization.quantized_layer import QuantizedLayer
from edgezoo.quantization.report import LayerReport, LayerStats, layer_report
from edgezoo.quantization.wrappers import (
    QuantCalibrateModule,
    QuantTestModule,
    QuantTrainModule,
    wrap_model,
)

__all__ = [
    "PACT2",
    "Clip",
    "LayerReport",
    "LayerStats",
    "QATSchedule",
    "QuantBatchNorm1d",
    "QuantBatchNorm2d",
    "QuantBatchNorm3d",
    "QuantCalibrateModule",
    "QuantConv2d",
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
    "is_quantized",
    "layer_report",
    "unfreeze_bn",
    "unfreeze_quant_range",
    "weight_scale",
    "wrap_model",
]
