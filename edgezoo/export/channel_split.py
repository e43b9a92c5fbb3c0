"""Channel splits as TIDL's Split: the exporter writes torch.chunk / split / x[:, a:b] as Slice
nodes, which TIDL lacks; Slices that together cut one tensor's channels into consecutive parts
covering every channel are the one Split TIDL runs."""

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgezoo.onnxgraph.indexed import IndexedGraph

__all__ = ["slices_to_splits"]

_CHANNEL_AXES = (1, -3)  # NCHW


def slices_to_splits(proto: onnx.ModelProto) -> int:
    """Replace each full channel partition made of Slice nodes by one Split, in place; returns
    how many Splits were written. Other Slices stay (verify names them)."""
    graph = IndexedGraph(proto)
    groups: dict[str, list[tuple[int, int, onnx.NodeProto]]] = {}
    for node in graph.nodes:
        cut = _channel_cut(node, graph.constants) if node.op_type == "Slice" else None
        if cut is not None:
            groups.setdefault(node.input[0], []).append((*cut, node))
    opset = graph.opset or 11
    written = 0
    for source, parts in groups.items():
        channels = (graph.shapes.get(source) or (0, 0))[1]
        parts.sort(key=lambda part: part[0])
        bounds = [(start, min(end, channels)) for start, end, _ in parts]
        edges = [b for pair in bounds for b in pair]
        if not channels or edges[0] != 0 or edges[-1] != channels:
            continue
        if any(bounds[i][1] != bounds[i + 1][0] for i in range(len(bounds) - 1)):
            continue
        _replace(proto.graph, source, [node for *_, node in parts], bounds, opset)
        written += 1
    return written


def _channel_cut(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> tuple[int, int] | None:
    """(start, end) of a Slice that cuts only the channel axis with step 1, else None."""
    values = [constants.get(name) if name else None for name in node.input[1:5]]
    if len(values) < 3 or any(v is None for v in values[:3]):
        return None
    starts, ends, axes = (v.ravel().tolist() for v in values[:3])
    steps = values[3].ravel().tolist() if len(values) > 3 and values[3] is not None else [1]
    if len(axes) != 1 or axes[0] not in _CHANNEL_AXES or steps != [1] or starts[0] < 0:
        return None
    return int(starts[0]), int(ends[0])


def _replace(
    graph: onnx.GraphProto,
    source: str,
    slices: list[onnx.NodeProto],
    bounds: list[tuple[int, int]],
    opset: int,
) -> None:
    """One Split of `source` on channels into `bounds`, where the first of `slices` stood."""
    sizes = [end - start for start, end in bounds]
    name = f"{slices[0].name or source}/split"
    inputs, attributes = [source], {"axis": 1}
    if opset >= 13:
        graph.initializer.append(
            numpy_helper.from_array(np.array(sizes, np.int64), f"{name}_sizes")
        )
        inputs.append(f"{name}_sizes")
    else:
        attributes["split"] = sizes
    split = helper.make_node(
        "Split", inputs, [s.output[0] for s in slices], name=name, **attributes
    )
    position = min(list(graph.node).index(s) for s in slices)
    for node in slices:
        graph.node.remove(node)
    graph.node.insert(position, split)
