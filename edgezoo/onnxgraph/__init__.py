"""ONNX graphs below export and simulation: reading a file, shape inference, constants and
graph-order checks that both the verifier and the simulator use."""

from edgezoo.onnxgraph.io import load_onnx

__all__ = ["load_onnx"]
