"""QDQ export for the TI devices after TDA4VM: node pattern, integer initializers, TIDL's QDQ
rules, onnxruntime's int8 kernels against QAT, the device table and its compile options."""

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import briefly_trained, seeded_images
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import edgezoo
from edgezoo.cli import main
from edgezoo.errors import (
    CheckpointMismatchError,
    ExportVerificationError,
    QuantizationConfigError,
    UnknownTargetError,
)
from edgezoo.export.device_agreement import int8_agreement
from edgezoo.export.qdq_check import int8_kernels_may_saturate
from edgezoo.export.tidl_config import OPTION_MEANINGS
from edgezoo.models import BUILDERS
from edgezoo.quantization import QuantizationConfig, QuantTrainModule
from edgezoo.quantization.affine import affine_grid
from edgezoo.targets import TARGETS, resolve_target

QDQ = QuantizationConfig(target="am68a")
AFFINE = QuantizationConfig(target="am68a", per_channel_weights=True, asymmetric_activations=True)


trained = briefly_trained


def images(size: int, count: int = 4) -> torch.Tensor:
    return seeded_images(99, (count, 3, size, size))


def constants(proto: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in proto.graph.initializer}


def producer(proto: onnx.ModelProto, tensor: str) -> onnx.NodeProto:
    return next(node for node in proto.graph.node if tensor in node.output)


@pytest.mark.parametrize(
    ("name", "size", "config"),
    [
        ("resnet18", 32, QDQ),
        ("mobilenetv2", 32, QDQ),
        ("mobilenetv2", 32, AFFINE),
        ("deeplabv3plus_mobilenetv2", 64, QDQ),
    ],
    ids=["resnet18", "mobilenetv2", "mobilenetv2-affine", "deeplab"],
)
def test_a_qdq_export_holds_integers_passes_the_rules_and_runs_as_qat_in_int8(
    tmp_path, one_thread, name, size, config
):
    q = trained(BUILDERS[name](num_classes=5), size, config)
    path = tmp_path / "m.onnx"
    report = edgezoo.export_onnx(q, path, example_input=images(size, 1), write_configs=False)
    assert report.ok and report.verification.ok and report.target == "am68a"
    proto = onnx.load(path)
    ops = {node.op_type for node in proto.graph.node}
    assert "Clip" not in ops and {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert proto.opset_import[0].version >= 13
    init = constants(proto)
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        weight_dq = producer(proto, node.input[1])
        assert weight_dq.op_type == "DequantizeLinear"
        assert init[weight_dq.input[0]].data_type == TensorProto.INT8
        if len(node.input) > 2:
            bias_dq = producer(proto, node.input[2])
            assert init[bias_dq.input[0]].data_type == TensorProto.INT32
        assert producer(proto, node.input[0]).op_type in ("DequantizeLinear", "Flatten")
    zero_points = [
        numpy_helper.to_array(init[n.input[2]])
        for n in proto.graph.node
        if n.op_type == "QuantizeLinear"
    ]
    asymmetric = any(int(z) not in (0,) for z in zero_points)
    assert asymmetric == config.asymmetric_activations
    semantics = int8_agreement(proto, q, images(size), fused=False)
    int8 = int8_agreement(proto, q, images(size))
    if config.asymmetric_activations:
        # Affine scales are not powers of two: float32 sums round near-ties differently from
        # QAT's, and ORT's kernels requantize with a float32 multiplier.
        for figure in (semantics, int8):
            assert figure.share_within_one_step >= 0.99 and figure.max_steps <= 4
            assert figure.top1_agreement >= 0.9
    else:
        assert semantics.max_steps == 0 and semantics.top1_agreement == 1.0
        if not int8_kernels_may_saturate():
            assert int8.max_steps == 0 and int8.top1_agreement == 1.0
    one = images(size, 1)
    assert report.qdq_semantics == int8_agreement(proto, q, one, fused=False)
    assert report.int8 == int8_agreement(proto, q, one)


def test_per_channel_weights_get_one_scale_per_output_channel(tmp_path, one_thread):
    q = trained(BUILDERS["mobilenetv2"](num_classes=5), 32, AFFINE)
    path = tmp_path / "m.onnx"
    edgezoo.export_onnx(q, path, example_input=images(32, 1), write_configs=False)
    proto = onnx.load(path)
    init = constants(proto)
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    weight_dq = producer(proto, conv.input[1])
    scales = numpy_helper.to_array(init[weight_dq.input[1]])
    assert scales.shape == (init[weight_dq.input[0]].dims[0],)
    assert {a.name: a.i for a in weight_dq.attribute}["axis"] == 0
    assert all(float(s) == 2.0 ** np.round(np.log2(float(s))) for s in scales)


def test_an_affine_checkpoint_is_refused_by_a_power_of_two_model_and_reloads_into_its_own():
    affine = trained(BUILDERS["resnet18"](num_classes=5), 32, AFFINE, steps=1)
    state = affine.module.state_dict()
    scheme = r"asymmetric_activations|per_channel_weights"
    with pytest.raises(CheckpointMismatchError, match=scheme):
        QuantTrainModule(
            BUILDERS["resnet18"](num_classes=5), images(32, 1), config=QDQ
        ).module.load_state_dict(state)
    again = QuantTrainModule(BUILDERS["resnet18"](num_classes=5), images(32, 1), config=AFFINE)
    again.module.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(again.eval()(images(32)), affine(images(32)))


def test_the_affine_grid_of_a_range():
    assert affine_grid(0.0, 2.55) == pytest.approx((0.01, 0, 0, 255))
    symmetric = affine_grid(-1.27, 1.27)
    assert symmetric.zero_point == 0 and symmetric.qmin == -128
    asym = affine_grid(-1.0, 3.0)
    assert asym.qmin == 0 and asym.zero_point == round(1.0 / asym.scale)
    assert (asym.qmax - asym.zero_point) * asym.scale == pytest.approx(3.0, abs=asym.scale)


def test_the_device_table_picks_formats_and_refuses_what_a_device_does_not_run(tmp_path):
    assert resolve_target("J721E").name == "tda4vm" and resolve_target("j784s4").name == "am69a"
    assert resolve_target(None).default_format == "clip"
    assert all(TARGETS[name].default_format == "qdq" for name in ("am62a", "am67a", "am68a"))
    with pytest.raises(UnknownTargetError, match="am68a"):
        resolve_target("am68")
    with pytest.raises(QuantizationConfigError, match="not supported on tda4vm"):
        QuantizationConfig(asymmetric_activations=True, target="tda4vm")
    q = trained(_tiny(), 16, QuantizationConfig(per_channel_weights=True))
    with pytest.raises(QuantizationConfigError, match="not supported on tda4vm"):
        edgezoo.export_onnx(q, tmp_path / "m.onnx", input_size=(16, 16), write_configs=False)
    plain = trained(_tiny(), 16, QuantizationConfig())
    with pytest.raises(QuantizationConfigError, match="does not import clip graphs"):
        edgezoo.export_onnx(
            plain, tmp_path / "m.onnx", input_size=(16, 16), target="am62a", export_format="clip"
        )


@pytest.mark.parametrize(
    ("config", "target", "expected"),
    [
        (QuantizationConfig(), None, {"accuracy_level": 0, "scale_type": 1}),
        (
            QuantizationConfig(bitwidth_weights=16, bitwidth_activations=16),
            None,
            {"accuracy_level": 0, "scale_type": 1, "tensor_bits": 16},
        ),
        (QDQ, None, {"accuracy_level": 0, "scale_type": 1, "prequantized": 1}),
        (AFFINE, None, {"accuracy_level": 0, "scale_type": 4, "prequantized": 1}),
        (None, "tda4vm", {"accuracy_level": 1, "scale_type": 1}),
        (None, "am69a", {"accuracy_level": 1, "scale_type": 4}),
    ],
    ids=["tda4vm-qat", "tda4vm-qat-16", "am68a-qdq", "am68a-affine", "tda4vm-float", "am69a-float"],
)
def test_each_target_writes_only_the_options_that_take_effect(tmp_path, config, target, expected):
    model = _tiny() if config is None else trained(_tiny(), 16, config)
    report = edgezoo.export_onnx(model, tmp_path / "m.onnx", input_size=(16, 16), target=target)
    compile_file = json.loads(report.config_files["compile_options"].read_text())
    options = compile_file["provider_options"]
    assert options["accuracy_level"] == expected["accuracy_level"]
    assert options["advanced_options:quantization_scale_type"] == expected["scale_type"]
    assert options["tensor_bits"] == expected.get("tensor_bits", 8)
    assert options.get("advanced_options:prequantized_model") == expected.get("prequantized")
    frames = "advanced_options:calibration_frames" in options
    assert frames == (expected["accuracy_level"] == 1)
    assert set(compile_file["option_meanings"]) == set(options) <= set(OPTION_MEANINGS)
    assert compile_file["soc"] == resolve_target(report.target).soc
    assert ("import_config" in report.config_files) == (report.target == "tda4vm")


def test_qdq_rules_name_each_broken_pattern():
    assert "qdq-symmetric" in edgezoo.verify_onnx(_qdq_graph(zero_point=3)).rules()
    graph = _qdq_graph(per_axis_activation=True, dangling=True, clip=True)
    assert {"qdq-axis", "qdq-dangling", "qdq-clip"} <= edgezoo.verify_onnx(graph).rules()
    assert edgezoo.verify_onnx(_qdq_graph()).rules() == set()


@pytest.mark.parametrize("activation", ["Relu", "Clip"])
def test_an_activation_tidl_merges_into_the_conv_may_sit_before_its_qdq_pair(activation):
    assert edgezoo.verify_onnx(_qdq_graph(activation=activation)).rules() == set()


def test_an_input_range_that_excludes_the_normalised_inputs_is_refused(tmp_path):
    model = _tiny()
    q = QuantTrainModule(model, torch.rand(1, 3, 16, 16))
    q.train()
    for _ in range(3):
        q(torch.rand(4, 3, 16, 16))  # raw [0, 1] pixels: an input clip of (0, 1)
    q.eval()
    with pytest.raises(ExportVerificationError, match="input-range"):
        edgezoo.export_onnx(q, tmp_path / "m.onnx", input_size=(16, 16), write_configs=False)


def test_linear_resizes_carry_round_prefer_ceil_and_verify_asks_for_it(tmp_path):
    q = trained(BUILDERS["deeplabv3plus_mobilenetv2"](num_classes=3), 64, QuantizationConfig())
    path = tmp_path / "seg.onnx"
    edgezoo.export_onnx(q, path, example_input=images(64, 1), write_configs=False)
    proto = onnx.load(path)
    resizes = [n for n in proto.graph.node if n.op_type == "Resize"]
    linear = [n for n in resizes if helper.get_node_attr_value(n, "mode") == b"linear"]
    assert linear and all(
        helper.get_node_attr_value(n, "nearest_mode") == b"round_prefer_ceil" for n in linear
    )
    for node in linear:
        for attribute in list(node.attribute):
            if attribute.name == "nearest_mode":
                node.attribute.remove(attribute)
    assert "resize" in edgezoo.verify_onnx(proto).rules()


def test_the_cli_exports_qdq_for_a_device_and_verify_runs_it_in_int8(tmp_path, capsys):
    run = tmp_path / "qat"
    quick = ["--model", "mobilenetv2", "--batch-size", "8", "--max-batches", "2", "--no-progress"]
    train = ["train", *quick, "--qat", "--epochs", "1", "--target", "am67a"]
    assert main([*train, "--out", str(run)]) == 0
    export = ["export", "mobilenetv2", "--qat", "--checkpoint", str(run / "last.pth")]
    args = [*export, "--num-classes", "10", "--input-size", "32", "32", "-o", str(tmp_path)]
    assert main([*args, "--target", "am67a"]) == 0
    written = tmp_path / "mobilenetv2_qat.onnx"
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(written).graph.node}
    capsys.readouterr()
    assert main(["verify", str(written)]) == 0
    out = capsys.readouterr().out
    assert "OK, no TIDL rule violations" in out and "onnxruntime int8 vs the QDQ graph" in out
    assert main([*args, "--target", "am6"]) == 2
    assert "unknown target device" in capsys.readouterr().err


def test_the_documented_affine_flow_trains_and_exports_with_the_same_flags(tmp_path):
    run, scheme = tmp_path / "qat", ["--target", "am67a", "--per-channel-weights"]
    scheme += ["--asymmetric-activations"]
    quick = ["--model", "mobilenetv2", "--batch-size", "8", "--max-batches", "2", "--no-progress"]
    assert main(["train", *quick, "--qat", "--epochs", "1", *scheme, "--out", str(run)]) == 0
    export = ["export", "mobilenetv2", "--qat", "--checkpoint", str(run / "last.pth"), *scheme]
    assert main([*export, "--input-size", "32", "32", "-o", str(tmp_path / "out")]) == 0


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.relu(self.bn(self.conv(x))))))


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return _Tiny()


def _qdq_graph(
    zero_point: int = 0,
    per_axis_activation: bool = False,
    dangling: bool = False,
    clip=False,
    activation: str | None = None,
) -> onnx.ModelProto:
    """input -> Q/DQ -> Conv -> Q/DQ -> MaxPool -> Q/DQ, with the asked-for faults."""
    initializers = [
        numpy_helper.from_array(np.asarray(0.05, np.float32), "s"),
        numpy_helper.from_array(np.asarray(0, np.int8), "z"),
        numpy_helper.from_array(np.asarray(zero_point, np.uint8), "z_mid"),
        numpy_helper.from_array(np.ones((2, 2, 1, 1), np.int8), "w_q"),
        numpy_helper.from_array(np.asarray(0.5, np.float32), "w_s"),
        numpy_helper.from_array(np.asarray(0, np.int8), "w_z"),
        numpy_helper.from_array(np.full(2, 0.05, np.float32), "s_axis"),
        numpy_helper.from_array(np.zeros(2, np.uint8), "z_axis"),
    ]
    mid_scale, mid_zero = ("s_axis", "z_axis") if per_axis_activation else ("s", "z_mid")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q_in"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq_in"),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], name="dq_w"),
        helper.make_node("Conv", ["xd", "w"], ["c"], name="conv", kernel_shape=[1, 1]),
        helper.make_node("QuantizeLinear", ["c", mid_scale, mid_zero], ["cq"], name="q_c"),
        helper.make_node("DequantizeLinear", ["cq", mid_scale, mid_zero], ["cd"], name="dq_c"),
        helper.make_node(
            "MaxPool", ["cd"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node("QuantizeLinear", ["p", "s", "z"], ["pq"], name="q_p"),
        helper.make_node("DequantizeLinear", ["pq", "s", "z"], ["y"], name="dq_p"),
    ]
    if dangling:
        nodes.append(helper.make_node("QuantizeLinear", ["p", "s", "z"], ["lost"], name="q_lost"))
    if activation is not None:  # Conv -> activation -> Q/DQ, as torch.ao and TI's v2 export
        initializers += [
            numpy_helper.from_array(np.asarray(0.0, np.float32), "a_lo"),
            numpy_helper.from_array(np.asarray(6.0, np.float32), "a_hi"),
        ]
        inputs = ["c"] if activation == "Relu" else ["c", "a_lo", "a_hi"]
        nodes.insert(4, helper.make_node(activation, inputs, ["ca"], name="act"))
        nodes[5].input[0] = "ca"
    if clip:
        initializers += [
            numpy_helper.from_array(np.asarray(0.0, np.float32), "lo"),
            numpy_helper.from_array(np.asarray(1.0, np.float32), "hi"),
        ]
        nodes.insert(7, helper.make_node("Clip", ["p", "lo", "hi"], ["pc"], name="clip"))
        nodes[8].input[0] = "pc"
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])],
        initializers,
    )
    if dangling:
        graph.output.append(helper.make_tensor_value_info("lost", TensorProto.INT8, [1, 2, 2, 2]))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_settings_a_qdq_only_device_cannot_take_are_refused_when_training_starts(tmp_path, capsys):
    from edgezoo.cli import main
    from edgezoo.errors import QuantizationConfigError
    from edgezoo.quantization import QuantizationConfig

    for settings in ({"bias_rule": "ti_v1"}, {"activation_rounding": "half_up"}):
        with pytest.raises(QuantizationConfigError, match="am67a imports only QDQ graphs"):
            QuantizationConfig(target="am67a", **settings)
    QuantizationConfig(target="tda4vm", bias_rule="ti_v1")  # TDA4VM takes Clip graphs
    args = ["train", "--qat", "--model", "resnet18", "--target", "am67a", "--bias-rule", "ti_v1"]
    assert main([*args, "--max-batches", "1", "--out", str(tmp_path / "run")]) == 2
    assert "would train a model nothing can export" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
