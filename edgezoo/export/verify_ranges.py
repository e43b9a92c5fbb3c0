"""QAT range rules of Clip graphs: every range covered by a Clip, weights on TIDL's grid, ranges
trained, and an input range that holds the normalised inputs TIDL's files declare."""

from collections.abc import Iterator

import numpy as np
import onnx

from edgezoo.export.report import GraphViolation
from edgezoo.export.verify_context import CheckedGraph
from edgezoo.export.weight_grid import GRID_TOLERANCE_STEPS, grid_error_steps
from edgezoo.onnxgraph.indexed import IndexedGraph
from edgezoo.tidl import rules

__all__ = [
    "check_calibrated",
    "check_input_clipped",
    "check_ranges",
    "input_range",
    "normalised_input_range",
]


def check_ranges(checked: CheckedGraph) -> Iterator[GraphViolation]:
    """The QAT rules of a Clip graph: ranges after every range producer, weights on the grid."""
    yield from _check_range_coverage(checked)
    yield from _check_weight_grid(checked)


def check_input_clipped(checked: CheckedGraph) -> Iterator[GraphViolation]:
    """The graph input reaches no range-using node except through a Clip."""
    yield from _check_input_clipped(checked)


def check_calibrated(checked: CheckedGraph) -> Iterator[GraphViolation]:
    """Ranges trained (unless allowed otherwise), and an input range that fits the inputs."""
    yield from _check_trained_ranges(checked)
    yield from _check_input_range(checked)


def normalised_input_range(proto: onnx.ModelProto) -> tuple[float, float] | None:
    """(min, max) over channels of (0 - mean) / std and (1 - mean) / std for the normalisation
    an export recorded, or None when it recorded none."""
    normalisation = rules.input_normalisation(proto)
    if normalisation is None:
        return None
    mean, std = normalisation
    low = min((0.0 - m) / s for m, s in zip(mean, std, strict=True))
    high = max((1.0 - m) / s for m, s in zip(mean, std, strict=True))
    return low, high


def input_range(proto: onnx.ModelProto) -> tuple[str, float, float] | None:
    """(node, low, high) of the range the graph input goes through first (a Clip's bounds, or
    a QuantizeLinear's representable range), or None."""
    return _input_range(IndexedGraph(proto))


def _input_range(graph: IndexedGraph) -> tuple[str, float, float] | None:
    inputs = graph.inputs
    for node, name in zip(graph.nodes, graph.names, strict=True):
        if not inputs or not node.input or node.input[0] != inputs[0]:
            continue
        values = [graph.constants.get(value) for value in node.input[1:3]]
        if len(values) != 2 or any(v is None or v.size != 1 for v in values):
            continue
        if node.op_type == "Clip":
            return name, float(values[0]), float(values[1])
        if node.op_type == "QuantizeLinear":
            scale, zero = float(values[0]), values[1]
            info = np.iinfo(zero.dtype)
            return name, (info.min - int(zero)) * scale, (info.max - int(zero)) * scale
    return None


def _check_range_coverage(checked: CheckedGraph) -> Iterator[GraphViolation]:
    graph = checked.graph
    for index, node in enumerate(graph.nodes):
        if node.op_type not in rules.RANGE_PRODUCERS:
            continue
        for reached in _unclipped_consumers(checked, node.output[0]):
            yield GraphViolation(
                "range-coverage",
                graph.names[index],
                f"the {node.op_type} output reaches {graph.nodes[reached].op_type} "
                f"{graph.names[reached]!r} without a Clip, so TIDL has no QAT range for it "
                "(a reused activation module or a functional op?); give each op its own "
                "module so quantization inserts a range",
            )


def _check_input_clipped(checked: CheckedGraph) -> Iterator[GraphViolation]:
    graph = checked.graph
    for graph_input in graph.proto.graph.input:
        if graph_input.name in graph.constants:
            continue
        for reached in _unclipped_consumers(checked, graph_input.name):
            yield GraphViolation(
                "input-clip",
                graph_input.name,
                f"the graph input reaches {graph.nodes[reached].op_type} "
                f"{graph.names[reached]!r} without a Clip; a QAT model that quantizes its "
                "input starts with one (pass input_clipped=False if it was trained with "
                "quantize_input=False)",
            )


def _check_weight_grid(checked: CheckedGraph) -> Iterator[GraphViolation]:
    graph = checked.graph
    for index, node in enumerate(graph.nodes):
        if node.op_type not in rules.QUANTIZED_WEIGHT_OPS or len(node.input) < 2:
            continue
        weight = graph.constants.get(node.input[1])
        if weight is None:
            continue
        error = grid_error_steps(weight, checked.widths.weight_bits(node.output[0]))
        if error > GRID_TOLERANCE_STEPS:
            yield GraphViolation(
                "weight-grid",
                graph.names[index],
                f"weight {node.input[1]!r} is not on TIDL's per-tensor power-of-two grid "
                f"(re-quantization moves it by up to {error:.3g} steps), so TIDL would not "
                "run the weights QAT trained; export the QAT model with "
                "edgezoo.export_onnx, or verify a float model with quantized=False",
            )


def _check_trained_ranges(checked: CheckedGraph) -> Iterator[GraphViolation]:
    graph = checked.graph
    props = {p.key: p.value for p in graph.proto.metadata_props}
    untrained = props.get(rules.UNTRAINED_RANGES_PROP)
    if untrained and not checked.allow_uncalibrated:
        yield GraphViolation(
            "untrained-ranges",
            "<graph>",
            f"{untrained} of the exported QAT ranges never saw data (initial clips +/-8): "
            "train or calibrate the model and export it again",
        )


def _check_input_range(checked: CheckedGraph) -> Iterator[GraphViolation]:
    """The input range must hold most of what the declared normalisation produces (a model
    calibrated on un-normalised inputs has an input range TIDL's inputs overflow)."""
    graph = checked.graph
    normalised = normalised_input_range(graph.proto)
    found = _input_range(graph)
    if normalised is None or found is None:
        return
    (low, high), (name, clip_low, clip_high) = normalised, found
    if clip_high < high / 2 or (low < 0 and clip_low > low / 2):
        yield GraphViolation(
            "input-range",
            name,
            f"the input range ({clip_low:.3g}, {clip_high:.3g}) excludes most of the "
            f"normalised input range ({low:.3g}, {high:.3g}) that the TIDL files declare "
            "(inDataNorm with the model's mean and std): calibrate or train the model on "
            "normalised inputs, or export with the preprocessing it was trained with",
        )


def _unclipped_consumers(checked: CheckedGraph, value: str) -> list[int]:
    """Range-using nodes reachable from `value` through range-preserving nodes, no Clip."""
    graph = checked.graph
    found: list[int] = []
    stack, seen = [value], {value}
    while stack:
        for index in graph.consumers.get(stack.pop(), []):
            node = graph.nodes[index]
            if node.op_type == "Clip":
                continue
            if node.op_type in rules.RANGE_CONSUMERS:
                if index not in found:
                    found.append(index)
                continue
            for output in node.output:
                if output and output not in seen:
                    seen.add(output)
                    stack.append(output)
    return found
