"""TIDL's import rules for ONNX graphs, in one place (edgeai-tidl-tools, release 11.0).

Sources: edgeai-tidl-tools docs/supported_ops_rts_versions.md and the facts gathered in the
project's REFERENCE.md (section 3). verify.py checks graphs against these tables and
onnx_export.py refuses requests outside them.

The module lint (edgezoo.check), the graph verifier and the simulator read these tables from
here, so they agree; this module imports nothing else of edgezoo's but its errors.
"""

import math

from edgezoo.errors import UnreadableModelError

# Rule ids, shared by the module lint (edgezoo.check) and the graph verifier (export/verify_*):
# one rule, one id, whichever of them reports it.
DEPTHWISE_RULE = "depthwise-conv"
CONCAT_RULE = "concat-axis"
RESIZE_RULE = "resize"
LINT_TIDL_RULES = frozenset({DEPTHWISE_RULE, CONCAT_RULE, RESIZE_RULE})
"""The TIDL rules the module lint checks before export (the others hold for any module-only
model quantization can wrap)."""

# Depthwise (kernel, stride) pairs TIDL runs (edgeai-tidl-tools supported ops, release 11.0).
TIDL_DEPTHWISE_KERNEL_STRIDE = frozenset({(3, 1), (3, 2), (5, 2), (7, 1), (7, 2)})

__all__ = [
    "ACTIVATION_BITS_PROP",
    "ACTIVATION_SCALES_PROP",
    "BIAS_RULE_PROP",
    "CONCAT_RULE",
    "CONSTANT_OPS",
    "DEPTHWISE_RULE",
    "EVAL_PRECISION_PROP",
    "EXPORT_OPSETS",
    "HALF_PIXEL_MODES",
    "INPUT_MEAN_PROP",
    "INPUT_STD_PROP",
    "LINT_TIDL_RULES",
    "MAX_STRIDE2_KERNEL",
    "PRECISION_CHANGING_OPS",
    "QDQ_AFTER_OPS",
    "QDQ_GRID_KEEPING_OPS",
    "QDQ_MIN_OPSET",
    "QDQ_WEIGHT_OPS",
    "QUANTIZED_WEIGHT_OPS",
    "RANGE_CONSUMERS",
    "RANGE_PRODUCERS",
    "RESIZE_COORDINATE_MODES",
    "RESIZE_MODES",
    "RESIZE_RULE",
    "RESIZE_TORCH_MODES",
    "ROUNDING_PROP",
    "TARGET_PROP",
    "TIDL_DEPTHWISE_KERNEL_STRIDE",
    "TIDL_OPSETS",
    "TIDL_SUPPORTED_OPS",
    "UNTRAINED_RANGES_PROP",
    "WEIGHT_BITS_PROP",
    "graph_bits",
    "graph_properties",
    "input_normalisation",
    "is_resize_scale",
]

TIDL_SUPPORTED_OPS: frozenset[str] = frozenset(
    {
        # Layers TIDL maps onto its own kernels.
        "Conv",
        "ConvTranspose",
        "BatchNormalization",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "Add",
        "Mul",
        "Gemm",
        "MatMul",
        "Softmax",
        "Concat",
        "Split",
        "Flatten",
        "ArgMax",
        "Reshape",
        "Transpose",
        "Resize",
        "DepthToSpace",
        "Pad",
        "Sigmoid",
        # Activations TIDL merges into the preceding layer; Clip carries a PACT2 range.
        "Relu",
        "PRelu",
        "LeakyRelu",
        "Clip",
        "Tanh",
        "HardSigmoid",
        "Elu",
        # Dropout is an inference no-op that TIDL's importer drops.
        "Dropout",
    }
)
"""ONNX operator types TIDL imports (TIDL-RT operator mapping plus its "compatible layers")."""

CONSTANT_OPS: frozenset[str] = frozenset({"Constant"})
"""Nodes that only hold data; the importer reads them as constants, not as layers."""

EXPORT_OPSETS: tuple[int, ...] = tuple(range(11, 18))
"""Opsets export_onnx writes, through torch's TorchScript exporter (dynamo=False)."""

TIDL_OPSETS: tuple[int, ...] = tuple(range(11, 19))
"""Opsets verify_onnx accepts: TIDL validates up to ONNX opset 18; 11 has Clip min/max inputs."""

MAX_STRIDE2_KERNEL = 7
"""TIDL does not run stride-2 convolutions with kernels larger than 7."""

RESIZE_MODES: frozenset[str] = frozenset({"nearest", "linear"})
RESIZE_TORCH_MODES: dict[str, str] = {"nearest": "nearest", "bilinear": "linear"}
"""PyTorch's interpolate modes TIDL runs, and the ONNX Resize mode each exports as."""
RESIZE_COORDINATE_MODES: frozenset[str] = frozenset(
    {"half_pixel", "pytorch_half_pixel", "asymmetric"}
)

RANGE_PRODUCERS: frozenset[str] = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "Gemm",
        "MatMul",
        "Add",
        "Mul",
        "Concat",
        "BatchNormalization",
        "Sigmoid",
        "HardSigmoid",
    }
)
"""Ops whose output range TIDL must know: a QAT graph clips each output before the next one."""

RANGE_CONSUMERS: frozenset[str] = RANGE_PRODUCERS
"""Ops at which an unclipped range has been used: reaching one before a Clip is a violation."""

PRECISION_CHANGING_OPS: frozenset[str] = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "Gemm",
        "MatMul",
        "BatchNormalization",
        "AveragePool",
        "GlobalAveragePool",
        "Add",
        "Mul",
        "Concat",
    }
)
"""Layers whose output TIDL may hold at another width than their inputs in a mixed-precision
graph (Conv, BN, non-max pools and eltwise layers in TIDL's docs; Concat requantizes each input
onto its output's scale, so edgezoo counts it too). Every other layer inherits its input's
width, so a Clip after one cannot change it."""

QUANTIZED_WEIGHT_OPS: frozenset[str] = frozenset({"Conv", "ConvTranspose", "Gemm"})
"""Ops whose weights TIDL re-quantizes per tensor with a power-of-two scale."""

QDQ_MIN_OPSET = 13
"""QDQ graphs need opset 13 (per-axis DequantizeLinear for per-channel weights)."""
QDQ_AFTER_OPS: frozenset[str] = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "Resize"})
"""Ops whose output keeps its input's grid and that TIDL's QDQ import needs a Q/DQ pair after."""
QDQ_GRID_KEEPING_OPS: frozenset[str] = QDQ_AFTER_OPS | {"Flatten", "Reshape"}
"""Ops whose output lies on their input's grid (Flatten and Reshape need no Q/DQ: TIDL passes
the zero point through)."""
QDQ_WEIGHT_OPS: frozenset[str] = frozenset({"Conv", "Gemm"})
"""Ops whose weights a QDQ graph holds as integer initializers behind a DequantizeLinear."""

WEIGHT_BITS_PROP = "edgezoo.weight_bits"
ACTIVATION_BITS_PROP = "edgezoo.activation_bits"
ROUNDING_PROP = "edgezoo.activation_rounding"
EVAL_PRECISION_PROP = "edgezoo.qat_eval_precision"
BIAS_RULE_PROP = "edgezoo.bias_rule"
"""Model properties a QAT export records: its bit widths, its activation rounding, the
precision QAT evaluated in and how the device holds the biases (a graph without the last was
written before bias rules existed: "joint")."""

ACTIVATION_SCALES_PROP = "edgezoo.activation_scales"
TARGET_PROP = "edgezoo.target"
INPUT_MEAN_PROP = "edgezoo.input_mean"
INPUT_STD_PROP = "edgezoo.input_std"
"""The ranges' grid kind (power_of_two or affine), the device, and the input normalisation of
0..1 pixels that the TIDL files declare (the input range must cover what it produces)."""

HALF_PIXEL_MODES: frozenset[str] = frozenset({"half_pixel", "pytorch_half_pixel"})
"""Resize coordinate modes with which TIDL takes nearest_mode 'round_prefer_ceil' only."""

UNTRAINED_RANGES_PROP = "edgezoo.untrained_ranges"
"""Model property an export writes when its QAT ranges never saw data (their number)."""


def is_resize_scale(factor: object) -> bool:
    """Whether TIDL's Resize takes this scale factor: an integer power of two >= 1."""
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not factor >= 1:
        return False
    return factor == int(factor) and int(factor) & (int(factor) - 1) == 0


def graph_properties(proto) -> dict[str, str]:
    """The metadata properties of an ONNX model."""
    return {prop.key: prop.value for prop in proto.metadata_props}


def graph_bits(proto) -> tuple[int, int]:
    """(weight bits, activation bits) an export recorded; 8 and 8 when it recorded none.
    UnreadableModelError when a recorded value is not a bit width in [2, 16]."""
    props = graph_properties(proto)
    return _bits(props, WEIGHT_BITS_PROP), _bits(props, ACTIVATION_BITS_PROP)


def _bits(props: dict[str, str], key: str) -> int:
    text = props.get(key, "8")
    if not (text.isdigit() and 2 <= int(text) <= 16):
        raise UnreadableModelError(
            f"the graph's metadata {key}={text!r} is not a bit width in [2, 16]; re-export the "
            "model with edgezoo.export_onnx (or remove the property)"
        )
    return int(text)


def input_normalisation(proto) -> tuple[list[float], list[float]] | None:
    """The (mean, std) per channel an export recorded; None when absent or unusable."""
    props = graph_properties(proto)
    try:
        mean = [float(v) for v in props[INPUT_MEAN_PROP].split()]
        std = [float(v) for v in props[INPUT_STD_PROP].split()]
    except (KeyError, ValueError):
        return None
    usable = len(mean) == len(std) > 0 and all(math.isfinite(v) for v in mean + std)
    return (mean, std) if usable and all(v > 0 for v in std) else None
