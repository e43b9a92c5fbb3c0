"""Per-node TIDL rules: the supported operator list and each operator's attribute limits."""

from collections.abc import Callable, Iterator

import numpy as np
import onnx

from edgezoo.export.qdq_rules import QDQ_OPS
from edgezoo.export.report import GraphViolation
from edgezoo.export.verify_context import CheckedGraph
from edgezoo.onnxgraph.indexed import DEFAULT_DOMAINS
from edgezoo.onnxgraph.tools import node_attributes
from edgezoo.quantization.grid import is_power_of_two_range
from edgezoo.tidl import rules

__all__ = ["check_nodes"]


def check_nodes(checked: CheckedGraph) -> Iterator[GraphViolation]:
    """Every node's violations, in graph order."""
    for node, name in zip(checked.graph.nodes, checked.graph.names, strict=True):
        yield from _check_node(checked, node, name)


def _check_node(checked: CheckedGraph, node: onnx.NodeProto, name: str) -> Iterator[GraphViolation]:
    op = node.op_type
    if op == "ReduceMean":
        yield GraphViolation(
            "reduce-mean",
            name,
            "ReduceMean is not supported by TIDL on its own; use global average pooling "
            "(nn.AdaptiveAvgPool2d(1), exported as GlobalAveragePool)",
        )
        return
    if op == "Identity":
        yield GraphViolation(
            "identity",
            name,
            "Identity is not a TIDL operator; simplify the graph (onnxsim) or export with "
            "edgezoo.export_onnx, which removes it",
        )
        return
    if op == "Slice":
        yield GraphViolation(
            "slice",
            name,
            "Slice (a channel slice such as x[:, a:b]) is not a TIDL operator, and these slices "
            "do not cut their input's channels into consecutive parts covering every channel, "
            "which export writes as TIDL's Split: split into parts that cover all channels "
            "(torch.split / chunk on dim 1), or move the slice into the layer that reads it",
        )
        return
    qdq_op = checked.qdq and op in QDQ_OPS
    if node.domain not in DEFAULT_DOMAINS or (
        op not in rules.TIDL_SUPPORTED_OPS and op not in rules.CONSTANT_OPS and not qdq_op
    ):
        yield GraphViolation(
            "unsupported-op",
            name,
            f"{op} is not in TIDL's supported operator set "
            f"({', '.join(sorted(rules.TIDL_SUPPORTED_OPS))}); TIDL would run it on the "
            "ARM core or fail to import",
        )
        return
    check = _NODE_CHECKS.get(op)
    if check is not None:
        yield from check(checked, node, name)


def _check_clip(checked: CheckedGraph, node: onnx.NodeProto, name: str) -> Iterator[GraphViolation]:
    graph = checked.graph
    bounds = graph.clip_bounds(node)
    if bounds is None:
        yield GraphViolation(
            "clip-bounds",
            name,
            "Clip min/max are not constants; TIDL needs constant clip bounds",
        )
        return
    low, high = bounds
    if not (low <= 0.0 < high) or not np.isfinite(high):
        yield GraphViolation(
            "clip-bounds",
            name,
            f"Clip({low:g}, {high:g}) breaks TIDL's rule min <= 0 < max (finite max)",
        )
        return
    # In a QDQ graph the Q/DQ pairs hold the ranges; a Clip there is an activation.
    if checked.quantized and not checked.qdq and not is_power_of_two_range(low, high):
        yield GraphViolation(
            "clip-bounds",
            name,
            f"Clip({low:g}, {high:g}) is not a QAT range: TIDL's power-of-two quantization "
            "needs max = 2^k and min = 0 (unsigned) or -max (signed)",
        )


def _check_resize(
    checked: CheckedGraph, node: onnx.NodeProto, name: str
) -> Iterator[GraphViolation]:
    attrs = node_attributes(node)
    mode = attrs.get("mode", "nearest")
    if mode not in rules.RESIZE_MODES:
        yield GraphViolation(
            rules.RESIZE_RULE,
            name,
            f"Resize mode {mode!r} is not supported; TIDL takes "
            f"{' or '.join(sorted(rules.RESIZE_MODES))}",
        )
    coordinates = attrs.get("coordinate_transformation_mode", "half_pixel")
    if coordinates == "align_corners":
        yield GraphViolation(
            rules.RESIZE_RULE,
            name,
            "Resize with coordinate_transformation_mode 'align_corners' is not supported by "
            "TIDL; upsample with align_corners=False (edgezoo.layers.ResizeWith)",
        )
    elif coordinates not in rules.RESIZE_COORDINATE_MODES:
        yield GraphViolation(
            rules.RESIZE_RULE,
            name,
            f"Resize coordinate_transformation_mode {coordinates!r} is not supported; TIDL "
            f"takes {', '.join(sorted(rules.RESIZE_COORDINATE_MODES))}",
        )
    nearest_mode = attrs.get("nearest_mode", "round_prefer_floor")
    if coordinates in rules.HALF_PIXEL_MODES and nearest_mode != "round_prefer_ceil":
        yield GraphViolation(
            rules.RESIZE_RULE,
            name,
            f"Resize with {coordinates} coordinates and nearest_mode {nearest_mode!r}: TIDL "
            "takes only 'round_prefer_ceil' there (edgezoo.export_onnx sets it on linear "
            "resizes, where it changes nothing)",
        )
    if mode == "nearest" and coordinates == "asymmetric" and nearest_mode != "floor":
        yield GraphViolation(
            rules.RESIZE_RULE,
            name,
            f"nearest Resize with asymmetric coordinates needs nearest_mode 'floor', got "
            f"{nearest_mode!r}",
        )
    if attrs.get("antialias", 0):
        yield GraphViolation(rules.RESIZE_RULE, name, "Resize with antialias=1 is not supported")
    yield from _check_resize_scales(checked, node, name)


def _check_resize_scales(
    checked: CheckedGraph, node: onnx.NodeProto, name: str
) -> Iterator[GraphViolation]:
    graph = checked.graph
    inputs = list(node.input)
    # Opset 10 has (X, scales); opset 11+ has (X, roi, scales, sizes).
    scales_name = inputs[1] if graph.opset is not None and graph.opset < 11 else None
    if scales_name is None:
        scales_name = inputs[2] if len(inputs) > 2 else ""
        if len(inputs) > 3 and inputs[3]:
            yield GraphViolation(
                rules.RESIZE_RULE,
                name,
                "Resize has a 'sizes' input, which TIDL does not support; resize by a "
                "constant power-of-two scale factor instead (edgezoo.layers.ResizeWith)",
            )
            return
    scales = graph.constants.get(scales_name) if scales_name else None
    if scales is None:
        yield GraphViolation(
            rules.RESIZE_RULE,
            name,
            "Resize scales are missing or not constant; TIDL needs constant power-of-two scales",
        )
        return
    values = [float(v) for v in np.asarray(scales).ravel()]
    legal = (
        len(values) == 4
        and values[0] == values[1] == 1.0
        and values[2] == values[3]
        and rules.is_resize_scale(values[2])
    )
    if not legal:
        yield GraphViolation(
            rules.RESIZE_RULE,
            name,
            f"Resize scales {values} are not supported; TIDL needs [1, 1, s, s] with s an "
            "integer power of two >= 1 (equal for H and W)",
        )


def _check_concat(
    checked: CheckedGraph, node: onnx.NodeProto, name: str
) -> Iterator[GraphViolation]:
    graph = checked.graph
    axis = node_attributes(node).get("axis")
    rank = graph.rank(node.output[0])
    normalised = axis + rank if axis is not None and axis < 0 and rank else axis
    if normalised != 1:
        yield GraphViolation(
            rules.CONCAT_RULE,
            name,
            f"Concat on axis {axis}; TIDL concatenates on the channel axis (1) only "
            "(edgezoo.layers.CatBlock)",
        )


def _check_conv(checked: CheckedGraph, node: onnx.NodeProto, name: str) -> Iterator[GraphViolation]:
    graph = checked.graph
    attrs = node_attributes(node)
    weight = graph.constants.get(node.input[1]) if len(node.input) > 1 else None
    kernel = list(attrs.get("kernel_shape", weight.shape[2:] if weight is not None else []))
    strides = list(attrs.get("strides", [1] * len(kernel)))
    dilations = list(attrs.get("dilations", [1] * len(kernel)))
    group = attrs.get("group", 1)
    if len(set(strides)) > 1:
        yield GraphViolation(
            "conv", name, f"Conv strides {strides} differ between H and W; TIDL needs equal"
        )
    stride = max(strides, default=1)
    if stride > 1 and max(dilations, default=1) > 1:
        yield GraphViolation(
            "conv",
            name,
            f"dilated Conv (dilations {dilations}) with stride {stride}: TIDL runs dilation "
            "only in non-strided convolutions",
        )
    if stride == 2 and max(kernel, default=1) > rules.MAX_STRIDE2_KERNEL:
        yield GraphViolation(
            "conv",
            name,
            f"stride-2 Conv with kernel {kernel}: TIDL runs stride 2 only with kernels up to "
            f"{rules.MAX_STRIDE2_KERNEL}",
        )
    depthwise = weight is not None and group > 1 and weight.shape[1] == 1
    if depthwise:
        square = len(set(kernel)) == 1
        combo = (kernel[0], stride) if square and kernel else None
        if combo not in rules.TIDL_DEPTHWISE_KERNEL_STRIDE:
            supported = ", ".join(
                f"{k}x{k}s{s}" for k, s in sorted(rules.TIDL_DEPTHWISE_KERNEL_STRIDE)
            )
            yield GraphViolation(
                rules.DEPTHWISE_RULE,
                name,
                f"depthwise Conv with kernel {kernel} and stride {stride} is not run by "
                f"TIDL; supported: {supported}",
            )


def _check_gemm(checked: CheckedGraph, node: onnx.NodeProto, name: str) -> Iterator[GraphViolation]:
    attrs = node_attributes(node)
    if attrs.get("transA", 0) != 0 or attrs.get("alpha", 1.0) != 1.0:
        yield GraphViolation(
            "gemm",
            name,
            f"Gemm with transA={attrs.get('transA', 0)}, alpha={attrs.get('alpha', 1.0)}: "
            "TIDL needs transA=0 and alpha=beta=1 (a plain nn.Linear)",
        )
    elif attrs.get("beta", 1.0) != 1.0:
        yield GraphViolation(
            "gemm", name, f"Gemm with beta={attrs['beta']}: TIDL needs alpha=beta=1"
        )


def _check_argmax(
    checked: CheckedGraph, node: onnx.NodeProto, name: str
) -> Iterator[GraphViolation]:
    graph = checked.graph
    attrs = node_attributes(node)
    axis = attrs.get("axis", 0)
    rank = graph.rank(node.input[0])
    if axis < 0 and rank:
        axis += rank
    keepdims = attrs.get("keepdims", 1)
    last = attrs.get("select_last_index", 0)
    if axis != 1 or keepdims != 1 or last != 0:
        yield GraphViolation(
            "argmax",
            name,
            f"ArgMax(axis={attrs.get('axis', 0)}, keepdims={keepdims}, select_last_index="
            f"{last}): TIDL needs axis=1 (channels), keepdims=1, select_last_index=0",
        )


def _check_reshape(
    checked: CheckedGraph, node: onnx.NodeProto, name: str
) -> Iterator[GraphViolation]:
    graph = checked.graph
    if len(node.input) < 2 or node.input[1] not in graph.constants:
        yield GraphViolation(
            "reshape",
            name,
            "Reshape with a computed shape; TIDL needs a constant shape input (export with "
            "a fixed input size and simplify, or use torch.flatten)",
        )


def _check_eltwise(
    checked: CheckedGraph, node: onnx.NodeProto, name: str
) -> Iterator[GraphViolation]:
    graph = checked.graph
    if len(node.input) != 2:
        yield GraphViolation(
            "eltwise", name, f"{node.op_type} with {len(node.input)} inputs; TIDL takes two"
        )
        return
    variables = [i for i in node.input if i not in graph.constants]
    shapes = [graph.shapes.get(i) for i in variables]
    if len(variables) == 2 and all(shapes) and (shapes[0][:1] != shapes[1][:1]):
        yield GraphViolation(
            "eltwise",
            name,
            f"{node.op_type} of shapes {shapes[0]} and {shapes[1]} broadcasts on the batch "
            "axis, which TIDL does not support",
        )


_NodeRule = Callable[[CheckedGraph, onnx.NodeProto, str], Iterator[GraphViolation]]
_NODE_CHECKS: dict[str, _NodeRule] = {
    "Clip": _check_clip,
    "Resize": _check_resize,
    "Concat": _check_concat,
    "Conv": _check_conv,
    "Gemm": _check_gemm,
    "ArgMax": _check_argmax,
    "Reshape": _check_reshape,
    "Add": _check_eltwise,
    "Mul": _check_eltwise,
}
