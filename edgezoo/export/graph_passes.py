"""The export's graph passes: the TorchScript trace, onnxsim, and the small rewrites that make
the exporter's graph TIDL's (constants as initializers, no Identity, TIDL's Resize attributes,
a final ArgMax, recorded shapes), and which QAT weights deploy conversion nudged."""

import io
import warnings
from collections.abc import Sequence

import onnx
import torch
from onnx import numpy_helper
from torch import Tensor, nn

from edgezoo.errors import ExportVerificationError
from edgezoo.export.channel_split import slices_to_splits
from edgezoo.export.weight_grid import nudged_entries
from edgezoo.onnxgraph.tools import infer_shapes
from edgezoo.tidl import rules
from edgezoo.tidl.tensor_bits import TensorBits

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "append_argmax",
    "clean_graph",
    "count_ops",
    "nudged_layers",
    "record_shapes",
    "set_resize_nearest_modes",
    "torchscript_export",
]


INPUT_NAME = "input"


OUTPUT_NAME = "output"


_LOGITS_NAME = "logits"


def torchscript_export(
    model: nn.Module, example: Tensor, opset: int, output_names: Sequence[str] = (OUTPUT_NAME,)
) -> onnx.ModelProto:
    """Trace with the TorchScript exporter (BN folded by constant folding) into a ModelProto
    whose outputs carry `output_names`."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The exporter's deprecation notice, and tracer notes on shape checks that only raise.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (example,),
            buffer,
            export_params=True,
            opset_version=opset,
            do_constant_folding=True,
            input_names=[INPUT_NAME],
            output_names=list(output_names),
            training=torch.onnx.TrainingMode.EVAL,
            dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def clean_graph(proto: onnx.ModelProto, simplify: bool) -> onnx.ModelProto:
    """onnxsim, constants to initializers, no Identity, channel Slices as one Split."""
    clips = count_ops(proto, "Clip")
    if simplify:
        import onnxsim  # imported here: it takes most of a second and only this step needs it

        # No common-subexpression elimination: two branches that compute alike (a random or
        # default-initialised model's twin BatchNorms) would become one, merging their Clips,
        # and the count check below could no longer tell that from a range lost.
        simplified, ok = onnxsim.simplify(
            proto,
            check_n=0,
            range_opt=False,
            certify=False,
            skipped_optimizers=["eliminate_common_subexpression"],
        )
        if not ok:
            raise ExportVerificationError(
                "onnxsim could not simplify the exported graph; export with simplify=False "
                "(--no-simplify) to keep the exporter's graph"
            )
        if count_ops(simplified, "Clip") != clips:
            raise ExportVerificationError(
                f"onnxsim changed the number of Clip nodes ({clips} -> "
                f"{count_ops(simplified, 'Clip')}), which would drop QAT ranges; export with "
                "simplify=False (--no-simplify)"
            )
        proto = simplified
    _constants_to_initializers(proto.graph)
    _remove_identities(proto.graph)
    slices_to_splits(proto)
    _remove_unused_initializers(proto.graph)
    return proto


def record_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Record inferred shapes in the graph (TIDL's importer reads them); verify reports errors."""
    inferred, _ = infer_shapes(proto)
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(inferred.graph.value_info)
    for output, inferred_output in zip(proto.graph.output, inferred.graph.output, strict=True):
        output.CopyFrom(inferred_output)
    return proto


def count_ops(proto: onnx.ModelProto, op_type: str) -> int:
    return sum(node.op_type == op_type for node in proto.graph.node)


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    """Move tensor Constant nodes into initializers: TIDL reads those as plain constants."""
    for node in [n for n in graph.node if n.op_type == "Constant"]:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if value is not None:
            tensor = graph.initializer.add()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            graph.node.remove(node)


def _remove_identities(graph: onnx.GraphProto) -> None:
    """Bypass Identity nodes (TIDL has no Identity layer), keeping graph output names."""
    outputs = {o.name for o in graph.output}
    produced = {name for node in graph.node for name in node.output}
    for node in [n for n in graph.node if n.op_type == "Identity"]:
        source, target = node.input[0], node.output[0]
        if target in outputs and source not in produced:
            continue  # an output that passes a graph input or constant through: keep it
        old, new = (source, target) if target in outputs else (target, source)
        for other in graph.node:
            other.input[:] = [new if name == old else name for name in other.input]
            other.output[:] = [new if name == old else name for name in other.output]
        graph.node.remove(node)


def set_resize_nearest_modes(graph: onnx.GraphProto) -> None:
    """Give linear half-pixel Resize nodes nearest_mode round_prefer_ceil, the one value TIDL's
    operator table names for half-pixel coordinates (a linear resize never reads it)."""
    for node in graph.node:
        if node.op_type != "Resize":
            continue
        attrs = {a.name: a for a in node.attribute}
        mode = attrs["mode"].s.decode() if "mode" in attrs else "nearest"
        coordinates = attrs.get("coordinate_transformation_mode")
        coordinates = coordinates.s.decode() if coordinates is not None else "half_pixel"
        if mode != "linear" or coordinates not in rules.HALF_PIXEL_MODES:
            continue
        if "nearest_mode" in attrs:
            node.attribute.remove(attrs["nearest_mode"])
        node.attribute.append(onnx.helper.make_attribute("nearest_mode", "round_prefer_ceil"))


def _remove_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def append_argmax(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Append ArgMax(axis=1, keepdims=1, select_last_index=0) after the model's output."""
    graph = proto.graph
    (output,) = graph.output
    for node in graph.node:
        node.output[:] = [_LOGITS_NAME if name == output.name else name for name in node.output]
    attributes = {"axis": 1, "keepdims": 1}
    if proto.opset_import[0].version >= 12:
        attributes["select_last_index"] = 0
    graph.node.append(
        onnx.helper.make_node(
            "ArgMax", [_LOGITS_NAME], [OUTPUT_NAME], name="/argmax/ArgMax", **attributes
        )
    )
    del graph.output[:]
    graph.output.append(
        onnx.helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.INT64, None)
    )
    return proto


def nudged_layers(graph: onnx.GraphProto, widths: TensorBits) -> list[str]:
    """The weight layers whose weights deploy conversion nudged so that TIDL keeps their QAT
    scale on import (grid.keep_scale_on_import)."""
    initializers = {init.name: init for init in graph.initializer}
    nudged = []
    for node in graph.node:
        weight = initializers.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type not in rules.QUANTIZED_WEIGHT_OPS or weight is None:
            continue
        bits = widths.weight_bits(node.output[0])
        if nudged_entries(numpy_helper.to_array(weight), bits):
            nudged.append(node.name or node.input[1])
    return nudged
