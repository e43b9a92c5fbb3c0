"""simulate_tidl / TIDLSimulator: run an exported QAT graph in TIDL's integer arithmetic."""

import os
from typing import NamedTuple

import numpy as np
import onnx
import torch
from torch import Tensor

from edgezoo.errors import SimulationError
from edgezoo.onnxgraph import load_onnx
from edgezoo.quantization.grid import (
    BIAS_JOINT,
    DEFAULT_ACTIVATION_ROUNDING,
    check_activation_rounding,
    check_bias_rule,
    check_bitwidth,
)
from edgezoo.simulation.arithmetic import FloatArithmetic, IntegerArithmetic
from edgezoo.simulation.memory import check_simulation_memory, values_per_image
from edgezoo.simulation.runner import GraphProgram
from edgezoo.simulation.values import IntegerValue
from edgezoo.tidl.rules import (
    ACTIVATION_BITS_PROP,
    BIAS_RULE_PROP,
    EVAL_PRECISION_PROP,
    ROUNDING_PROP,
    WEIGHT_BITS_PROP,
    graph_properties,
)
from edgezoo.tidl.tensor_bits import TensorBits

__all__ = [
    "SimulatedTensor",
    "TIDLSimulator",
    "device_arithmetic",
    "graph_bias_rule",
    "graph_rounding",
    "qat_arithmetic",
    "simulate_tidl",
]


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


def graph_bias_rule(proto: onnx.ModelProto) -> str:
    """The bias rule an export recorded in the graph (joint for graphs without one)."""
    return check_bias_rule(graph_properties(proto).get(BIAS_RULE_PROP, BIAS_JOINT))


def _graph_bits(proto: onnx.ModelProto, bitwidth: int | None) -> TensorBits:
    """The widths to simulate: the graph's recorded ones (per tensor); `bitwidth` only for a
    graph that records none (an export recorded its widths: others would simulate another
    model)."""
    recorded = TensorBits.of_graph(proto)
    if bitwidth is None:
        return recorded
    check_bitwidth(bitwidth)
    props = graph_properties(proto)
    has_widths = WEIGHT_BITS_PROP in props or ACTIVATION_BITS_PROP in props
    uniform = (recorded.bitwidth_weights, recorded.bitwidth_activations) == (bitwidth, bitwidth)
    if has_widths and (recorded.mixed or not uniform):
        widths = (
            "mixed 8/16-bit layers"
            if recorded.mixed
            else (
                f"{recorded.bitwidth_weights}-bit weights and {recorded.bitwidth_activations}-bit "
                "activations"
            )
        )
        raise SimulationError(
            f"the graph was exported with {widths}; a bit width of {bitwidth} would simulate "
            "another model: leave it out (bitwidth= / --bitwidth)"
        )
    return TensorBits(bitwidth, bitwidth)


def _qat_dtype(proto: onnx.ModelProto) -> torch.dtype:
    """The precision the QAT model evaluated in (recorded by the export; float32 by default)."""
    recorded = graph_properties(proto).get(EVAL_PRECISION_PROP, "float32")
    return torch.float64 if recorded == "float64" else torch.float32


def device_arithmetic(proto: onnx.ModelProto, bitwidth: int | None = None) -> IntegerArithmetic:
    """TIDL's integer arithmetic at the graph's recorded bit widths (bitwidth overrides both)."""
    bits = _graph_bits(proto, bitwidth)
    rounding, bias_rule = graph_rounding(proto), graph_bias_rule(proto)
    return IntegerArithmetic(bits, rounding, _qat_dtype(proto), bias_rule)


def qat_arithmetic(proto: onnx.ModelProto, bitwidth: int | None = None) -> FloatArithmetic:
    """QAT's float arithmetic on the graph, in the precision the QAT model evaluated in."""
    bits, rounding = _graph_bits(proto, bitwidth), graph_rounding(proto)
    return FloatArithmetic(bits, rounding, _qat_dtype(proto), graph_bias_rule(proto))


class TIDLSimulator:
    """An exported QAT graph, read once, run in TIDL's integer arithmetic on many batches.

    simulator = TIDLSimulator("mobilenetv2_qat.onnx"); logits, = simulator(images)
    """

    def __init__(self, model: str | os.PathLike | onnx.ModelProto, bitwidth: int | None = None):
        proto = model if isinstance(model, onnx.ModelProto) else load_onnx(model)
        self.program = GraphProgram(proto)
        self.arithmetic = device_arithmetic(proto, bitwidth)
        graph = self.program.graph
        self._values = {kept: values_per_image(graph, kept) for kept in (False, True)}

    def __call__(
        self, inputs: Tensor | np.ndarray, return_integers: bool = False
    ) -> list[np.ndarray] | list[SimulatedTensor]:
        check_simulation_memory(self._values[False], len(inputs))
        outputs = self.program.run(inputs, self.arithmetic).outputs
        if return_integers:
            return [_integers(value) for value in outputs]
        return [_dequantized(value) for value in outputs]

    def layers(self, inputs: Tensor | np.ndarray) -> dict[str, SimulatedTensor]:
        """Every tensor the device holds on an activation grid (each Clip's output, and ops
        that keep their input's grid), by ONNX tensor name: what TIDL's fixed-point layer
        traces record, to compare with them (docs/integer_simulation.md)."""
        check_simulation_memory(self._values[True], len(inputs))
        run = self.program.run(inputs, self.arithmetic, record=True)
        return {
            output: _integers(value)
            for output, value in run.tensors.items()
            if isinstance(value, IntegerValue) and value.ranged
        }


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
    exponents. For many batches, TIDLSimulator reads the graph once.
    """
    return TIDLSimulator(model, bitwidth)(inputs, return_integers)


def _dequantized(value: IntegerValue | Tensor) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.numpy()
    return value.dequantize().numpy()


def _integers(value: IntegerValue | Tensor) -> SimulatedTensor:
    if isinstance(value, Tensor):
        return SimulatedTensor(value.numpy(), 0)
    return SimulatedTensor(value.data.to(torch.int64).numpy(), value.exponent)
