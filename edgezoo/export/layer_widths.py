"""Per-tensor bit widths of an export: each Clip and weight node found back in the deployed
model it was traced from, its width read there, and recorded as TensorBits.

The TorchScript exporter names each node after the module scope it was traced in
("/layer1/layer1.0/conv2/conv2.0/Conv": a child of a container is written with its
container's name in front), so the node's module is found by walking those scopes. A mixed
model whose wider layer cannot be placed on a node is refused, never exported at the base
width.
"""

from collections.abc import Mapping

import onnx
from torch import nn

from edgezoo.errors import ExportVerificationError
from edgezoo.onnxgraph.indexed import IndexedGraph
from edgezoo.quantization import Clip, GraphQuantization
from edgezoo.tidl import rules
from edgezoo.tidl.tensor_bits import TensorBits

__all__ = ["module_of_node", "record_widths", "tidl_16bit_names", "traced_widths"]

_WIDTH_OPS = frozenset({"Clip", *rules.QUANTIZED_WEIGHT_OPS})


def module_of_node(root: nn.Module, node_name: str) -> nn.Module | None:
    """The module whose forward wrote the node `node_name` (None when the scopes do not lead
    to one). A scope is the child's name with its container's in front, or, for an item of a
    ModuleList called directly ("heads.1"), a dotted path below the current module."""
    scopes = node_name.strip("/").split("/")[:-1]
    module, previous = root, ""
    for scope in scopes:
        path = (
            scope[len(previous) + 1 :] if previous and scope.startswith(previous + ".") else scope
        )
        try:
            module = module.get_submodule(path)
        except AttributeError:
            return None
        previous = scope
    return module


def traced_widths(proto: onnx.ModelProto, root: nn.Module) -> dict[str, int]:
    """Node name -> width of every Clip / weight node whose module records one (deploy's Clip,
    DeployedConv2d, DeployedLinear), read on the graph straight from the exporter."""
    widths = {}
    for node in proto.graph.node:
        if node.op_type in _WIDTH_OPS:
            module = module_of_node(root, node.name)
            if module is not None and hasattr(module, "bitwidth"):
                widths[node.name] = int(module.bitwidth)
    return widths


def record_widths(
    proto: onnx.ModelProto,
    traced: Mapping[str, int],
    deployed: nn.Module,
    settings: GraphQuantization,
) -> TensorBits:
    """The finished graph's widths: its base widths and every tensor that is wider. Raises
    ExportVerificationError when a wider layer of the model is on no node of the graph."""
    bits = TensorBits(settings.bitwidth_weights, settings.bitwidth_activations)
    activations, weights = {}, {}
    for node in proto.graph.node:
        width = traced.get(node.name)
        if width is None:
            continue
        if node.op_type == "Clip" and width != bits.bitwidth_activations:
            activations[node.output[0]] = width
        elif node.op_type != "Clip" and width != bits.bitwidth_weights:
            weights[node.output[0]] = width
    expected = _wider_layers(deployed, bits)
    if len(activations) + len(weights) != len(expected):
        raise ExportVerificationError(
            f"the model has {len(expected)} layer(s) wider than its {bits.bitwidth_weights}/"
            f"{bits.bitwidth_activations}-bit base ({', '.join(expected[:5])}), but only "
            f"{len(activations) + len(weights)} of them could be placed on the graph's nodes; "
            "nothing was written. Export without renaming modules in forward, or report it"
        )
    return TensorBits(bits.bitwidth_weights, bits.bitwidth_activations, activations, weights)


def _wider_layers(deployed: nn.Module, bits: TensorBits) -> list[str]:
    """The deployed modules whose width differs from the base (Clips against the activation
    width, weight layers against the weight width)."""
    wider = []
    for name, module in deployed.named_modules():
        width = getattr(module, "bitwidth", None)
        if width is None:
            continue
        base = bits.bitwidth_activations if isinstance(module, Clip) else bits.bitwidth_weights
        if width != base:
            wider.append(name)
    return wider


def tidl_16bit_names(
    proto: onnx.ModelProto, bits: TensorBits
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The TIDL layer names (output tensors) of the 16-bit (features, params) of a graph:
    TIDL merges a Clip into the layer before it, so a weight layer read only by a Clip is
    named by the Clip's output."""
    graph = IndexedGraph(proto)
    features = tuple(t for t, width in bits.activations.items() if width == 16)
    params = []
    for tensor, width in bits.weights.items():
        if width != 16:
            continue
        after = graph.readers(tensor)
        merged = len(after) == 1 and after[0].op_type == "Clip"
        params.append(after[0].output[0] if merged else tensor)
    if bits.bitwidth_activations == 16:
        features = ()
    return features, tuple(params) if bits.bitwidth_weights != 16 else ()
