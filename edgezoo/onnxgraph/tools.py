"""Shape inference and onnx.checker on a weightless view of a graph, so big models stay fast.

Both onnx calls serialize the whole model, weights included (half a gigabyte for
wide_resnet101_2). Neither needs the values of large tensors: a view whose large initializers
are declared as graph inputs of the same type and shape checks and infers the same graph.
Small initializers (Resize scales, Reshape shapes, Clip bounds) keep their values, which shape
inference may read.
"""

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = [
    "check_model",
    "infer_shapes",
    "node_attributes",
    "order_problem",
    "read_constants",
    "weightless_view",
    "without_argmax",
]

_KEEP_BYTES = 4096


def weightless_view(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `proto` whose initializers above 4 KiB are typed graph inputs instead."""
    view = onnx.ModelProto()
    _copy_fields(proto, view, skip="graph")
    _copy_fields(proto.graph, view.graph, skip="initializer")
    for init in proto.graph.initializer:
        if init.ByteSize() <= _KEEP_BYTES:
            view.graph.initializer.append(init)
        else:
            view.graph.input.append(
                helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            )
    return view


def check_model(proto: onnx.ModelProto) -> str | None:
    """onnx.checker's first complaint about the graph, or None when it passes.

    The large tensors left out of the checked view are checked here for a payload that fits
    their shape and type.
    """
    try:
        onnx.checker.check_model(weightless_view(proto))
    except onnx.checker.ValidationError as err:
        return str(err).strip().splitlines()[0]
    for init in proto.graph.initializer:
        if init.raw_data and init.ByteSize() > _KEEP_BYTES:
            itemsize = helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
            expected = math.prod(init.dims) * itemsize
            if len(init.raw_data) != expected:
                return (
                    f"initializer {init.name!r} holds {len(init.raw_data)} bytes, but its shape "
                    f"{list(init.dims)} needs {expected}"
                )
    return None


def infer_shapes(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """The weightless view with inferred shapes, and the strict inference error if any.

    On a strict failure the view is inferred again non-strictly, so the shapes that could be
    inferred are still there.
    """
    view = weightless_view(proto)
    failures = (onnx.shape_inference.InferenceError, onnx.checker.ValidationError)
    try:
        return onnx.shape_inference.infer_shapes(view, strict_mode=True, data_prop=True), None
    except failures as err:
        message = str(err).strip().splitlines()[0]
    try:
        return onnx.shape_inference.infer_shapes(view, strict_mode=False), message
    except failures:
        return view, message  # no shapes at all: the rules that need them report it


def _copy_fields(source: object, target: object, skip: str) -> None:
    """Copy every set protobuf field of `source` into `target` except `skip`."""
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        destination = getattr(target, field.name)
        if hasattr(destination, "extend"):
            destination.extend(value)
        elif hasattr(destination, "CopyFrom"):
            destination.CopyFrom(value)
        else:
            setattr(target, field.name, value)


def read_constants(graph: onnx.GraphProto) -> tuple[dict[str, np.ndarray], list[str]]:
    """The graph's initializers and Constant nodes as arrays, and what is wrong with the
    initializers that cannot be read (a payload that does not fit the declared shape and type:
    a crafted or damaged file)."""
    constants, problems = {}, []
    for init in graph.initializer:
        problem = _payload_problem(init, f"initializer {init.name!r}")
        if problem is None:
            problem = _read_into(constants, init.name, init, f"initializer {init.name!r}")
        if problem is not None:
            problems.append(problem)
    for node in graph.node:  # opset-11 exports (TI's v1 among them) hold Clip bounds this way
        if node.op_type == "Constant" and node.output:
            tensor = next((a.t for a in node.attribute if a.name == "value"), None)
            label = f"Constant node {node.name or node.output[0]!r}"
            problem = _payload_problem(tensor, label) if tensor is not None else None
            if problem is None:
                problem = _read_into(constants, node.output[0], node, label)
            if problem is not None:
                problems.append(problem)
    return constants, problems


def _payload_problem(tensor: onnx.TensorProto, label: str) -> str | None:
    """What is wrong with a tensor whose raw payload does not fit its declared shape (a crafted
    'bomb' declaring billions of elements over a few bytes), before anything is allocated."""
    if not tensor.raw_data:
        return None
    expected = math.prod(tensor.dims)
    itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    if len(tensor.raw_data) != expected * itemsize:
        return (
            f"{label} holds {len(tensor.raw_data)} bytes, but its shape {list(tensor.dims)} "
            f"needs {expected * itemsize}"
        )
    return None


def _read_into(constants: dict, name: str, source, label: str) -> str | None:
    """Read an initializer or Constant node into `constants`; the problem when it cannot be."""
    try:
        if isinstance(source, onnx.TensorProto):
            constants[name] = numpy_helper.to_array(source)
        else:
            value = _constant_node_value(source)
            if value is not None:
                constants[name] = value
    except (ValueError, TypeError) as err:
        return f"{label} cannot be read: {err}"
    return None


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The tensor a Constant node holds, or None for the rarely used sparse/string forms."""
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name in ("value_float", "value_int"):
            return np.asarray(helper.get_attribute_value(attr))
        if attr.name in ("value_floats", "value_ints"):
            return np.asarray(list(helper.get_attribute_value(attr)))
    return None


def without_argmax(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The graph up to its logits: a copy without a final ArgMax (the graph itself if none)."""
    last = proto.graph.node[-1] if proto.graph.node else None
    if last is None or last.op_type != "ArgMax" or last.output[0] != proto.graph.output[0].name:
        return proto
    logits = onnx.ModelProto()
    logits.CopyFrom(proto)
    graph = logits.graph
    graph.node.remove(graph.node[-1])
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(last.input[0], onnx.TensorProto.FLOAT, None))
    return logits


def node_attributes(node: onnx.NodeProto) -> dict[str, object]:
    """A node's attributes as Python values (strings decoded)."""
    values = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        values[attr.name] = value.decode() if isinstance(value, bytes) else value
    return values


def order_problem(graph: onnx.GraphProto) -> str | None:
    """Why the nodes cannot run in their listed order (a cycle, a value read before any node
    makes it, a value made twice), or None: the one structural check of verify and the
    integer simulation, so neither can loop or read a missing value."""
    known = {value.name for value in graph.input} | {init.name for init in graph.initializer}
    made: set[str] = set()
    for index, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{index}"
        missing = [v for v in node.input if v and v not in known and v not in made]
        if missing:
            return (
                f"node {name} ({node.op_type}) reads {missing[0]!r} before any node makes it: "
                "the graph has a cycle or is not in topological order"
            )
        twice = [v for v in node.output if v in made or v in known]
        if twice:
            return f"node {name} ({node.op_type}) makes {twice[0]!r}, which is made already"
        made.update(v for v in node.output if v)
    missing_outputs = [o.name for o in graph.output if o.name not in made | known]
    if missing_outputs:
        return f"graph output {missing_outputs[0]!r} is made by no node"
    return None
