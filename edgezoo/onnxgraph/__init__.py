"""ONNX graphs below export and simulation: reading a file, the indexed graph (producers,
readers, constants, shapes) that the verifier, the QDQ rewrite and the simulator share, shape
inference and graph-order checks."""

from edgezoo.onnxgraph.indexed import IndexedGraph
from edgezoo.onnxgraph.io import load_onnx

__all__ = ["IndexedGraph", "load_onnx"]
