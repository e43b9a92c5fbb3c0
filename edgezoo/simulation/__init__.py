"""Integer simulation of an exported QAT graph: what TIDL's power-of-two arithmetic computes.

outputs = edgezoo.simulate_tidl("mobilenetv2_qat.onnx", images)   # dequantized, float64
report = edgezoo.simulation.parity_report("mobilenetv2_qat.onnx", images)
print(report)   # per layer: the integer graph against QAT's float32 arithmetic
"""

from edgezoo.simulation.parity import LayerParity, ParityReport, parity_report
from edgezoo.simulation.simulate import (
    SimulatedTensor,
    TIDLSimulator,
    graph_rounding,
    simulate_tidl,
)

__all__ = [
    "LayerParity",
    "ParityReport",
    "SimulatedTensor",
    "TIDLSimulator",
    "graph_rounding",
    "parity_report",
    "simulate_tidl",
]
