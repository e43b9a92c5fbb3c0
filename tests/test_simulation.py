"""The TIDL integer simulation: hand-computed integer cases, and QAT equal to it bit for bit."""

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import briefly_trained
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import edgezoo
from edgezoo.cli import main
from edgezoo.errors import SimulationError
from edgezoo.layers import AddBlock, CatBlock, ResizeWith
from edgezoo.models import BUILDERS
from edgezoo.quantization import QuantizationConfig, QuantTrainModule
from edgezoo.simulation import parity_report, simulate_tidl
from edgezoo.simulation.values import Grid

pytestmark = pytest.mark.usefixtures("one_thread")


def graph(nodes, initializers, shape, props=None) -> onnx.ModelProto:
    """A one-input, one-output opset-11 graph (input 'x', output 'y')."""
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "case",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in initializers],
        ),
        opset_imports=[helper.make_opsetid("", 11)],
    )
    if props:
        helper.set_model_props(model, props)
    return model


def clip(source: str, out: str, low: float, high: float) -> tuple[onnx.NodeProto, list]:
    names = (f"{out}_min", f"{out}_max")
    node = helper.make_node("Clip", [source, *names], [out], name=out)
    return node, [(names[0], low), (names[1], high)]


def integers(model, x, **kwargs):
    (out,) = simulate_tidl(model, np.asarray(x, dtype=np.float32), return_integers=True, **kwargs)
    return out.integers.reshape(-1).tolist(), out.exponent


def conv_case(x_value: float, weight: float, bias: float, props=None):
    """x -> Clip(-4, 4) -> 1x1 Conv(weight, bias) -> Clip(-1, 1) -> y."""
    c_in, i_in = clip("x", "q", -4.0, 4.0)
    conv = helper.make_node("Conv", ["q", "w", "b"], ["acc"], name="conv", kernel_shape=[1, 1])
    c_out, i_out = clip("acc", "y", -1.0, 1.0)
    inits = [*i_in, *i_out, ("w", [[[[weight]]]]), ("b", [bias])]
    return graph([c_in, conv, c_out], inits, [1, 1, 1, 1], props)


def test_a_1x1_conv_rounds_a_half_step_shift_up_and_saturates():
    # input scale 128/4 = 32, weight 0.5078125 -> scale 128 (ceil2 = 1), integer 65.
    # x = 0.5 -> 16; acc = 16 * 65 = 1040 at scale 4096; output scale 128: 1040 / 32 = 32.5.
    assert integers(conv_case(0.5, 0.5078125, 0.0), [[[[0.5]]]]) == ([33], 7)
    assert integers(conv_case(0.5, 0.5078125, 0.0), [[[[-0.5]]]]) == ([-32], 7)  # half up
    away = {"edgezoo.activation_rounding": "half_away"}
    assert integers(conv_case(0.5, 0.5078125, 0.0, away), [[[[-0.5]]]]) == ([-33], 7)
    # bias 0.25 at the joint scale 4096 = 1024: (1040 + 1024) / 32 = 64.5 -> 65.
    assert integers(conv_case(0.5, 0.5078125, 0.25), [[[[0.5]]]]) == ([65], 7)
    # 3.0 * 0.5078125 = 1.52 is outside the output's (-1, 1): saturated at 127.
    assert integers(conv_case(0.5, 0.5078125, 0.0), [[[[3.0]]]]) == ([127], 7)


def test_the_bias_saturates_at_a_signed_16_bit_integer():
    # bias 10 at the joint scale 4096 is 40960 > 32767: TIDL keeps 32767.
    # (0 + 32767) / 32 = 1023.97 -> saturates the output at 127; the accumulator shows it:
    model = conv_case(0.5, 0.5078125, 10.0)
    model.graph.output[0].name = "acc"
    del model.graph.node[-1]
    assert integers(model, [[[[0.0]]]]) == ([32767], 12)


def two_ranges(out_node: onnx.NodeProto) -> tuple[list, list]:
    """x -> Clip(-2, 2) as 'a' (scale 64) and x -> Clip(-8, 8) as 'b' (scale 16)."""
    node_a, init_a = clip("x", "a", -2.0, 2.0)
    node_b, init_b = clip("x", "b", -8.0, 8.0)
    node_y, init_y = clip("s", "y", -4.0, 4.0)
    return [node_a, node_b, out_node, node_y], [*init_a, *init_b, *init_y]


def test_an_add_aligns_both_scales_then_requantizes():
    # x = 1.578125: a = 101 (scale 64), b = 25.25 -> 25 (scale 16) -> 100 at scale 64;
    # 201 at scale 64 -> scale 32: 100.5 -> 101.
    nodes, inits = two_ranges(helper.make_node("Add", ["a", "b"], ["s"], name="add"))
    assert integers(graph(nodes, inits, [1, 1, 1, 1]), [[[[1.578125]]]]) == ([101], 5)


def test_a_concat_requantizes_each_input_to_the_output_scale():
    # a = 101 at scale 64 -> 50.5 -> 51 at scale 32; b = 25 at scale 16 -> 50.
    concat = helper.make_node("Concat", ["a", "b"], ["s"], name="cat", axis=1)
    nodes, inits = two_ranges(concat)
    assert integers(graph(nodes, inits, [1, 1, 1, 1]), [[[[1.578125]]]]) == ([51, 50], 5)


def pool_case(op: str, out_clip: tuple[float, float] | None, **attributes):
    node_in, init_in = clip("x", "q", 0.0, 4.0)  # unsigned, scale 256 / 4 = 64
    target = "p" if out_clip else "y"
    pool = helper.make_node(op, ["q"], [target], name="pool", **attributes)
    nodes, inits = [node_in, pool], init_in
    if out_clip:
        node_out, init_out = clip("p", "y", *out_clip)
        nodes, inits = [*nodes, node_out], [*inits, *init_out]
    return graph(nodes, inits, [1, 1, 2, 2])


X_POOL = np.array([1, 2, 2, 2], dtype=np.float32).reshape(1, 1, 2, 2) / 64  # integers 1, 2, 2, 2


def test_average_pools_divide_the_integer_sum_with_one_rounding():
    # Global: 7 / 4 = 1.75 -> 2, kept at the input's scale (no Clip follows).
    assert integers(pool_case("GlobalAveragePool", None), X_POOL) == ([2], 6)
    # A 2x2 pool read by Clip(0, 8) (scale 32): 7 / 4 at scale 64 = 7 / 8 at scale 32 -> 1.
    case = pool_case("AveragePool", (0.0, 8.0), kernel_shape=[2, 2], strides=[2, 2])
    assert integers(case, X_POOL) == ([1], 5)
    # Max pool: the largest integer.
    assert integers(pool_case("MaxPool", None, kernel_shape=[2, 2]), X_POOL) == ([2], 6)


@pytest.mark.parametrize(
    ("scale", "expected"),
    [
        (2, [0, 0, 1, 1]),  # exact 0, 0.25, 0.75, 1 (half-pixel weights 1/4, 3/4)
        (4, [0, 0, 0, 0, 1, 1, 1, 1]),  # exact 0, 0, .125, .375, .625, .875, 1, 1
    ],
)
def test_bilinear_resizes_use_fixed_point_weights_then_round_to_the_input_grid(scale, expected):
    node_in, init_in = clip("x", "q", 0.0, 4.0)
    resize = helper.make_node(
        "Resize",
        ["q", "roi", "scales"],
        ["y"],
        name="resize",
        mode="linear",
        coordinate_transformation_mode="half_pixel",
    )
    inits = [*init_in, ("roi", np.zeros(0)), ("scales", [1.0, 1.0, float(scale), float(scale)])]
    model = graph([node_in, resize], inits, [1, 1, 1, 2])
    values, exponent = integers(model, np.array([0.0, 1.0]).reshape(1, 1, 1, 2) / 64)
    assert exponent == 6 and values == expected * scale  # every row the same (one input row)


def test_a_missing_clip_or_an_unknown_op_names_the_node(tmp_path, capsys):
    node_in, init_in = clip("x", "q", -4.0, 4.0)
    conv = helper.make_node("Conv", ["q", "w"], ["acc"], name="conv7", kernel_shape=[1, 1])
    add = helper.make_node("Add", ["acc", "q"], ["y"], name="add3")
    model = graph([node_in, conv, add], [*init_in, ("w", [[[[0.5]]]])], [1, 1, 1, 1])
    with pytest.raises(SimulationError, match=r"node add3 \(Add\) reads an accumulator"):
        simulate_tidl(model, np.zeros((1, 1, 1, 1), np.float32))
    tanh = helper.make_node("Tanh", ["q"], ["y"], name="tanh")
    with pytest.raises(SimulationError, match=r"node tanh \(Tanh\) has no definition"):
        simulate_tidl(graph([node_in, tanh], init_in, [1, 1, 1, 1]), np.zeros((1, 1, 1, 1)))
    sigmoid = helper.make_node("Sigmoid", ["q"], ["y"], name="sig")
    with pytest.raises(SimulationError, match=r"node sig \(Sigmoid\) is not followed by a Clip"):
        simulate_tidl(graph([node_in, sigmoid], init_in, [1, 1, 1, 1]), np.zeros((1, 1, 1, 1)))
    onnx.save(model, tmp_path / "unclipped.onnx")
    # The command checks the graph's structure first: this hand-made graph lacks its output's
    # shape, which onnx.checker rejects.
    assert main(["simulate", str(tmp_path / "unclipped.onnx"), "--batches", "1"]) == 2
    assert "[onnx-checker]" in capsys.readouterr().err


class Everything(nn.Module):
    """Every op the simulation defines: conv-BN-ReLU, add, concat, max/avg/global pools,
    bilinear and nearest resizes, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.add = AddBlock()
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.up = ResizeWith(2, "bilinear")
        self.near = ResizeWith(2, "nearest")
        self.cat = CatBlock()
        self.conv3 = nn.Conv2d(16, 4, 1)
        self.relu3 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.add((x, self.conv2(x))))
        x = self.avg(self.pool(x))
        x = self.cat((self.up(x), self.near(x)))
        return self.fc(self.flatten(self.gap(self.relu3(self.conv3(x)))))


class PreActivation(nn.Module):
    """DenseNet's pattern: a BatchNorm after a concat, which no conv folds (its device
    arithmetic is assumed: simulated as QAT computes it)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1)
        self.cat = CatBlock()
        self.norm = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv3 = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.relu(self.norm(self.cat((self.conv1(x), self.conv2(x))))))


def test_a_standalone_batch_norm_is_simulated_as_assumed_and_agrees(tmp_path):
    torch.manual_seed(0)
    model = PreActivation()
    with torch.no_grad():
        model.norm.running_mean.uniform_(-0.5, 0.5)
        model.norm.running_var.uniform_(0.5, 2.0)
        model.norm.weight.uniform_(0.5, 1.5)
    q = trained(model, 16)
    report = edgezoo.export_onnx(q, tmp_path / "m.onnx", input_size=(16, 16), write_configs=False)
    assert report.node_counts["BatchNormalization"] == 1
    assert report.integer_assumed_ops == ("BatchNormalization",) and report.ok
    assert report.integer_max_steps == 0.0 and not report.integer_not_simulated
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        qat = q(x).double().numpy()
    (device,) = simulate_tidl(tmp_path / "m.onnx", x, return_integers=True)
    assert np.array_equal(qat * device.scale, device.integers)


def trained(model: nn.Module, size: int, bits: int = 8) -> QuantTrainModule:
    config = QuantizationConfig(bitwidth_weights=bits, bitwidth_activations=bits)
    return briefly_trained(model, size, config)


@pytest.mark.parametrize(
    ("name", "size", "bits"),
    [
        ("everything", 16, 8),
        ("everything", 16, 16),
        ("mobilenetv2", 32, 8),
        ("deeplabv3plus_mobilenetv2", 32, 8),
        ("mobilenetv2", 32, 16),
    ],
)
def test_qat_eval_equals_the_integer_graph_bit_for_bit(tmp_path, name, size, bits):
    model = Everything() if name == "everything" else BUILDERS[name](num_classes=5)
    q = trained(model, size, bits)
    path = tmp_path / "m.onnx"
    report = edgezoo.export_onnx(q, path, input_size=(size, size), write_configs=False)
    assert report.integer_max_steps == 0.0 and report.integer_share_differing == 0.0
    x = torch.randn(6, 3, size, size, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        qat = q(x).double().numpy()
    (device,) = simulate_tidl(path, x, return_integers=True)
    assert device.exponent > 0 and np.array_equal(qat * device.scale, device.integers)
    assert parity_report(path, [x]).exact


def test_the_cli_reports_parity_layer_by_layer(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    edgezoo.export_onnx(trained(Everything(), 16), path, input_size=(16, 16), write_configs=False)
    layers = tmp_path / "layers.npz"
    args = ["simulate", str(path), "--batches", "2", "--batch-size", "3"]
    assert main([*args, "--save-layers", str(layers)]) == 0
    out = capsys.readouterr().out
    assert "/conv3/Conv" in out and "19 layers over 2 batches: exact" in out
    saved = np.load(layers)
    clips = [n for n in onnx.load(path).graph.node if n.op_type == "Clip"]
    assert {n.output[0] for n in clips} <= set(saved.files)
    for clip in clips:
        low, high = (float(numpy_helper.to_array(t)) for t in _clip_constants(path, clip))
        grid = Grid.of_clip(low, high, 8)
        integers = saved[clip.output[0]]
        assert int(saved[f"{clip.output[0]}.exponent"]) == grid.exponent
        assert integers.min() >= grid.low and integers.max() <= grid.high and integers.any()


def _clip_constants(path, clip):
    constants = {t.name: t for t in onnx.load(path).graph.initializer}
    return [constants[name] for name in clip.input[1:]]


def test_evaluate_reports_the_integer_accuracy_beside_the_qat_model(tmp_path, capsys):
    run = tmp_path / "qat"
    quick = ["--model", "mobilenetv2", "--batch-size", "8", "--max-batches", "2", "--no-progress"]
    assert main(["train", *quick, "--qat", "--epochs", "1", "--out", str(run)]) == 0
    checkpoint = str(run / "last.pth")
    export = ["export", "mobilenetv2", "--qat", "--checkpoint", checkpoint, "--num-classes", "10"]
    assert main([*export, "--input-size", "32", "32", "-o", str(tmp_path)]) == 0
    onnx_path = str(tmp_path / "mobilenetv2_qat.onnx")
    evaluate = ["evaluate", *quick, "--checkpoint", checkpoint, "--onnx", onnx_path]
    assert main([*evaluate, "--simulate", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "eval.json").read_text())
    assert record["integer_simulation"]["top1"] == record["top1"]
    assert record["integer_simulation"]["loss"] == pytest.approx(record["loss"], rel=1e-5)
    without_graph = ["evaluate", *quick, "--checkpoint", checkpoint, "--simulate"]
    assert main(without_graph) == 2 and "pass --onnx FILE.onnx" in capsys.readouterr().err
    # A graph of another input size or another model is refused before any evaluation.
    assert main([*evaluate, "--simulate", "--input-size", "64"]) == 2
    assert "the graph takes inputs of [3, 32, 32]" in capsys.readouterr().err
    other = onnx.load(onnx_path)
    other.graph.name = "resnet18"
    onnx.save(other, tmp_path / "other.onnx")
    evaluate[-1] = str(tmp_path / "other.onnx")
    assert main([*evaluate, "--simulate"]) == 2
    assert "is an export of resnet18, not of mobilenetv2" in capsys.readouterr().err


def test_clip_bounds_held_by_constant_nodes_simulate_alike(tmp_path):
    # Opset-11 exports (TI's v1 among them) hold Clip bounds in Constant nodes, not initializers.
    path = tmp_path / "m.onnx"
    edgezoo.export_onnx(trained(Everything(), 16), path, input_size=(16, 16), write_configs=False)
    proto = onnx.load(path)
    constant = onnx.ModelProto()
    constant.CopyFrom(proto)
    clip_inputs = {name for n in constant.graph.node if n.op_type == "Clip" for name in n.input[1:]}
    moved = [i for i in constant.graph.initializer if i.name in clip_inputs]
    for init in moved:
        constant.graph.initializer.remove(init)
        node = helper.make_node("Constant", [], [init.name], value=init)
        constant.graph.node.insert(0, node)
    assert moved and edgezoo.verify_onnx(constant).ok
    images = torch.rand(2, 3, 16, 16)
    expected, got = simulate_tidl(proto, images), simulate_tidl(constant, images)
    assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))
