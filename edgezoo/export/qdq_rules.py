"""TIDL's rules for prequantized ONNX QDQ graphs (edgeai-tidl-tools release 11.0 docs).

From docs/supported_ops_rts_versions.md: QuantizeLinear / DequantizeLinear only with the default
axis (1) and only in QDQ models. From docs/quantization.md (layer quantization restrictions):
prequantized import is 8-bit; Conv takes asymmetric per-tensor activations and symmetric
per-channel weights and biases, InnerProduct (Gemm) per-column symmetric weights; Add, Concat,
Flatten and Reshape take a zero point, pools, Resize, ArgMax and the network input only
symmetric per-tensor grids; every supported layer needs Q/DQ nodes around it except Flatten and
Reshape (pass-through). The per-axis DequantizeLinear of constant weights and biases (axis 0,
the output channel) is how ONNX writes per-channel weights; the axis rule is read as applying to
activations.
"""

from collections.abc import Iterator

import numpy as np
import torch

from edgezoo.export.report import GraphViolation
from edgezoo.onnxgraph.indexed import IndexedGraph
from edgezoo.quantization.grid import power_of_two_mask
from edgezoo.targets import TARGETS
from edgezoo.tidl import rules

__all__ = ["QDQ_OPS", "check_qdq_graph", "is_qdq_graph"]

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
_NEEDS_QDQ = frozenset(
    {
        "Conv",
        "Gemm",
        "Add",
        "Mul",
        "Concat",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "Resize",
        "Sigmoid",
        "HardSigmoid",
    }
)
"""Layers that read dequantized inputs and whose outputs are quantized again."""
_SYMMETRIC_ONLY = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "Resize", "ArgMax"})
_PASS_THROUGH = frozenset({"Flatten", "Reshape"})
_FUSING_OPS = frozenset({"Conv", "Gemm", "Add"})
"""Layers TIDL merges with the activation that follows them (the Q/DQ pair comes after it, as
in QDQ graphs from torch.ao, TI's v2 QAT, Brevitas and NNCF)."""
_FUSED_ACTIVATIONS = frozenset({"Relu", "Clip"})
_ACTIVATION_TYPES = (np.int8, np.uint8)


def is_qdq_graph(proto) -> bool:
    """Whether a graph holds QuantizeLinear / DequantizeLinear nodes."""
    return any(node.op_type in QDQ_OPS for node in proto.graph.node)


def check_qdq_graph(graph: IndexedGraph) -> Iterator[GraphViolation]:
    """Every QDQ rule violation of a graph."""
    if graph.opset is not None and graph.opset < rules.QDQ_MIN_OPSET:
        yield GraphViolation(
            "qdq-opset",
            "<graph>",
            f"opset {graph.opset}: per-axis DequantizeLinear needs opset "
            f"{rules.QDQ_MIN_OPSET}; export "
            f"with opset {rules.QDQ_MIN_OPSET} or later",
        )
    for index, node in enumerate(graph.nodes):
        name = graph.names[index]
        if node.op_type in QDQ_OPS:
            yield from _check_qdq_node(graph, node, name)
        elif node.op_type == "Clip" and not _is_fused_activation(graph, node):
            yield GraphViolation(
                "qdq-clip",
                name,
                "a Clip in a QDQ graph: the Q/DQ pair bounds the range already; export with "
                "export_format='qdq' from a QAT model, which writes none",
            )
        if node.op_type in _NEEDS_QDQ | {"ArgMax"}:
            yield from _check_inputs_dequantized(graph, node, name)
        if node.op_type in _NEEDS_QDQ:
            yield from _check_output_quantized(graph, node, name)
        if node.op_type in _SYMMETRIC_ONLY:
            yield from _check_symmetric_input(graph, node, name)
    yield from _check_graph_input(graph)


def _check_qdq_node(graph: IndexedGraph, node, name: str) -> Iterator[GraphViolation]:
    scale = graph.constants.get(node.input[1]) if len(node.input) > 1 else None
    zero = graph.constants.get(node.input[2]) if len(node.input) > 2 else None
    if scale is None or zero is None:
        yield GraphViolation(
            "qdq-constants",
            name,
            f"{node.op_type} needs constant scale and zero point inputs (TIDL reads them at "
            "import)",
        )
        return
    constant_input = node.input[0] in graph.constants
    yield from _check_scale(graph, node, name, scale, constant_input)
    if scale.size > 1 and not constant_input:
        yield GraphViolation(
            "qdq-axis",
            name,
            f"{node.op_type} with {scale.size} scales on an activation: TIDL takes per-tensor "
            "activation scales (only the default axis)",
        )
    allowed = (*_ACTIVATION_TYPES, np.int32) if constant_input else _ACTIVATION_TYPES
    if zero.dtype not in allowed:
        yield GraphViolation(
            "qdq-bits",
            name,
            f"{node.op_type} zero point of type {zero.dtype}: TIDL imports 8-bit QDQ graphs "
            "(int8/uint8; int32 for biases)",
        )
    if node.op_type == "QuantizeLinear":
        readers = graph.reader_ops(node.output[0])
        if not readers or any(op != "DequantizeLinear" for op in readers):
            yield GraphViolation(
                "qdq-dangling",
                name,
                f"QuantizeLinear read by {readers or 'nothing'}: each one needs its "
                "DequantizeLinear",
            )
    elif not constant_input and graph.producers.get(node.input[0]) != "QuantizeLinear":
        yield GraphViolation(
            "qdq-dangling",
            name,
            "DequantizeLinear of a tensor no QuantizeLinear made (nor a constant)",
        )


def _check_scale(graph: IndexedGraph, node, name: str, scale: np.ndarray, constant_input: bool):
    """Scales TIDL can use: finite, positive, normal floats; powers of two for TDA4VM, whose
    fixed-point arithmetic shifts."""
    values = scale.astype(np.float64).reshape(-1)
    tiny = float(np.finfo(np.float32).tiny)
    bad = ~np.isfinite(values) | (values < tiny)
    if bad.any():
        yield GraphViolation(
            "qdq-scale",
            name,
            f"{node.op_type} scale {values[bad][0]!r}: a scale must be a finite, positive, normal "
            "float; export the QAT model with edgezoo.export_onnx",
        )
        return
    target = rules.graph_properties(graph.proto).get(rules.TARGET_PROP)
    device = TARGETS.get(target or "")
    if device is not None and not device.asymmetric and not constant_input:
        off_grid = ~power_of_two_mask(torch.tensor(values)).numpy()
        if np.any(off_grid):
            yield GraphViolation(
                "qdq-power-of-two",
                name,
                f"{node.op_type} scale {values[off_grid][0]!r} on a {target} graph: "
                "TDA4VM requantizes with shifts, so activation scales must be powers of two",
            )
    if node.op_type == "DequantizeLinear" and not constant_input:
        yield from _check_pair_types(graph, node, name)


def _check_pair_types(graph: IndexedGraph, node, name: str) -> Iterator[GraphViolation]:
    """A DequantizeLinear reads the integers its QuantizeLinear made: same zero-point type."""
    producer = graph.producer_nodes.get(node.input[0])
    if producer is None or producer.op_type != "QuantizeLinear" or len(producer.input) < 3:
        return
    made = graph.constants.get(producer.input[2])
    read = graph.constants.get(node.input[2])
    if made is not None and read is not None and made.dtype != read.dtype:
        yield GraphViolation(
            "qdq-pair-types",
            name,
            f"DequantizeLinear reads {read.dtype} zero points after a QuantizeLinear of "
            f"{made.dtype}: a Q/DQ pair must agree on its integer type",
        )


def _dequantized(graph: IndexedGraph, tensor: str) -> bool:
    """Whether tensor comes from a DequantizeLinear, looking back through Flatten/Reshape."""
    while True:
        producer = graph.producer_nodes.get(tensor)
        if producer is None:
            return False
        if producer.op_type == "DequantizeLinear":
            return True
        if producer.op_type not in _PASS_THROUGH:
            return False
        tensor = producer.input[0]


def _check_inputs_dequantized(graph: IndexedGraph, node, name: str) -> Iterator[GraphViolation]:
    inputs = node.input[:1] if node.op_type in rules.QDQ_WEIGHT_OPS | {"Resize"} else node.input
    for position, tensor in enumerate(inputs):
        if tensor and not _dequantized(graph, tensor):
            yield GraphViolation(
                "qdq-pairs",
                name,
                f"input {position} ({tensor!r}) of {node.op_type} is not dequantized: TIDL "
                "needs a Q/DQ pair before every supported layer",
            )
    if node.op_type in rules.QDQ_WEIGHT_OPS:
        for tensor in node.input[1:]:
            if tensor and graph.producers.get(tensor) != "DequantizeLinear":
                yield GraphViolation(
                    "qdq-weights",
                    name,
                    f"{node.op_type} parameter {tensor!r} is float: a prequantized graph holds "
                    "integer weights and biases behind DequantizeLinear",
                )


def _fused_activation(graph: IndexedGraph, node):
    """The Relu or Clip that TIDL merges into this Conv/Gemm/Add (its output's only reader),
    or None."""
    if node.op_type not in _FUSING_OPS:
        return None
    readers = graph.readers(node.output[0])
    if len(readers) == 1 and readers[0].op_type in _FUSED_ACTIVATIONS:
        return readers[0]
    return None


def _is_fused_activation(graph: IndexedGraph, node) -> bool:
    """A Relu/Clip that directly follows (and is merged into) a Conv, Gemm or Add."""
    producer = graph.producer_nodes.get(node.input[0])
    return producer is not None and _fused_activation(graph, producer) is node


def _check_output_quantized(graph: IndexedGraph, node, name: str) -> Iterator[GraphViolation]:
    activation = _fused_activation(graph, node)
    output = (activation or node).output[0]
    readers = graph.reader_ops(output)
    if not readers and node.op_type in rules.QDQ_WEIGHT_OPS:
        return  # a final Conv/Gemm may hand TIDL its float output
    if not readers or any(op != "QuantizeLinear" for op in readers):
        yield GraphViolation(
            "qdq-pairs",
            name,
            f"the {node.op_type} output is read by {readers or 'nothing'}, not by a "
            "QuantizeLinear: TIDL needs a Q/DQ pair after every supported layer",
        )


def _zero_point_of(graph: IndexedGraph, tensor: str):
    """The zero point of the DequantizeLinear a tensor comes from (through Flatten/Reshape)."""
    while True:
        producer = graph.producer_nodes.get(tensor)
        if producer is None:
            return None
        if producer.op_type == "DequantizeLinear":
            return graph.constants.get(producer.input[2]) if len(producer.input) > 2 else None
        if producer.op_type not in _PASS_THROUGH:
            return None
        tensor = producer.input[0]


def _check_symmetric_input(graph: IndexedGraph, node, name: str) -> Iterator[GraphViolation]:
    zero = _zero_point_of(graph, node.input[0])
    if zero is not None and np.any(zero != 0):
        yield GraphViolation(
            "qdq-symmetric",
            name,
            f"{node.op_type} reads an asymmetric grid (zero point {int(np.ravel(zero)[0])}): "
            "TIDL runs it on symmetric grids only (edgezoo's QAT keeps such ranges symmetric)",
        )


def _check_graph_input(graph: IndexedGraph) -> Iterator[GraphViolation]:
    for graph_input in graph.proto.graph.input:
        if graph_input.name in graph.constants:
            continue
        for index in graph.consumers.get(graph_input.name, []):
            reader = graph.nodes[index]
            if reader.op_type != "QuantizeLinear":
                continue
            zero = graph.constants.get(reader.input[2]) if len(reader.input) > 2 else None
            if zero is not None and np.any(zero != 0):
                yield GraphViolation(
                    "qdq-symmetric",
                    graph.names[index],
                    "the network input is quantized with a zero point: TIDL's input layer "
                    "takes symmetric grids only",
                )
