"""verify_onnx's mixed-precision rules: every per-tensor width the graph records names a
tensor of the right kind, is one TIDL runs, and changes only where TIDL can change it."""

from collections.abc import Iterator

from edgezoo.export.report import GraphViolation
from edgezoo.export.verify_context import CheckedGraph
from edgezoo.quantization.layer_spec import TIDL_LAYER_BITWIDTHS
from edgezoo.tidl import rules

__all__ = ["MIXED_PRECISION_RULE", "check_widths"]

MIXED_PRECISION_RULE = "mixed-precision"


def check_widths(checked: CheckedGraph) -> Iterator[GraphViolation]:
    """The recorded widths against the graph (nothing to check in a uniform graph)."""
    widths = checked.widths
    if not widths.mixed:
        return
    graph = checked.graph
    for tensor, width in widths.activations.items():
        producer = graph.producer_nodes.get(tensor)
        if producer is None or producer.op_type != "Clip":
            yield _violation(tensor, "records an activation width but is no Clip's output")
        elif width not in TIDL_LAYER_BITWIDTHS:
            yield _violation(tensor, f"is {width}-bit; TIDL's layers run at 8 or 16 bits")
        else:
            yield from _check_joint(checked, producer, width)
    for tensor, width in widths.weights.items():
        producer = graph.producer_nodes.get(tensor)
        if producer is None or producer.op_type not in rules.QUANTIZED_WEIGHT_OPS:
            yield _violation(tensor, "records a weight width but is no Conv/Gemm output")
        elif width not in TIDL_LAYER_BITWIDTHS:
            yield _violation(tensor, f"has {width}-bit weights; TIDL holds 8 or 16")


def _check_joint(checked: CheckedGraph, clip, width: int) -> Iterator[GraphViolation]:
    """A Clip that changes the width of what it reads must follow a layer that can."""
    source = checked.graph.producer_nodes.get(clip.input[0])
    if source is None or source.op_type in rules.PRECISION_CHANGING_OPS:
        return
    inherited = _grid_width(checked, source.input[0] if source.input else "")
    if inherited != width:
        yield _violation(
            clip.output[0],
            f"is {width}-bit but follows {source.op_type} {source.name!r}, which TIDL runs at "
            f"its input's {inherited} bits (only {', '.join(sorted(rules.PRECISION_CHANGING_OPS))}"
            " change precision); give the layer before it the same width",
        )


def _grid_width(checked: CheckedGraph, tensor: str) -> int:
    """The width of the grid `tensor` lies on: the Clip it comes from, through layers that
    keep their input's grid; the graph input has the base width."""
    graph, widths = checked.graph, checked.widths
    seen = set()
    node = graph.producer_nodes.get(tensor)
    while node is not None and tensor not in seen:
        seen.add(tensor)
        if node.op_type == "Clip":
            return widths.activation_bits(tensor)
        if node.op_type in rules.PRECISION_CHANGING_OPS or not node.input:
            break
        tensor = node.input[0]
        node = graph.producer_nodes.get(tensor)
    return widths.bitwidth_activations


def _violation(tensor: str, problem: str) -> GraphViolation:
    return GraphViolation(MIXED_PRECISION_RULE, tensor, f"tensor {tensor!r} {problem}")
