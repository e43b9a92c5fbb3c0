"""verify_onnx: check an ONNX graph against TIDL's import rules and list every violation.

The rules come from tidl_rules.py. A QAT ("quantized") graph must also carry its own activation
ranges (a Clip with power-of-two bounds after every Conv/Gemm/Add/Concat before the next one)
and weights on TIDL's per-tensor power-of-two grid; a float graph is left to TIDL's calibration.
"""

import os
from collections import Counter
from collections.abc import Iterator

import numpy as np
import onnx

from edgezoo.errors import UnreadableModelError
from edgezoo.export.qdq_rules import QDQ_OPS, check_qdq_graph, is_qdq_graph
from edgezoo.export.report import GraphViolation, VerifyReport
from edgezoo.export.weight_grid import GRID_TOLERANCE_STEPS, grid_error_steps
from edgezoo.onnxgraph.io import load_onnx
from edgezoo.onnxgraph.tools import (
    check_model,
    infer_shapes,
    node_attributes,
    order_problem,
    read_constants,
)
from edgezoo.quantization.grid import ACTIVATION_ROUNDINGS, BIAS_RULES, ceil2
from edgezoo.tidl import rules

__all__ = ["input_range", "load_onnx", "normalised_input_range", "verify_onnx"]

_DEFAULT_DOMAINS = ("", "ai.onnx")


def verify_onnx(
    model: str | os.PathLike | onnx.ModelProto,
    quantized: bool = True,
    input_clipped: bool | None = None,
    allow_uncalibrated: bool = False,
) -> VerifyReport:
    """Check a graph (path or ModelProto) against TIDL's rules and report every violation.

    quantized: apply the QAT rules too (power-of-two Clip bounds, every range covered by a Clip,
    weights on TIDL's grid); pass False for a float model that TIDL will calibrate (PTQ).
    input_clipped: require a Clip between the graph input and the first Conv (default: equal to
    quantized; pass False for a QAT model trained with quantize_input=False).
    allow_uncalibrated: do not report the untrained ranges an export recorded in the graph.
    """
    if isinstance(model, onnx.ModelProto):
        proto, source = model, model.graph.name or "<ModelProto>"
    else:
        proto, source = load_onnx(model), str(model)
    checker = _GraphChecker(
        proto,
        quantized,
        quantized if input_clipped is None else input_clipped,
        allow_uncalibrated,
    )
    return VerifyReport(
        source=source,
        opset=checker.opset,
        quantized=quantized,
        node_counts=dict(Counter(node.op_type for node in proto.graph.node)),
        violations=tuple(checker.run()),
    )


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
    constants, _ = read_constants(proto.graph)
    inputs = [i.name for i in proto.graph.input if i.name not in constants]
    for index, node in enumerate(proto.graph.node):
        if not inputs or not node.input or node.input[0] != inputs[0]:
            continue
        values = [constants.get(name) for name in node.input[1:3]]
        if len(values) != 2 or any(v is None or v.size != 1 for v in values):
            continue
        name = node.name or f"{node.op_type}_{index}"
        if node.op_type == "Clip":
            return name, float(values[0]), float(values[1])
        if node.op_type == "QuantizeLinear":
            scale, zero = float(values[0]), values[1]
            info = np.iinfo(zero.dtype)
            return name, (info.min - int(zero)) * scale, (info.max - int(zero)) * scale
    return None


def _metadata_problems(proto) -> list[str]:
    """What is wrong with the edgezoo properties an export recorded (empty when nothing)."""
    props = rules.graph_properties(proto)
    problems = []
    try:
        rules.graph_bits(proto)
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


class _GraphChecker:
    """One pass over a graph: indexes producers, consumers, constants and shapes, then checks."""

    def __init__(
        self,
        proto: onnx.ModelProto,
        quantized: bool,
        input_clipped: bool,
        allow_uncalibrated: bool = False,
    ) -> None:
        self.proto = proto
        self.quantized = quantized
        self.input_clipped = input_clipped
        self.allow_uncalibrated = allow_uncalibrated
        self.metadata_problems = _metadata_problems(proto)
        self.weight_bits = 8 if self.metadata_problems else rules.graph_bits(proto)[0]
        self.opset = next(
            (o.version for o in proto.opset_import if o.domain in _DEFAULT_DOMAINS), None
        )
        inferred, self.inference_error = infer_shapes(proto)
        graph = proto.graph
        self.nodes = list(graph.node)
        self.names = [node.name or f"{node.op_type}_{i}" for i, node in enumerate(self.nodes)]
        self.constants, self.payload_problems = read_constants(graph)
        self.consumers: dict[str, list[int]] = {}
        self.producer_nodes: dict[str, onnx.NodeProto] = {}
        for index, node in enumerate(self.nodes):
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(index)
            for name in node.output:
                self.producer_nodes[name] = node
        self.producers = {name: node.op_type for name, node in self.producer_nodes.items()}
        self.qdq = is_qdq_graph(proto)
        self.shapes: dict[str, tuple[int, ...] | None] = {}
        for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
            self.shapes[info.name] = _static_shape(info)
        for name, value in self.constants.items():
            self.shapes[name] = tuple(value.shape)
        self.node_checks = {
            "Clip": self._check_clip,
            "Resize": self._check_resize,
            "Concat": self._check_concat,
            "Conv": self._check_conv,
            "Gemm": self._check_gemm,
            "ArgMax": self._check_argmax,
            "Reshape": self._check_reshape,
            "Add": self._check_eltwise,
            "Mul": self._check_eltwise,
        }

    def run(self) -> Iterator[GraphViolation]:
        """Yield every violation: graph-level rules first, then node by node. A graph whose
        nodes cannot run in order is reported alone: the other rules assume an order."""
        problem = order_problem(self.proto.graph)
        if problem is not None:
            yield GraphViolation("graph-order", "<graph>", problem)
            return
        for problem in self.payload_problems:
            yield GraphViolation("tensor-payload", "<graph>", problem)
        if not self.proto.graph.output:
            yield GraphViolation("no-outputs", "<graph>", "the graph has no outputs")
        for problem in self.metadata_problems:
            yield GraphViolation("metadata", "<graph>", problem)
        yield from self._check_finite()
        yield from self._check_model()
        yield from self._check_opset()
        yield from self._check_shapes()
        for index, node in enumerate(self.nodes):
            yield from self._check_node(node, self.names[index])
        if self.qdq:
            yield from check_qdq_graph(self)
        elif self.quantized:
            yield from self._check_range_coverage()
            yield from self._check_weight_grid()
        if self.quantized:
            yield from self._check_trained_ranges()
            yield from self._check_input_range()
        if self.input_clipped and not self.qdq:
            yield from self._check_input_clipped()

    # Graph-level rules.

    def _check_finite(self) -> Iterator[GraphViolation]:
        """NaN or infinite constants: TIDL would import them as they are, and every output
        they reach would be meaningless."""
        for name, value in self.constants.items():
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                count = int((~np.isfinite(value)).sum())
                yield GraphViolation(
                    "non-finite",
                    name,
                    f"{count} NaN or infinite value(s): re-export from a model whose weights and "
                    "biases are finite (the checkpoint is damaged, or training diverged)",
                )

    def _check_model(self) -> Iterator[GraphViolation]:
        complaint = check_model(self.proto)
        if complaint is not None:
            yield GraphViolation("onnx-checker", "<graph>", f"onnx.checker rejects it: {complaint}")

    def _check_opset(self) -> Iterator[GraphViolation]:
        allowed = f"{rules.TIDL_OPSETS[0]}..{rules.TIDL_OPSETS[-1]}"
        if self.opset not in rules.TIDL_OPSETS:
            yield GraphViolation(
                "opset",
                "<graph>",
                f"ONNX opset {self.opset} is outside what TIDL imports ({allowed}); export "
                f"with opset {rules.EXPORT_OPSETS[0]} (TI's QAT recipe) to "
                f"{rules.EXPORT_OPSETS[-1]}",
            )
        for opset in self.proto.opset_import:
            if opset.domain not in _DEFAULT_DOMAINS:
                yield GraphViolation(
                    "opset",
                    "<graph>",
                    f"operator domain {opset.domain!r} (version {opset.version}) is not ONNX's "
                    "default domain; TIDL imports standard ONNX operators only",
                )

    def _check_shapes(self) -> Iterator[GraphViolation]:
        if self.inference_error:
            yield GraphViolation(
                "shape-inference",
                "<graph>",
                f"ONNX shape inference fails: {self.inference_error}; TIDL needs inferred shapes",
            )
        for graph_input in self.proto.graph.input:
            if graph_input.name not in self.constants and self.shapes.get(graph_input.name) is None:
                yield GraphViolation(
                    "shape-inference",
                    graph_input.name,
                    "graph input has no static shape; export with a fixed input size",
                )
        for index, node in enumerate(self.nodes):
            missing = [o for o in node.output if o and self.shapes.get(o) is None]
            if missing:
                yield GraphViolation(
                    "shape-inference",
                    self.names[index],
                    f"no static shape inferred for {', '.join(missing)}; run "
                    "onnx.shape_inference with a fixed input size before import",
                )

    # Node rules.

    def _check_node(self, node: onnx.NodeProto, name: str) -> Iterator[GraphViolation]:
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
        qdq_op = self.qdq and op in QDQ_OPS
        if node.domain not in _DEFAULT_DOMAINS or (
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
        check = self.node_checks.get(op)
        if check is not None:
            yield from check(node, name)

    def _check_clip(self, node: onnx.NodeProto, name: str) -> Iterator[GraphViolation]:
        bounds = self._clip_bounds(node)
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
        if self.quantized and not self.qdq and (ceil2(high) != high or low not in (0.0, -high)):
            yield GraphViolation(
                "clip-bounds",
                name,
                f"Clip({low:g}, {high:g}) is not a QAT range: TIDL's power-of-two quantization "
                "needs max = 2^k and min = 0 (unsigned) or -max (signed)",
            )

    def _check_resize(self, node: onnx.NodeProto, name: str) -> Iterator[GraphViolation]:
        attrs = node_attributes(node)
        mode = attrs.get("mode", "nearest")
        if mode not in rules.RESIZE_MODES:
            yield GraphViolation(
                "resize",
                name,
                f"Resize mode {mode!r} is not supported; TIDL takes "
                f"{' or '.join(sorted(rules.RESIZE_MODES))}",
            )
        coordinates = attrs.get("coordinate_transformation_mode", "half_pixel")
        if coordinates == "align_corners":
            yield GraphViolation(
                "resize",
                name,
                "Resize with coordinate_transformation_mode 'align_corners' is not supported by "
                "TIDL; upsample with align_corners=False (edgezoo.layers.ResizeWith)",
            )
        elif coordinates not in rules.RESIZE_COORDINATE_MODES:
            yield GraphViolation(
                "resize",
                name,
                f"Resize coordinate_transformation_mode {coordinates!r} is not supported; TIDL "
                f"takes {', '.join(sorted(rules.RESIZE_COORDINATE_MODES))}",
            )
        nearest_mode = attrs.get("nearest_mode", "round_prefer_floor")
        if coordinates in rules.HALF_PIXEL_MODES and nearest_mode != "round_prefer_ceil":
            yield GraphViolation(
                "resize",
                name,
                f"Resize with {coordinates} coordinates and nearest_mode {nearest_mode!r}: TIDL "
                "takes only 'round_prefer_ceil' there (edgezoo.export_onnx sets it on linear "
                "resizes, where it changes nothing)",
            )
        if mode == "nearest" and coordinates == "asymmetric" and nearest_mode != "floor":
            yield GraphViolation(
                "resize",
                name,
                f"nearest Resize with asymmetric coordinates needs nearest_mode 'floor', got "
                f"{nearest_mode!r}",
            )
        if attrs.get("antialias", 0):
            yield GraphViolation("resize", name, "Resize with antialias=1 is not supported")
        yield from self._check_resize_scales(node, name)

    def _check_resize_scales(self, node: onnx.NodeProto, name: str) -> Iterator[GraphViolation]:
        inputs = list(node.input)
        # Opset 10 has (X, scales); opset 11+ has (X, roi, scales, sizes).
        scales_name = inputs[1] if self.opset is not None and self.opset < 11 else None
        if scales_name is None:
            scales_name = inputs[2] if len(inputs) > 2 else ""
            if len(inputs) > 3 and inputs[3]:
                yield GraphViolation(
                    "resize",
                    name,
                    "Resize has a 'sizes' input, which TIDL does not support; resize by a "
                    "constant power-of-two scale factor instead (edgezoo.layers.ResizeWith)",
                )
                return
        scales = self.constants.get(scales_name) if scales_name else None
        if scales is None:
            yield GraphViolation(
                "resize",
                name,
                "Resize scales are missing or not constant; TIDL needs constant power-of-two "
                "scales",
            )
            return
        values = [float(v) for v in np.asarray(scales).ravel()]
        legal = (
            len(values) == 4
            and values[0] == values[1] == 1.0
            and values[2] == values[3]
            and values[2] >= 1.0
            and ceil2(values[2]) == values[2]
        )
        if not legal:
            yield GraphViolation(
                "resize",
                name,
                f"Resize scales {values} are not supported; TIDL needs [1, 1, s, s] with s an "
                "integer power of two >= 1 (equal for H and W)",
            )

    def _check_concat(self, node: onnx.NodeProto, name: str) -> Iterator[GraphViolation]:
        axis = node_attributes(node).get("axis")
        rank = self._rank(node.output[0])
        normalised = axis + rank if axis is not None and axis < 0 and rank else axis
        if normalised != 1:
            yield GraphViolation(
                "concat-axis",
                name,
                f"Concat on axis {axis}; TIDL concatenates on the channel axis (1) only "
                "(edgezoo.layers.CatBlock)",
            )

    def _check_conv(self, node: onnx.NodeProto, name: str) -> Iterator[GraphViolation]:
        attrs = node_attributes(node)
        weight = self.constants.get(node.input[1]) if len(node.input) > 1 else None
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
                    "depthwise-conv",
                    name,
                    f"depthwise Conv with kernel {kernel} and stride {stride} is not run by "
                    f"TIDL; supported: {supported}",
                )

    def _check_gemm(self, node: onnx.NodeProto, name: str) -> Iterator[GraphViolation]:
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

    def _check_argmax(self, node: onnx.NodeProto, name: str) -> Iterator[GraphViolation]:
        attrs = node_attributes(node)
        axis = attrs.get("axis", 0)
        rank = self._rank(node.input[0])
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

    def _check_reshape(self, node: onnx.NodeProto, name: str) -> Iterator[GraphViolation]:
        if len(node.input) < 2 or node.input[1] not in self.constants:
            yield GraphViolation(
                "reshape",
                name,
                "Reshape with a computed shape; TIDL needs a constant shape input (export with "
                "a fixed input size and simplify, or use torch.flatten)",
            )

    def _check_eltwise(self, node: onnx.NodeProto, name: str) -> Iterator[GraphViolation]:
        if len(node.input) != 2:
            yield GraphViolation(
                "eltwise", name, f"{node.op_type} with {len(node.input)} inputs; TIDL takes two"
            )
            return
        variables = [i for i in node.input if i not in self.constants]
        shapes = [self.shapes.get(i) for i in variables]
        if len(variables) == 2 and all(shapes) and (shapes[0][:1] != shapes[1][:1]):
            yield GraphViolation(
                "eltwise",
                name,
                f"{node.op_type} of shapes {shapes[0]} and {shapes[1]} broadcasts on the batch "
                "axis, which TIDL does not support",
            )

    # QAT rules.

    def _check_range_coverage(self) -> Iterator[GraphViolation]:
        for index, node in enumerate(self.nodes):
            if node.op_type not in rules.RANGE_PRODUCERS:
                continue
            for reached in self._unclipped_consumers(node.output[0]):
                yield GraphViolation(
                    "range-coverage",
                    self.names[index],
                    f"the {node.op_type} output reaches {self.nodes[reached].op_type} "
                    f"{self.names[reached]!r} without a Clip, so TIDL has no QAT range for it "
                    "(a reused activation module or a functional op?); give each op its own "
                    "module so quantization inserts a range",
                )

    def _check_input_clipped(self) -> Iterator[GraphViolation]:
        for graph_input in self.proto.graph.input:
            if graph_input.name in self.constants:
                continue
            for reached in self._unclipped_consumers(graph_input.name):
                yield GraphViolation(
                    "input-clip",
                    graph_input.name,
                    f"the graph input reaches {self.nodes[reached].op_type} "
                    f"{self.names[reached]!r} without a Clip; a QAT model that quantizes its "
                    "input starts with one (pass input_clipped=False if it was trained with "
                    "quantize_input=False)",
                )

    def _check_weight_grid(self) -> Iterator[GraphViolation]:
        for index, node in enumerate(self.nodes):
            if node.op_type not in rules.QUANTIZED_WEIGHT_OPS or len(node.input) < 2:
                continue
            weight = self.constants.get(node.input[1])
            if weight is None:
                continue
            error = grid_error_steps(weight, self.weight_bits)
            if error > GRID_TOLERANCE_STEPS:
                yield GraphViolation(
                    "weight-grid",
                    self.names[index],
                    f"weight {node.input[1]!r} is not on TIDL's per-tensor power-of-two grid "
                    f"(re-quantization moves it by up to {error:.3g} steps), so TIDL would not "
                    "run the weights QAT trained; export the QAT model with "
                    "edgezoo.export_onnx, or verify a float model with quantized=False",
                )

    def _check_trained_ranges(self) -> Iterator[GraphViolation]:
        props = {p.key: p.value for p in self.proto.metadata_props}
        untrained = props.get(rules.UNTRAINED_RANGES_PROP)
        if untrained and not self.allow_uncalibrated:
            yield GraphViolation(
                "untrained-ranges",
                "<graph>",
                f"{untrained} of the exported QAT ranges never saw data (initial clips +/-8): "
                "train or calibrate the model and export it again",
            )

    def _check_input_range(self) -> Iterator[GraphViolation]:
        """The input range must hold most of what the declared normalisation produces (a model
        calibrated on un-normalised inputs has an input range TIDL's inputs overflow)."""
        normalised = normalised_input_range(self.proto)
        found = input_range(self.proto)
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

    # Helpers.

    def _unclipped_consumers(self, value: str) -> list[int]:
        """Range-using nodes reachable from `value` through range-preserving nodes, no Clip."""
        found: list[int] = []
        stack, seen = [value], {value}
        while stack:
            for index in self.consumers.get(stack.pop(), []):
                node = self.nodes[index]
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

    def _clip_bounds(self, node: onnx.NodeProto) -> tuple[float, float] | None:
        if self.opset is not None and self.opset < 11:
            attrs = node_attributes(node)
            return float(attrs.get("min", -np.inf)), float(attrs.get("max", np.inf))
        bounds = []
        for position, default in ((1, -np.inf), (2, np.inf)):
            name = node.input[position] if len(node.input) > position else ""
            if not name:
                bounds.append(default)
                continue
            value = self.constants.get(name)
            if value is None or value.size != 1:
                return None
            bounds.append(float(value.ravel()[0]))
        return bounds[0], bounds[1]

    def _rank(self, value: str) -> int | None:
        shape = self.shapes.get(value)
        return len(shape) if shape is not None else None


def _static_shape(info: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    """The static shape of a tensor value, or None when unknown or symbolic."""
    tensor_type = info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims = tensor_type.shape.dim
    if any(not d.HasField("dim_value") for d in dims):
        return None
    return tuple(d.dim_value for d in dims)
