"""to_qdq: rewrite an exported QAT Clip graph as an ONNX QDQ graph (prequantized import).

The Clip graph already holds everything: each Clip's bounds define its range's grid (power-of-
two, or affine: quantization/affine.py), and each Conv/Gemm weight lies on a power-of-two grid
per tensor or per output channel. The rewrite, node by node:

- every Clip becomes QuantizeLinear -> DequantizeLinear with its grid's scale and zero point
  (int8 when signed and symmetric, else uint8); the DequantizeLinear output keeps the Clip's
  output name, so the rest of the graph is unchanged;
- MaxPool, AveragePool, GlobalAveragePool and Resize keep their input's grid (TIDL's layers need
  Q/DQ around them): where no Clip reads their output, a Q/DQ pair on the input's grid follows
  them, which is what the QAT forward computes (a max pool and a nearest resize only move
  values; InputGridLayer rounds the others onto that grid);
- each Conv/Gemm weight becomes an int8 initializer with a DequantizeLinear (per tensor, or on
  the output-channel axis), its bias an int32 initializer at the joint scale (input scale x
  weight scale) with a DequantizeLinear.

TIDL's QDQ import is 8-bit only, and the opset is raised to 13 (per-axis DequantizeLinear).
"""

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from edgezoo.errors import ExportVerificationError
from edgezoo.export.weight_grid import GRID_TOLERANCE_STEPS
from edgezoo.onnxgraph.indexed import DEFAULT_DOMAINS, IndexedGraph
from edgezoo.quantization.affine import AFFINE_SCALES, AffineGrid, affine_grid
from edgezoo.quantization.grid import clip_step, import_weight_scale
from edgezoo.tidl import rules

__all__ = ["clip_grid", "to_qdq"]

_BIAS_TOLERANCE_STEPS = 0.05
"""How far from its grid an exported bias may be (float32 rounding of affine joint scales)."""


def clip_grid(clip_min: float, clip_max: float, bitwidth: int, scales: str) -> AffineGrid:
    """The QuantizeLinear grid of a Clip range: power-of-two (scale c / 2^(b-1) signed, c / 2^b
    unsigned, zero point 0) or affine."""
    if scales == AFFINE_SCALES:
        return affine_grid(clip_min, clip_max, bitwidth)
    step, low, high = clip_step(clip_min, clip_max, bitwidth)
    return AffineGrid(step, 0, low, high)


@dataclass
class _Rewrite:
    """The graph being rewritten: new nodes, new initializers, and each tensor's grid."""

    model: onnx.ModelProto
    bitwidth: int
    scales: str

    def __post_init__(self) -> None:
        self.index = IndexedGraph(self.model)
        self.graph = self.model.graph
        self.constants = self.index.constants
        self.grids: dict[str, AffineGrid] = {}
        self.nodes: list[onnx.NodeProto] = []

    def run(self) -> None:
        for node in list(self.graph.node):
            if node.op_type == "Clip":
                self._clip(node)
                continue
            if node.op_type in rules.QDQ_WEIGHT_OPS:
                self._weights(node)
            self.nodes.append(node)
            if node.op_type in rules.QDQ_GRID_KEEPING_OPS:
                self._keep_grid(node)
        del self.graph.node[:]
        self.graph.node.extend(self.nodes)

    def _constant(self, name: str, array: np.ndarray) -> str:
        self.graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    def _qdq(self, source: str, target: str, grid: AffineGrid, label: str) -> None:
        """source -> QuantizeLinear -> DequantizeLinear -> target, on `grid`."""
        zero_type = np.int8 if grid.signed else np.uint8
        scale = self._constant(f"{label}_scale", np.asarray(grid.scale, dtype=np.float32))
        zero = self._constant(f"{label}_zero_point", np.asarray(grid.zero_point, dtype=zero_type))
        quantized = f"{label}_quantized"
        self.nodes.append(
            helper.make_node(
                "QuantizeLinear", [source, scale, zero], [quantized], name=f"{label}/Quantize"
            )
        )
        self.nodes.append(
            helper.make_node(
                "DequantizeLinear", [quantized, scale, zero], [target], name=f"{label}/Dequantize"
            )
        )
        self.grids[target] = grid

    def _clip(self, node: onnx.NodeProto) -> None:
        bounds = [self.constants.get(name) for name in node.input[1:3]]
        if len(bounds) != 2 or any(b is None for b in bounds):
            raise ExportVerificationError(
                f"Clip {node.name} has no constant bounds; a QDQ export needs each range's clip"
            )
        low, high = (float(b) for b in bounds)
        grid = clip_grid(low, high, self.bitwidth, self.scales)
        self._qdq(node.input[0], node.output[0], grid, node.name or node.output[0])

    def _keep_grid(self, node: onnx.NodeProto) -> None:
        grid = self.grids.get(node.input[0])
        if grid is None:
            return
        output = node.output[0]
        readers = self.index.readers(output)
        if node.op_type not in rules.QDQ_AFTER_OPS or (
            readers and all(r.op_type == "Clip" for r in readers)
        ):
            self.grids[output] = grid
            return
        raw = f"{output}_unquantized"
        node.output[0] = raw
        self._qdq(raw, output, grid, f"{node.name or output}/grid")

    def _weights(self, node: onnx.NodeProto) -> None:
        grid = self.grids.get(node.input[0])
        if grid is None:
            raise ExportVerificationError(
                f"{node.op_type} {node.name} reads {node.input[0]!r}, which no range quantized; "
                "a QDQ export needs every Conv/Gemm input on a grid (export the QAT model)"
            )
        weight = self.constants[node.input[1]]
        axis = _weight_axis(node)
        integers, weight_scale = _weight_integers(weight, self.bitwidth, axis, node.name)
        label = node.name or node.output[0]
        node.input[1] = self._dequantized(
            integers.astype(np.int8), weight_scale, axis, f"{label}/weight", np.int8
        )
        if len(node.input) > 2 and node.input[2]:
            bias = self.constants[node.input[2]].astype(np.float64)
            bias_scale = np.float32(grid.scale) * weight_scale
            bias_integers = _bias_integers(bias, bias_scale, node.name)
            node.input[2] = self._dequantized(
                bias_integers, bias_scale, 0, f"{label}/bias", np.int32
            )

    def _dequantized(
        self, integers: np.ndarray, scale: np.ndarray, axis: int, label: str, dtype
    ) -> str:
        """A DequantizeLinear of integer initializers; per axis when scale is a vector."""
        values = self._constant(f"{label}_quantized", integers.astype(dtype))
        scale_name = self._constant(f"{label}_scale", scale.astype(np.float32))
        zero = self._constant(f"{label}_zero_point", np.zeros(scale.shape, dtype=dtype))
        attributes = {"axis": axis} if scale.ndim else {}
        output = f"{label}_dequantized"
        self.nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [values, scale_name, zero],
                [output],
                name=f"{label}/Dequantize",
                **attributes,
            )
        )
        return output


def _weight_axis(node: onnx.NodeProto) -> int:
    """The output-channel axis of a Conv weight (0) or a Gemm B (0 when transB, else 1)."""
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 0


def _power_of_two_scale(weight: np.ndarray, bitwidth: int) -> float:
    """The per-tensor scale TIDL keeps for these weights (grid.import_weight_scale)."""
    return import_weight_scale(torch.tensor(weight), bitwidth)


def _weight_integers(
    weight: np.ndarray, bitwidth: int, axis: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """The weight's integers and its scale (value = integer * scale): per tensor when one
    power-of-two scale holds every weight (up to the nudge that keeps a per-tensor scale on
    TIDL's import, grid.keep_scale_on_import), else per output channel."""
    per_tensor = np.asarray(1.0 / _power_of_two_scale(weight, bitwidth))
    integers = weight.astype(np.float64) / per_tensor
    if np.abs(integers - np.round(integers)).max(initial=0.0) <= GRID_TOLERANCE_STEPS:
        return np.round(integers), per_tensor
    channels = np.moveaxis(weight, axis, 0)
    scales = np.array([1.0 / _power_of_two_scale(c, bitwidth) for c in channels])
    shape = [1] * weight.ndim
    shape[axis] = -1
    integers = weight.astype(np.float64) / scales.reshape(shape)
    if not np.array_equal(integers, np.round(integers)):
        raise ExportVerificationError(
            f"the weights of {name} are not on a power-of-two grid (per tensor or per channel); "
            "a QDQ export takes a QAT model's weights (export the QuantTrainModule)"
        )
    return integers, scales


def _bias_integers(bias: np.ndarray, scale: np.ndarray, name: str) -> np.ndarray:
    """The bias as int32 at the joint scale; it is on that grid already (the QAT bias)."""
    steps = bias / np.broadcast_to(scale.astype(np.float64), bias.shape)
    integers = np.round(steps)
    if np.abs(steps - integers).max(initial=0.0) > _BIAS_TOLERANCE_STEPS:
        raise ExportVerificationError(
            f"the bias of {name} is not on its joint (input x weight) grid; a QDQ export takes a "
            "QAT model's biases (export the QuantTrainModule)"
        )
    return integers.astype(np.int32)


def to_qdq(proto: onnx.ModelProto, bitwidth: int, scales: str) -> onnx.ModelProto:
    """The QDQ form of an exported QAT Clip graph (a new ModelProto; see the module docstring)."""
    if bitwidth != 8:
        raise ExportVerificationError(
            f"TIDL imports prequantized (QDQ) graphs at 8 bits only, the model is {bitwidth}-bit; "
            "export it as a Clip graph for TDA4VM (export_format='clip' / --format clip), or train "
            "it at 8 bits"
        )
    qdq = onnx.ModelProto()
    qdq.CopyFrom(proto)
    _Rewrite(qdq, bitwidth, scales).run()
    for opset in qdq.opset_import:
        if opset.domain in DEFAULT_DOMAINS:
            opset.version = max(opset.version, rules.QDQ_MIN_OPSET)
    used = {name for node in qdq.graph.node for name in node.input}
    kept = [init for init in qdq.graph.initializer if init.name in used]
    del qdq.graph.initializer[:]
    qdq.graph.initializer.extend(kept)
    del qdq.graph.value_info[:]
    return qdq
