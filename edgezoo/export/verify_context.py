"""The graph verify_onnx checks, and how: the one argument every rule family takes."""

from dataclasses import dataclass

from edgezoo.onnxgraph.indexed import IndexedGraph
from edgezoo.tidl.tensor_bits import TensorBits

__all__ = ["CheckedGraph"]


@dataclass(frozen=True)
class CheckedGraph:
    """An indexed graph with the request verify_onnx was given and what its metadata says."""

    graph: IndexedGraph
    quantized: bool
    """Apply the QAT rules (ranges, weight grid) too."""
    input_clipped: bool
    """The graph input must reach its first range-using node through a Clip."""
    allow_uncalibrated: bool
    """Untrained ranges recorded by the export are not reported."""
    metadata_problems: tuple[str, ...]
    widths: TensorBits
    """The per-tensor bit widths the export recorded (8 bits when unreadable)."""
    qdq: bool
    """The graph holds QuantizeLinear / DequantizeLinear nodes."""
    meta_arch: str | None = None
    """A detector's meta-architecture prototxt (the text TIDL will read), if given."""
