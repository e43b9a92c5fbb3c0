"""verify_onnx on hand-built graphs: a clean QAT graph passes, each planted defect is named."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgezoo.export import TIDL_SUPPORTED_OPS, verify_onnx

FLOAT = TensorProto.FLOAT


class GraphBuilder:
    """A tiny ONNX graph builder: NCHW input, named nodes, constants as initializers."""

    def __init__(self, shape=(1, 3, 8, 8)) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.input = helper.make_tensor_value_info("input", FLOAT, list(shape))
        self.count = 0

    def const(self, values, dtype=np.float32) -> str:
        self.count += 1
        name = f"const_{self.count}"
        self.initializers.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def node(self, op, inputs, name, **attrs) -> str:
        output = f"{name}_out"
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output

    def clip(self, x, low, high, name) -> str:
        return self.node("Clip", [x, self.const(low), self.const(high)], name)

    def conv(self, x, c_in, c_out, name, kernel=3, stride=1, group=1, weight=None) -> str:
        if weight is None:
            rng = np.random.default_rng(self.count)
            # Integers on the 8-bit grid of scale 2^7 / 1 (max|w| <= 1, max|k| > 64).
            k = rng.integers(-100, 101, size=(c_out, c_in // group, kernel, kernel))
            k.flat[0] = 120
            weight = k / 128.0
        inputs = [x, self.const(weight), self.const(np.zeros(c_out))]
        pads = [kernel // 2] * 4
        return self.node(
            "Conv",
            inputs,
            name,
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=pads,
            group=group,
        )

    def build(self, output, opset=11, output_shape=None) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "planted",
            [self.input],
            [
                helper.make_empty_tensor_value_info(output)
                if output_shape is None
                else helper.make_tensor_value_info(output, FLOAT, output_shape)
            ],
            self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        if output_shape is None:
            inferred = onnx.shape_inference.infer_shapes(model)
            model.graph.output[0].CopyFrom(inferred.graph.output[0])
        return model


NEAREST_FLOOR = {
    "mode": "nearest",
    "coordinate_transformation_mode": "asymmetric",
    "nearest_mode": "floor",
}
"""What torch exports for a nearest x2 upsample (and TIDL takes)."""


def test_half_pixel_resizes_need_round_prefer_ceil():
    g, out = clean_graph(nearest_mode="round_prefer_floor")
    report, found = violations(g.build(out))
    assert found == [("resize", "/up")]
    assert "round_prefer_ceil" in report.violations[0].message


def clean_graph(**resize_attrs):
    """input -> Clip -> Conv -> Clip -> dw Conv -> Clip -> Resize x2 -> Concat -> Conv -> Clip."""
    g = GraphBuilder()
    x = g.clip("input", -4.0, 4.0, "/input_clip")
    a = g.clip(g.conv(x, 3, 8, "/conv1"), 0.0, 8.0, "/act1")
    d = g.clip(g.conv(a, 8, 8, "/dw", stride=2, group=8), -2.0, 2.0, "/act2")
    attrs = {
        "mode": "linear",
        "coordinate_transformation_mode": "half_pixel",
        "nearest_mode": "round_prefer_ceil",
    } | resize_attrs
    up = g.node("Resize", [d, g.const([]), g.const([1, 1, 2, 2])], "/up", **attrs)
    cat = g.clip(g.node("Concat", [a, up], "/cat", axis=1), 0.0, 8.0, "/cat_clip")
    out = g.clip(g.conv(cat, 16, 4, "/head", kernel=1), -16.0, 16.0, "/out_clip")
    return g, out


def violations(model, **kwargs):
    report = verify_onnx(model, **kwargs)
    return report, [(v.rule, v.node) for v in report.violations]


def test_clean_qat_graph_passes():
    g, out = clean_graph()
    report = verify_onnx(g.build(out))
    assert report.ok, str(report)
    assert report.node_counts["Clip"] == 5
    assert "OK" in str(report)


def test_supported_set_excludes_the_ops_tidl_rejects():
    assert {"Conv", "Clip", "Resize", "GlobalAveragePool", "ArgMax"} <= TIDL_SUPPORTED_OPS
    assert not {"ReduceMean", "Identity", "Shape", "Gather", "Cast"} & TIDL_SUPPORTED_OPS


def test_align_corners_resize_is_named():
    g, out = clean_graph(coordinate_transformation_mode="align_corners")
    report, found = violations(g.build(out))
    assert found == [("resize", "/up")]
    assert "align_corners" in report.violations[0].message


def test_nearest_asymmetric_needs_floor():
    g, out = clean_graph(mode="nearest", coordinate_transformation_mode="asymmetric")
    report, found = violations(g.build(out))
    assert found == [("resize", "/up")]
    assert "floor" in report.violations[0].message
    g, out = clean_graph(
        mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"
    )
    assert verify_onnx(g.build(out)).ok


def test_cubic_resize_is_named():
    g, out = clean_graph(mode="cubic")
    report, found = violations(g.build(out))
    assert found == [("resize", "/up")]
    assert "'cubic'" in report.violations[0].message


@pytest.mark.parametrize(
    ("scales", "shape_ok"),
    [([1, 1, 3, 3], False), ([1, 1, 2, 4], False), ([1, 1, 0.5, 0.5], False)],
)
def test_bad_resize_scales_are_named(scales, shape_ok):
    g = GraphBuilder()
    x = g.clip("input", -4.0, 4.0, "/input_clip")
    up = g.node("Resize", [x, g.const([]), g.const(scales)], "/up", **NEAREST_FLOOR)
    report, found = violations(g.build(up))
    assert ("resize", "/up") in found
    message = next(v.message for v in report.violations if v.rule == "resize")
    assert str([float(s) for s in scales]) in message and "power of two" in message


def test_resize_sizes_input_is_named():
    g = GraphBuilder()
    x = g.clip("input", -4.0, 4.0, "/input_clip")
    sizes = g.const([1, 3, 16, 16], dtype=np.int64)
    up = g.node("Resize", [x, g.const([]), g.const([]), sizes], "/up", **NEAREST_FLOOR)
    report, found = violations(g.build(up))
    assert found == [("resize", "/up")]
    assert "'sizes' input" in report.violations[0].message


def test_reused_range_conv_to_conv_without_clip():
    g = GraphBuilder()
    x = g.clip("input", -4.0, 4.0, "/input_clip")
    first = g.conv(x, 3, 8, "/conv1")
    out = g.clip(g.conv(first, 8, 8, "/conv2"), 0.0, 4.0, "/act2")
    report, found = violations(g.build(out))
    assert found == [("range-coverage", "/conv1")]
    assert "Conv '/conv2' without a Clip" in report.violations[0].message
    assert verify_onnx(g.build(out), quantized=False).ok


def test_unclipped_path_through_relu_and_pool_is_followed():
    g = GraphBuilder()
    x = g.clip("input", -4.0, 4.0, "/input_clip")
    first = g.conv(x, 3, 8, "/conv1")
    pooled = g.node("MaxPool", [g.node("Relu", [first], "/relu")], "/pool", kernel_shape=[2, 2])
    add = g.node("Add", [pooled, pooled], "/add")
    out = g.clip(add, -8.0, 8.0, "/add_clip")
    _, found = violations(g.build(out))
    assert found == [("range-coverage", "/conv1")]


def test_reduce_mean_is_named():
    g = GraphBuilder()
    x = g.clip("input", -4.0, 4.0, "/input_clip")
    mean = g.node("ReduceMean", [x], "/pool", axes=[2, 3], keepdims=1)
    report, found = violations(g.build(mean))
    assert found == [("reduce-mean", "/pool")]
    assert "GlobalAveragePool" in report.violations[0].message


def test_identity_is_named():
    g = GraphBuilder()
    x = g.clip("input", -4.0, 4.0, "/input_clip")
    out = g.node("Identity", [x], "/same")
    _, found = violations(g.build(out))
    assert found == [("identity", "/same")]


def test_concat_on_batch_axis_is_named():
    g = GraphBuilder()
    x = g.clip("input", -4.0, 4.0, "/input_clip")
    cat = g.clip(g.node("Concat", [x, x], "/cat", axis=0), -4.0, 4.0, "/cat_clip")
    report, found = violations(g.build(cat))
    assert found == [("concat-axis", "/cat")]
    assert "axis 0" in report.violations[0].message


@pytest.mark.parametrize(
    ("low", "high", "quantized", "needle"),
    [
        (1.0, 4.0, True, "min <= 0 < max"),
        (-1.0, -0.5, False, "min <= 0 < max"),
        (0.0, 6.0, True, "max = 2^k"),
        (-2.0, 4.0, True, "min = 0 (unsigned) or -max"),
    ],
)
def test_bad_clip_bounds_are_named(low, high, quantized, needle):
    g = GraphBuilder()
    out = g.clip("input", low, high, "/bad_clip")
    report, found = violations(g.build(out), quantized=quantized)
    assert found == [("clip-bounds", "/bad_clip")]
    assert needle in report.violations[0].message


def test_relu6_clip_is_fine_in_a_float_graph():
    g = GraphBuilder()
    out = g.clip("input", 0.0, 6.0, "/relu6")
    assert verify_onnx(g.build(out), quantized=False).ok


def test_non_constant_clip_bound_is_named():
    g = GraphBuilder()
    out = g.node("Clip", ["input", "", "input"], "/clip")
    _, found = violations(g.build(out), quantized=False)
    assert ("clip-bounds", "/clip") in found


def test_unsupported_depthwise_kernel_is_named():
    g = GraphBuilder((1, 8, 16, 16))
    x = g.clip("input", -4.0, 4.0, "/input_clip")
    out = g.clip(g.conv(x, 8, 8, "/dw9", kernel=9, group=8), 0.0, 4.0, "/act")
    report, found = violations(g.build(out))
    assert found == [("depthwise-conv", "/dw9")]
    assert "3x3s1" in report.violations[0].message


def test_gemm_attributes_and_argmax_attributes_are_named():
    g = GraphBuilder((1, 3, 8, 8))
    x = g.clip("input", -4.0, 4.0, "/input_clip")
    flat = g.node("Flatten", [x], "/flatten")
    fc = g.node(
        "Gemm", [flat, g.const(np.full((10, 192), 0.375)), g.const(np.zeros(10))], "/fc", transB=1
    )
    fc_t = g.node(
        "Gemm",
        [g.clip(fc, -8.0, 8.0, "/fc_clip"), g.const(np.full((10, 10), 0.375))],
        "/fc_alpha",
        transB=1,
        alpha=0.5,
    )
    arg = g.node("ArgMax", [g.clip(fc_t, -8.0, 8.0, "/fc2_clip")], "/argmax", axis=0, keepdims=1)
    _, found = violations(g.build(arg))
    assert sorted(found) == [("argmax", "/argmax"), ("gemm", "/fc_alpha")]


def test_reshape_with_computed_shape_is_named():
    g = GraphBuilder()
    x = g.clip("input", -4.0, 4.0, "/input_clip")
    shape = g.node("Shape", [x], "/shape")
    out = g.node("Reshape", [x, shape], "/reshape")
    _, found = violations(g.build(out))
    assert ("reshape", "/reshape") in found
    assert ("unsupported-op", "/shape") in found


def test_opset_outside_tidl_range_is_named():
    g, out = clean_graph()
    report, found = violations(g.build(out, opset=20))
    assert ("opset", "<graph>") in found
    assert "opset 20" in str(report)


def test_graph_input_must_be_clipped_when_the_model_quantizes_it():
    g = GraphBuilder()
    out = g.clip(g.conv("input", 3, 8, "/conv1"), 0.0, 4.0, "/act")
    _, found = violations(g.build(out))
    assert found == [("input-clip", "input")]
    assert verify_onnx(g.build(out), input_clipped=False).ok


def test_float_weights_are_not_on_the_grid():
    g = GraphBuilder()
    x = g.clip("input", -4.0, 4.0, "/input_clip")
    weight = np.random.default_rng(0).normal(size=(8, 3, 3, 3)).astype(np.float32)
    out = g.clip(g.conv(x, 3, 8, "/conv1", weight=weight), 0.0, 4.0, "/act")
    _, found = violations(g.build(out))
    assert found == [("weight-grid", "/conv1")]
    assert verify_onnx(g.build(out), quantized=False).ok


def test_dynamic_shape_is_named():
    g, out = clean_graph()
    g.input = helper.make_tensor_value_info("input", FLOAT, ["batch", 3, 8, 8])
    _, found = violations(g.build(out))
    assert ("shape-inference", "input") in found


def test_a_value_no_node_makes_is_named():
    g, out = clean_graph()
    model = g.build(out)
    model.graph.node[1].input[0] = "nowhere"
    report, found = violations(model)
    assert found == [("graph-order", "<graph>")] and "'nowhere'" in str(report)


def test_verify_reads_a_file(tmp_path):
    g, out = clean_graph()
    path = tmp_path / "clean.onnx"
    onnx.save(g.build(out), path)
    report = verify_onnx(path)
    assert report.ok and report.source == str(path)
    with pytest.raises(FileNotFoundError, match="no ONNX file"):
        verify_onnx(tmp_path / "missing.onnx")
