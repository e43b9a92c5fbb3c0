"""Walk an exported QAT Clip graph node by node in one arithmetic (integer or QAT float).

Every Conv, Gemm, Add and Concat reads tensors that lie on an activation range's grid: the
graph input after its Clip, or the output of a Clip (or of an op that keeps its input's grid).
A node that reads an accumulator no Clip requantized, or an op with no integer definition,
raises SimulationError naming the node.
"""

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import Tensor

from edgezoo.errors import SimulationError
from edgezoo.onnxgraph.indexed import IndexedGraph
from edgezoo.onnxgraph.tools import node_attributes, order_problem
from edgezoo.simulation.arithmetic import ConvSpec, PoolSpec
from edgezoo.simulation.values import Grid, Value
from edgezoo.tidl import rules

__all__ = ["ASSUMED_OPS", "GraphProgram", "GraphRun"]

_SUPPORTED = frozenset(
    {
        "Clip",
        "Conv",
        "Gemm",
        "Add",
        "Mul",
        "Sigmoid",
        "HardSigmoid",
        "BatchNormalization",
        "LeakyRelu",
        "Concat",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "Resize",
        "Flatten",
        "Reshape",
        "Split",
        "Transpose",
        "ArgMax",
        "Constant",
    }
)


ASSUMED_OPS = frozenset({"Sigmoid", "HardSigmoid", "BatchNormalization", "LeakyRelu"})
"""Ops whose TIDL arithmetic edgezoo does not know (the gates' lookup tables; how TIDL scales a
BatchNorm no conv folds, as DenseNet's pre-activation ones, and LeakyReLU's slope): simulated as
the QAT model computes them, rounded onto their output range, so agreement there is with that
model."""


@dataclass
class GraphRun:
    """The graph outputs and, by node name and by output name, what each node computed."""

    outputs: list[Value | Tensor]
    nodes: dict[str, tuple[str, Value | Tensor]] = field(default_factory=dict)
    tensors: dict[str, Value | Tensor] = field(default_factory=dict)
    """With record: each node's output by ONNX tensor name."""


class GraphProgram:
    """A graph read once for many runs: its constants as tensors and who reads each value."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.proto = proto
        self.graph = IndexedGraph(proto)
        self.opset = self.graph.opset if self.graph.opset is not None else 11
        if self.graph.payload_problems:
            raise SimulationError(
                f"{self.graph.payload_problems[0]}; the file is damaged or was not written by ONNX"
            )
        self.constants = {
            name: torch.from_numpy(value.copy()) for name, value in self.graph.constants.items()
        }
        problem = order_problem(proto.graph)
        if problem is not None:
            raise SimulationError(f"{problem}; export the graph with edgezoo.export_onnx")
        broken = [name for name, value in self.constants.items() if _non_finite(value)]
        if broken:
            raise SimulationError(
                f"constant {broken[0]!r} holds NaN or infinite values: the graph cannot be "
                "simulated (re-export from a model with finite weights)"
            )
        self.names = self.graph.names
        kept = {o.name for o in proto.graph.output} | set(self.constants)
        self.released_after: list[list[str]] = [[] for _ in proto.graph.node]
        """Per node, the values no later node reads: freed then, so big inputs fit memory."""
        for name, readers in self.graph.consumers.items():
            if name not in kept:
                self.released_after[readers[-1]].append(name)
        inputs = self.graph.inputs
        if len(inputs) != 1:
            raise SimulationError(f"the graph has {len(inputs)} inputs; edgezoo simulates one")
        self.input_name = inputs[0]

    def run(self, inputs: Tensor | np.ndarray, arithmetic: Any, record: bool = False) -> GraphRun:
        """Run the graph's nodes in `arithmetic` on one input batch."""
        batch = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
        return _Runner(self, arithmetic).run({self.input_name: batch}, record)


class _Runner:
    """One pass over a graph program in one arithmetic."""

    def __init__(self, program: GraphProgram, arithmetic: Any) -> None:
        self.arithmetic = arithmetic
        self.bits = arithmetic.bits
        self.opset = program.opset
        self.constants = program.constants
        self.graph = program.graph
        self.names = program.names
        self.released_after = program.released_after
        self.outputs = {o.name for o in program.proto.graph.output}
        self.values: dict[str, Value | Tensor] = {}

    def run(self, inputs: dict[str, Tensor], record: bool) -> GraphRun:
        self.record = record
        self.values.update(inputs)
        run = GraphRun([])
        for index, (node, name) in enumerate(zip(self.graph.nodes, self.names, strict=True)):
            if node.op_type not in _SUPPORTED:
                raise SimulationError(
                    f"node {name} ({node.op_type}) has no definition in edgezoo's TIDL integer "
                    f"simulation (it runs {', '.join(sorted(_SUPPORTED))}); export the model "
                    "with edgezoo.export_onnx from a module-only QAT model"
                )
            try:
                out = getattr(self, f"_{node.op_type.lower()}")(node, name)
            except (KeyError, IndexError, TypeError) as err:
                raise SimulationError(
                    f"node {name} ({node.op_type}) is malformed ({type(err).__name__}: {err}): "
                    "a required attribute or input is missing; export the model with "
                    "edgezoo.export_onnx"
                ) from err
            parts = out if isinstance(out, list) else [out]  # Split makes several
            self.values.update(zip(node.output, parts, strict=True))
            if record:
                run.nodes[name] = (node.op_type, parts[0])
                run.tensors.update(zip(node.output, parts, strict=True))
            else:
                for released in self.released_after[index]:
                    self.values.pop(released, None)
        run.outputs = [self.values[o.name] for o in self.graph.proto.graph.output]
        return run

    # Helpers.

    def _ranged(self, node: onnx.NodeProto, name: str, position: int = 0) -> Value:
        value = self.values[node.input[position]]
        if isinstance(value, Tensor) or not value.ranged:
            source = "the graph input" if isinstance(value, Tensor) else "an accumulator"
            raise SimulationError(
                f"node {name} ({node.op_type}) reads {source} ({node.input[position]!r}) that no "
                "Clip quantized: TIDL has no range for it. Export the QAT model with "
                "edgezoo.export_onnx, which gives every Conv/Gemm/Add/Concat output a Clip"
            )
        return value

    def _pending(self, node: onnx.NodeProto, value: Value, grid: Grid) -> Value:
        """A value between grid points: kept for the Clip(s) that read it, else rounded onto
        its input's grid right away (as QAT's InputGridLayer does)."""
        readers = self.graph.reader_ops(node.output[0])
        if readers and all(op == "Clip" for op in readers):
            return value
        return self.arithmetic.settle(value, grid)

    # Ops.

    def _constant(self, node: onnx.NodeProto, name: str) -> Tensor:
        """A Constant node's value, read with the initializers (GraphProgram's constants)."""
        return self.constants[node.output[0]]

    def _clip(self, node: onnx.NodeProto, name: str) -> Value:
        low, high = self._clip_bounds(node, name)
        grid = Grid.of_clip(low, high, self.bits.activation_bits(node.output[0]))
        value = self.values[node.input[0]]
        if isinstance(value, Tensor):
            return self.arithmetic.quantize_input(value, grid)
        # A value no other node reads (and no record keeps, and not a graph output: an FPN
        # level that an activation also reads) may be requantized in place.
        owned = (
            not self.record
            and len(self.graph.consumers.get(node.input[0], [])) == 1
            and node.input[0] not in self.outputs
        )
        return self.arithmetic.clip(value, grid, owned)

    def _conv(self, node: onnx.NodeProto, name: str) -> Value:
        value = self._ranged(node, name)
        attrs = node_attributes(node)
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if attrs.get("auto_pad", "NOTSET") != "NOTSET" or pads[:2] != pads[2:]:
            raise SimulationError(f"node {name} (Conv) has asymmetric or automatic padding {pads}")
        spec = ConvSpec(
            tuple(attrs.get("strides", [1, 1])),
            (pads[0], pads[1]),
            tuple(attrs.get("dilations", [1, 1])),
            attrs.get("group", 1),
        )
        weight, bias = self._weight_and_bias(node, name)
        bits = self.bits.weight_bits(node.output[0])
        return self.arithmetic.conv(value, weight, bias, spec, bits)

    def _gemm(self, node: onnx.NodeProto, name: str) -> Value:
        value = self._ranged(node, name)
        attrs = node_attributes(node)
        if (
            attrs.get("transA", 0)
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
        ):
            raise SimulationError(f"node {name} (Gemm) needs transA=0, alpha=beta=1")
        weight, bias = self._weight_and_bias(node, name)
        if not attrs.get("transB", 0):
            weight = weight.t()
        return self.arithmetic.gemm(value, weight, bias, self.bits.weight_bits(node.output[0]))

    def _add(self, node: onnx.NodeProto, name: str) -> Value:
        return self.arithmetic.add(self._ranged(node, name, 0), self._ranged(node, name, 1))

    def _mul(self, node: onnx.NodeProto, name: str) -> Value:
        return self.arithmetic.mul(self._ranged(node, name, 0), self._ranged(node, name, 1))

    def _sigmoid(self, node: onnx.NodeProto, name: str) -> Value:
        return self._gate(node, name, torch.sigmoid)

    def _hardsigmoid(self, node: onnx.NodeProto, name: str) -> Value:
        attrs = node_attributes(node)
        alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
        if (alpha, beta) == (1 / 6, 0.5) or (abs(alpha - 1 / 6) < 1e-7 and beta == 0.5):
            return self._gate(node, name, F.hardsigmoid)  # PyTorch's, bit for bit
        return self._gate(node, name, lambda x: (x * alpha + beta).clamp_(0.0, 1.0))

    def _gate(self, node: onnx.NodeProto, name: str, function) -> Value:
        """A function of a ranged value whose device arithmetic is assumed (ASSUMED_OPS),
        rounded onto the grid of the Clip that reads it: evaluated in QAT's precision and
        rounded as QAT rounds it."""
        value = self._ranged(node, name)
        readers = self.graph.readers(node.output[0])
        if not readers or any(reader.op_type != "Clip" for reader in readers):
            raise SimulationError(
                f"node {name} ({node.op_type}) is not followed by a Clip: its output has no "
                "range; export the QAT model with edgezoo.export_onnx, which gives it one"
            )
        bits = self.bits.activation_bits(readers[0].output[0])
        grid = Grid.of_clip(*self._clip_bounds(readers[0], name), bits)
        return self.arithmetic.gate(value, function, grid)

    def _leakyrelu(self, node: onnx.NodeProto, name: str) -> Value:
        slope = float(node_attributes(node).get("alpha", 0.01))
        return self._gate(node, name, lambda x: F.leaky_relu(x, slope))

    def _batchnormalization(self, node: onnx.NodeProto, name: str) -> Value:
        """A BatchNorm no conv folded: per-channel affine in QAT's precision (as QAT's
        standalone BatchNorm computes it), rounded onto the range that reads it."""
        scale, shift, mean, variance = (self.constants[node.input[i]] for i in range(1, 5))
        epsilon = float(node_attributes(node).get("epsilon", 1e-5))

        def batch_norm(x: Tensor) -> Tensor:
            params = [t.to(x.dtype) for t in (mean, variance, scale, shift)]
            return F.batch_norm(x, *params, False, 0.0, epsilon)

        return self._gate(node, name, batch_norm)

    def _concat(self, node: onnx.NodeProto, name: str) -> Value:
        values = [self._ranged(node, name, i) for i in range(len(node.input))]
        return self.arithmetic.concat(values, node_attributes(node)["axis"])

    def _maxpool(self, node: onnx.NodeProto, name: str) -> Value:
        return self.arithmetic.max_pool(self._ranged(node, name), _pool_spec(node, name))

    def _averagepool(self, node: onnx.NodeProto, name: str) -> Value:
        value = self._ranged(node, name)
        pooled = self.arithmetic.average_pool(value, _pool_spec(node, name))
        return self._pending(node, pooled, value.grid)

    def _globalaveragepool(self, node: onnx.NodeProto, name: str) -> Value:
        value = self._ranged(node, name)
        return self._pending(node, self.arithmetic.global_average_pool(value), value.grid)

    def _resize(self, node: onnx.NodeProto, name: str) -> Value:
        value = self._ranged(node, name)
        mode, scale = _resize_mode_and_scale(node, name, self.constants, self.opset)
        resized = self.arithmetic.resize(value, scale, mode)
        return resized if mode == "nearest" else self._pending(node, resized, value.grid)

    def _flatten(self, node: onnx.NodeProto, name: str) -> Value:
        value = self._ranged(node, name)
        return replace(value, data=value.data.flatten(node_attributes(node).get("axis", 1)))

    def _reshape(self, node: onnx.NodeProto, name: str) -> Value:
        value = self._ranged(node, name)
        shape = self.constants.get(node.input[1])
        if shape is None:
            raise SimulationError(f"node {name} (Reshape) has no constant shape")
        return replace(value, data=value.data.reshape([int(v) for v in shape.tolist()]))

    def _split(self, node: onnx.NodeProto, name: str) -> list[Value]:
        """Channel parts of a ranged value: the integers cut, each part on the same grid."""
        value = self._ranged(node, name)
        attrs = node_attributes(node)
        sizes = attrs.get("split")
        if sizes is None and len(node.input) > 1 and node.input[1]:
            sizes = self.constants[node.input[1]].tolist()
        if sizes is None:
            sizes = [value.data.shape[attrs.get("axis", 0)] // len(node.output)] * len(node.output)
        parts = value.data.split([int(s) for s in sizes], dim=attrs.get("axis", 0))
        return [replace(value, data=part) for part in parts]

    def _transpose(self, node: onnx.NodeProto, name: str) -> Value:
        """A permutation of the axes (a channel shuffle's middle step): the grid is kept."""
        value = self._ranged(node, name)
        order = node_attributes(node).get("perm") or list(range(value.data.dim()))[::-1]
        return replace(value, data=value.data.permute(*order).contiguous())

    def _argmax(self, node: onnx.NodeProto, name: str) -> Tensor:
        value = self.values[node.input[0]]
        return self.arithmetic.argmax(value, node_attributes(node).get("axis", 0))

    def _weight_and_bias(self, node: onnx.NodeProto, name: str) -> tuple[Tensor, Tensor | None]:
        weight = self.constants.get(node.input[1])
        if weight is None:
            raise SimulationError(f"node {name} ({node.op_type}) has no constant weight")
        bias = self.constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        return weight, bias

    def _clip_bounds(self, node: onnx.NodeProto, name: str) -> tuple[float, float]:
        bounds = self.graph.clip_bounds(node)
        if bounds is None or not np.isfinite(bounds).all():
            raise SimulationError(f"node {name} (Clip) needs constant scalar min and max")
        return bounds


def _non_finite(value: Tensor) -> bool:
    return value.is_floating_point() and not bool(torch.isfinite(value).all())


def _pool_spec(node: onnx.NodeProto, name: str) -> PoolSpec:
    attrs = node_attributes(node)
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if pads[:2] != pads[2:] or any(d != 1 for d in attrs.get("dilations", [1, 1])):
        raise SimulationError(f"node {name} ({node.op_type}) has asymmetric padding or dilation")
    kernel = tuple(attrs["kernel_shape"])
    return PoolSpec(
        kernel,
        tuple(attrs.get("strides", kernel)),
        (pads[0], pads[1]),
        bool(attrs.get("ceil_mode", 0)),
        bool(attrs.get("count_include_pad", 0)),
    )


def _resize_mode_and_scale(
    node: onnx.NodeProto, name: str, constants: dict[str, Tensor], opset: int
) -> tuple[str, int]:
    attrs = node_attributes(node)
    mode = attrs.get("mode", "nearest")
    coordinates = attrs.get("coordinate_transformation_mode", "half_pixel")
    scales_name = node.input[1] if opset < 11 else (node.input[2] if len(node.input) > 2 else "")
    scales = constants.get(scales_name)
    square = scales is not None and scales.numel() == 4 and float(scales[2]) == float(scales[3])
    factor = float(scales[-1]) if square else 0.0
    legal_coordinates = coordinates in rules.HALF_PIXEL_MODES if mode == "linear" else True
    if scales is None or not rules.is_resize_scale(factor):
        raise SimulationError(
            f"node {name} (Resize) needs constant power-of-two scales, equal for H and W"
        )
    if mode not in rules.RESIZE_MODES or not legal_coordinates:
        raise SimulationError(
            f"node {name} (Resize {mode}, {coordinates}) is not a TIDL resize: nearest, or "
            "linear with half_pixel coordinates"
        )
    return mode, int(factor)
