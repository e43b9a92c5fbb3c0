"""IndexedGraph: an ONNX graph read once, with who makes and who reads each value.

The verifier, the QDQ rewrite and the integer simulator all walk graphs by value: which node
produced a tensor, which nodes read it, whether it is a constant and what its shape is. They
share this one index instead of building their own.
"""

import functools

import numpy as np
import onnx

from edgezoo.onnxgraph.tools import infer_shapes, node_attributes, read_constants

__all__ = ["DEFAULT_DOMAINS", "IndexedGraph", "unique_node_names"]

DEFAULT_DOMAINS = ("", "ai.onnx")
"""The domain names of ONNX's standard operator set."""


class IndexedGraph:
    """A graph's nodes (with a unique name each), constants, producers and readers by value.

    Built once per graph; shapes are inferred on first use (on a weightless view), so users that
    never ask for a shape never pay for inference.
    """

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.proto = proto
        self.nodes: list[onnx.NodeProto] = list(proto.graph.node)
        self.names = unique_node_names(proto.graph)
        self.opset: int | None = next(
            (o.version for o in proto.opset_import if o.domain in DEFAULT_DOMAINS), None
        )
        self.constants, self.payload_problems = read_constants(proto.graph)
        self.consumers: dict[str, list[int]] = {}
        self.producer_nodes: dict[str, onnx.NodeProto] = {}
        for index, node in enumerate(self.nodes):
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(index)
            for name in node.output:
                self.producer_nodes[name] = node
        self.producers = {name: node.op_type for name, node in self.producer_nodes.items()}

    @property
    def inputs(self) -> list[str]:
        """The graph inputs that are not constants (the data the graph is run on)."""
        return [i.name for i in self.proto.graph.input if i.name not in self.constants]

    def readers(self, value: str) -> list[onnx.NodeProto]:
        """The nodes that read `value`, in graph order."""
        return [self.nodes[index] for index in self.consumers.get(value, [])]

    def reader_ops(self, value: str) -> list[str]:
        """The operator types of the nodes that read `value`."""
        return [node.op_type for node in self.readers(value)]

    @functools.cached_property
    def _inferred(self) -> tuple[dict[str, tuple[int, ...] | None], str | None]:
        inferred, error = infer_shapes(self.proto)
        shapes: dict[str, tuple[int, ...] | None] = {}
        for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
            shapes[info.name] = _static_shape(info)
        for name, value in self.constants.items():
            shapes[name] = tuple(value.shape)
        return shapes, error

    @property
    def shapes(self) -> dict[str, tuple[int, ...] | None]:
        """Each value's static shape (None: unknown or symbolic), constants included."""
        return self._inferred[0]

    @property
    def inference_error(self) -> str | None:
        """ONNX's strict shape-inference error, or None when inference succeeds."""
        return self._inferred[1]

    def rank(self, value: str) -> int | None:
        """The number of axes of `value`, or None when its shape is unknown."""
        shape = self.shapes.get(value)
        return len(shape) if shape is not None else None

    def clip_bounds(self, node: onnx.NodeProto) -> tuple[float, float] | None:
        """A Clip's (min, max) as floats (+/-inf where absent), or None when not constant."""
        if self.opset is not None and self.opset < 11:
            attrs = node_attributes(node)
            return float(attrs.get("min", -np.inf)), float(attrs.get("max", np.inf))
        bounds = []
        for position, default in ((1, -np.inf), (2, np.inf)):
            name = node.input[position] if len(node.input) > position else ""
            if not name:
                bounds.append(default)
                continue
            value = self.constants.get(name)
            if value is None or value.size != 1:
                return None
            bounds.append(float(value.ravel()[0]))
        return bounds[0], bounds[1]


def unique_node_names(graph: onnx.GraphProto) -> list[str]:
    """A name per node for reports: its own, or op_index; a repeated name gets #index."""
    names, seen = [], set()
    for index, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{index}"
        if name in seen:
            name = f"{name}#{index}"
        seen.add(name)
        names.append(name)
    return names


def _static_shape(info: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    """The static shape of a tensor value, or None when unknown or symbolic."""
    tensor_type = info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims = tensor_type.shape.dim
    if any(not d.HasField("dim_value") for d in dims):
        return None
    return tuple(d.dim_value for d in dims)
