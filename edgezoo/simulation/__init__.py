"""Integer simulation of an exported QAT graph: what TIDL's power-of-two arithmetic computes.

outputs = edgezoo.simulate_tidl("mobilenetv2_qat.onnx", images)   # dequantized, float64
report = edgezoo.simulation.parity_report("mobilenetv2_qat.onnx", images)
print(report)   # per layer: the integer graph against QAT's float32 arithmetic
"""

import importlib
import warnings

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


def __getattr__(name: str):
    # simulated_metrics moved to edgezoo.engine (it evaluates a data set: the engine's job, so
    # simulation imports nothing above it); the old name works for one release.
    if name == "simulated_metrics":
        warnings.warn(
            "edgezoo.simulation.simulated_metrics moved to edgezoo.engine.simulated_metrics",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module("edgezoo.engine.simulated").simulated_metrics
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
