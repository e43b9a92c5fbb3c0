"""Graph-level TIDL rules: finite constants, onnx.checker, opsets, static shapes, metadata."""

from collections.abc import Iterator

import numpy as np

from edgezoo.errors import UnreadableModelError
from edgezoo.export.report import GraphViolation
from edgezoo.export.verify_context import CheckedGraph
from edgezoo.onnxgraph.indexed import DEFAULT_DOMAINS
from edgezoo.onnxgraph.tools import check_model
from edgezoo.quantization.grid import ACTIVATION_ROUNDINGS, BIAS_RULES
from edgezoo.tidl import rules
from edgezoo.tidl.tensor_bits import TensorBits

__all__ = ["check_graph", "metadata_problems"]


def check_graph(checked: CheckedGraph) -> Iterator[GraphViolation]:
    """Every graph-level violation (the graph's nodes are known to run in order)."""
    for problem in checked.graph.payload_problems:
        yield GraphViolation("tensor-payload", "<graph>", problem)
    if not checked.graph.proto.graph.output:
        yield GraphViolation("no-outputs", "<graph>", "the graph has no outputs")
    for problem in checked.metadata_problems:
        yield GraphViolation("metadata", "<graph>", problem)
    yield from _check_finite(checked)
    yield from _check_model(checked)
    yield from _check_opset(checked)
    yield from _check_shapes(checked)


def metadata_problems(proto) -> list[str]:
    """What is wrong with the edgezoo properties an export recorded (empty when nothing)."""
    props = rules.graph_properties(proto)
    problems = []
    try:
        TensorBits.of_graph(proto)
    except UnreadableModelError as err:
        problems.append(str(err))
    vocabularies = ((rules.ROUNDING_PROP, ACTIVATION_ROUNDINGS), (rules.BIAS_RULE_PROP, BIAS_RULES))
    for key, allowed in vocabularies:
        if key in props and props[key] not in allowed:
            problems.append(f"{key}={props[key]!r} is not one of {', '.join(allowed)}")
    declared = rules.INPUT_MEAN_PROP in props or rules.INPUT_STD_PROP in props
    if declared and rules.input_normalisation(proto) is None:
        problems.append(
            f"{rules.INPUT_MEAN_PROP} / {rules.INPUT_STD_PROP} are not one finite mean and one "
            "finite positive std per channel"
        )
    return problems


def _check_finite(checked: CheckedGraph) -> Iterator[GraphViolation]:
    """NaN or infinite constants: TIDL would import them as they are, and every output
    they reach would be meaningless."""
    graph = checked.graph
    for name, value in graph.constants.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            count = int((~np.isfinite(value)).sum())
            yield GraphViolation(
                "non-finite",
                name,
                f"{count} NaN or infinite value(s): re-export from a model whose weights and "
                "biases are finite (the checkpoint is damaged, or training diverged)",
            )


def _check_model(checked: CheckedGraph) -> Iterator[GraphViolation]:
    graph = checked.graph
    complaint = check_model(graph.proto)
    if complaint is not None:
        yield GraphViolation("onnx-checker", "<graph>", f"onnx.checker rejects it: {complaint}")


def _check_opset(checked: CheckedGraph) -> Iterator[GraphViolation]:
    graph = checked.graph
    allowed = f"{rules.TIDL_OPSETS[0]}..{rules.TIDL_OPSETS[-1]}"
    if graph.opset not in rules.TIDL_OPSETS:
        yield GraphViolation(
            "opset",
            "<graph>",
            f"ONNX opset {graph.opset} is outside what TIDL imports ({allowed}); export "
            f"with opset {rules.EXPORT_OPSETS[0]} (TI's QAT recipe) to "
            f"{rules.EXPORT_OPSETS[-1]}",
        )
    for opset in graph.proto.opset_import:
        if opset.domain not in DEFAULT_DOMAINS:
            yield GraphViolation(
                "opset",
                "<graph>",
                f"operator domain {opset.domain!r} (version {opset.version}) is not ONNX's "
                "default domain; TIDL imports standard ONNX operators only",
            )


def _check_shapes(checked: CheckedGraph) -> Iterator[GraphViolation]:
    graph = checked.graph
    if graph.inference_error:
        yield GraphViolation(
            "shape-inference",
            "<graph>",
            f"ONNX shape inference fails: {graph.inference_error}; TIDL needs inferred shapes",
        )
    for graph_input in graph.proto.graph.input:
        if graph_input.name not in graph.constants and graph.shapes.get(graph_input.name) is None:
            yield GraphViolation(
                "shape-inference",
                graph_input.name,
                "graph input has no static shape; export with a fixed input size",
            )
    for index, node in enumerate(graph.nodes):
        missing = [o for o in node.output if o and graph.shapes.get(o) is None]
        if missing:
            yield GraphViolation(
                "shape-inference",
                graph.names[index],
                f"no static shape inferred for {', '.join(missing)}; run "
                "onnx.shape_inference with a fixed input size before import",
            )
