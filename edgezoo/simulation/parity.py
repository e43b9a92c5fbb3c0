"""Layer by layer: the integer graph against QAT's float32 arithmetic on the same graph."""

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from torch import Tensor

from edgezoo.onnxgraph import load_onnx
from edgezoo.simulation.memory import check_simulation_memory, values_per_image
from edgezoo.simulation.runner import GraphProgram
from edgezoo.simulation.simulate import device_arithmetic, qat_arithmetic
from edgezoo.simulation.values import FloatValue, IntegerValue

__all__ = ["LayerParity", "ParityReport", "parity_report", "steps_apart"]


@dataclass
class LayerParity:
    """One node's output: how far the integer graph is from QAT's arithmetic."""

    node: str
    op: str
    max_steps: float = 0.0
    differing: int = 0
    elements: int = 0

    @property
    def share_differing(self) -> float:
        return self.differing / self.elements if self.elements else 0.0


@dataclass
class ParityReport:
    """Per-layer agreement over some batches; `exact` when every layer agrees everywhere."""

    layers: list[LayerParity] = field(default_factory=list)
    batches: int = 0

    @property
    def exact(self) -> bool:
        return all(layer.differing == 0 for layer in self.layers)

    @property
    def max_steps(self) -> float:
        return max((layer.max_steps for layer in self.layers), default=0.0)

    def __str__(self) -> str:
        header = f"{'layer':<48} {'op':<18} {'max |int - QAT| (steps)':>24} {'differ':>9}"
        lines = [header, "-" * len(header)]
        for layer in self.layers:
            lines.append(
                f"{layer.node[-48:]:<48} {layer.op:<18} {layer.max_steps:>24.3g} "
                f"{100 * layer.share_differing:>8.3f}%"
            )
        verdict = "exact" if self.exact else f"max {self.max_steps:g} steps apart"
        lines.append(f"{len(self.layers)} layers over {self.batches} batches: {verdict}")
        return "\n".join(lines)


def steps_apart(integer: IntegerValue, other: Tensor) -> Tensor:
    """|integer - other| in steps of the integer tensor's scale (float64)."""
    return (integer.dequantize() - other.double()).abs() * 2.0**integer.exponent


def parity_report(
    model: str | os.PathLike | onnx.ModelProto,
    batches: Iterable[Tensor | np.ndarray],
    bitwidth: int | None = None,
) -> ParityReport:
    """Run each batch in both arithmetics and compare every node's output.

    Steps are the integer tensor's: its range's grid after a Clip, the accumulator's scale
    (input scale x weight scale) for a Conv/Gemm/Add/Concat output.
    """
    proto = model if isinstance(model, onnx.ModelProto) else load_onnx(model)
    device = device_arithmetic(proto, bitwidth)
    qat = qat_arithmetic(proto, bitwidth)
    program = GraphProgram(proto)
    report = ParityReport()
    layers: dict[str, LayerParity] = {}
    per_image = values_per_image(program.graph, recorded=True)
    for batch in batches:
        check_simulation_memory(per_image, len(batch), arithmetics=2)
        integer_run = program.run(batch, device, record=True)
        float_run = program.run(batch, qat, record=True)
        for name, (op, value) in integer_run.nodes.items():
            if _pending(value):
                continue  # an average pool's sum: compared once its Clip materialises it
            layer = layers.setdefault(name, LayerParity(name, op))
            _accumulate(layer, value, float_run.nodes[name][1])
        report.batches += 1
    report.layers = list(layers.values())
    return report


def _pending(value: IntegerValue | Tensor) -> bool:
    return isinstance(value, IntegerValue) and not (
        isinstance(value.divisor, int) and value.divisor == 1
    )


def _accumulate(layer: LayerParity, integer: IntegerValue | Tensor, qat: FloatValue | Tensor):
    if isinstance(integer, Tensor):  # ArgMax indices
        differ = integer != qat
        apart = differ.double()
    else:
        apart = steps_apart(integer, qat.data)
        differ = apart > 0
    layer.max_steps = max(layer.max_steps, float(apart.max()) if apart.numel() else 0.0)
    layer.differing += int(differ.sum())
    layer.elements += differ.numel()
    if math.isnan(layer.max_steps):
        layer.max_steps = math.inf
