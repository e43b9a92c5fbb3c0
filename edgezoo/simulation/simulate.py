"""simulate_tidl: run an exported QAT graph in TIDL's integer arithmetic."""

import os
from typing import NamedTuple

import numpy as np
import onnx
from torch import Tensor

from edgezoo.export.tidl_rules import ROUNDING_PROP, graph_bits, graph_properties
from edgezoo.export.verify import load_onnx
from edgezoo.quantization.grid import (
    DEFAULT_ACTIVATION_ROUNDING,
    check_activation_rounding,
    check_bitwidth,
)
from edgezoo.simulation.arithmetic import Bits, IntegerArithmetic
from edgezoo.simulation.runner import run_graph
from edgezoo.simulation.values import IntegerValue


class SimulatedTensor(NamedTuple):
    """An output as the device holds it: integers at a power-of-two scale."""

    integers: np.ndarray
    exponent: int

    @property
    def scale(self) -> float:
        """value = integers / scale."""
        return 2.0**self.exponent


def graph_rounding(proto: onnx.ModelProto) -> str:
    """The activation rounding an export recorded in the graph (default half_up)."""
    recorded = graph_properties(proto).get(ROUNDING_PROP, DEFAULT_ACTIVATION_ROUNDING)
    return check_activation_rounding(recorded)


def device_arithmetic(proto: onnx.ModelProto, bitwidth: int | None = None) -> IntegerArithmetic:
    """TIDL's integer arithmetic at the graph's recorded bit widths (bitwidth overrides both)."""
    weights, activations = graph_bits(proto)
    if bitwidth is not None:
        weights = activations = check_bitwidth(bitwidth)
    return IntegerArithmetic(Bits(weights, activations), graph_rounding(proto))


def simulate_tidl(
    model: str | os.PathLike | onnx.ModelProto,
    inputs: Tensor | np.ndarray,
    bitwidth: int | None = None,
    return_integers: bool = False,
) -> list[np.ndarray] | list[SimulatedTensor]:
    """The outputs TIDL's power-of-two integer arithmetic computes for one input batch.

    model: an exported QAT Clip graph (path or ModelProto). inputs: the float batch the graph
    takes (NCHW). Each activation's scale comes from its Clip, each weight tensor's from
    max|w| as TIDL re-derives it; Conv/Gemm accumulate exactly, biases are 2b-bit integers at
    the joint scale, Clips requantize by a rounding shift with saturation (docs/
    integer_simulation.md defines every op). bitwidth: the weights' and activations' bit width
    (default: what the export recorded, 8 when it recorded none). Returns dequantized float64
    arrays (ArgMax outputs as int64), or with return_integers the integers and their scale
    exponents.
    """
    proto = model if isinstance(model, onnx.ModelProto) else load_onnx(model)
    outputs = run_graph(proto, inputs, device_arithmetic(proto, bitwidth)).outputs
    if return_integers:
        return [_integers(value) for value in outputs]
    return [_dequantized(value) for value in outputs]


def _dequantized(value: IntegerValue | Tensor) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.numpy()
    return value.dequantize().numpy()


def _integers(value: IntegerValue | Tensor) -> SimulatedTensor:
    if isinstance(value, Tensor):
        return SimulatedTensor(value.numpy(), 0)
    return SimulatedTensor(value.data.numpy(), value.exponent)
