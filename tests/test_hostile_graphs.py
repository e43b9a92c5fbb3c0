"""Graphs a user did not export with edgezoo, or damaged: verify and simulate refuse them with
the rule that is broken, never hang, never call them OK."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import edgezoo
from edgezoo.cli import main
from edgezoo.errors import MemoryBudgetError, SimulationError
from edgezoo.export import memory as export_memory
from edgezoo.quantization import QuantizationConfig, QuantTrainModule
from edgezoo.simulation import memory, parity_report, simulate_tidl

pytestmark = pytest.mark.usefixtures("one_thread")


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu2 = nn.ReLU()

    def forward(self, x):
        return self.relu2(self.conv2(self.relu1(self.conv1(x))))


def exported(tmp_path, qdq: bool) -> onnx.ModelProto:
    torch.manual_seed(0)
    config = QuantizationConfig(activation_rounding="half_even", bias_rule="joint") if qdq else None
    q = QuantTrainModule(Tiny(), torch.rand(1, 3, 8, 8), config=config)
    with torch.no_grad():
        q(torch.randn(4, 3, 8, 8))
    path = tmp_path / "tiny.onnx"
    edgezoo.export_onnx(
        q.eval(), path, input_size=(8, 8), write_configs=False, export_format="qdq" if qdq else None
    )
    return onnx.load(path)


def replace_constant(proto: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    init = next(i for i in proto.graph.initializer if i.name == name)
    init.CopyFrom(numpy_helper.from_array(value.astype(numpy_helper.to_array(init).dtype), name))


def constant(proto: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == name))


def activation_dequantizers(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    constants = {i.name for i in proto.graph.initializer}
    return [
        n
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] not in constants
    ]


def rules_broken(proto: onnx.ModelProto) -> set[str]:
    return edgezoo.verify_onnx(proto).rules()


def test_a_cycle_is_refused_at_once_by_verify_and_simulate(tmp_path, capsys):
    nodes = [
        helper.make_node("Flatten", ["b"], ["a"], name="first"),
        helper.make_node("Flatten", ["a"], ["b"], name="second"),
    ]
    graph = helper.make_graph(
        nodes,
        "cycle",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    report = edgezoo.verify_onnx(proto)
    assert report.rules() == {"graph-order"} and "cycle" in str(report)
    with pytest.raises(SimulationError, match="cycle"):
        simulate_tidl(proto, np.zeros((1, 4), np.float32))
    path = tmp_path / "cycle.onnx"
    onnx.save(proto, path)
    assert main(["verify", str(path)]) == 1
    assert main(["simulate", str(path)]) == 2


def test_non_finite_weights_are_never_ok(tmp_path):
    proto = exported(tmp_path, qdq=False)
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    weight = numpy_helper.to_array(
        next(i for i in proto.graph.initializer if i.name == conv.input[1])
    )
    broken = weight.copy()
    broken.flat[0] = np.nan
    replace_constant(proto, conv.input[1], broken)
    assert "non-finite" in rules_broken(proto)
    with pytest.raises(SimulationError, match="NaN or infinite"):
        simulate_tidl(proto, np.zeros((1, 3, 8, 8), np.float32))
    replace_constant(proto, conv.input[1], weight)
    replace_constant(proto, conv.input[2], np.full(8, np.inf, np.float32))
    assert "non-finite" in rules_broken(proto)


@pytest.mark.parametrize("scale", [0.0, -0.25, np.nan, np.inf, 1e-45])
def test_broken_qdq_scales_are_violations(tmp_path, scale):
    proto = exported(tmp_path, qdq=True)
    quantize = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"][1]
    replace_constant(proto, quantize.input[1], np.asarray(scale, np.float32))
    assert "qdq-scale" in rules_broken(proto)


def test_a_tda4vm_qdq_graph_needs_power_of_two_activation_scales(tmp_path):
    proto = exported(tmp_path, qdq=True)
    dequantize = [
        n
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] not in {i.name for i in proto.graph.initializer}
    ][1]
    replace_constant(proto, dequantize.input[1], np.asarray(0.3, np.float32))
    assert "qdq-power-of-two" in rules_broken(proto)


def test_a_qdq_pair_whose_zero_point_types_differ_is_a_violation(tmp_path):
    proto = exported(tmp_path, qdq=True)
    dequantize = activation_dequantizers(proto)[0]
    zero = constant(proto, dequantize.input[2])
    other = np.uint8 if zero.dtype == np.int8 else np.int8
    proto.graph.initializer.append(numpy_helper.from_array(np.zeros(zero.shape, other), "zp2"))
    dequantize.input[2] = "zp2"
    assert "qdq-pair-types" in rules_broken(proto)


def test_a_graph_without_outputs_is_a_violation(tmp_path):
    proto = exported(tmp_path, qdq=False)
    del proto.graph.output[:]
    assert "no-outputs" in rules_broken(proto)


def test_simulate_reports_every_layer_when_names_repeat(tmp_path):
    proto = exported(tmp_path, qdq=False)
    for node in proto.graph.node:
        node.name = "same"
    report = parity_report(proto, [torch.randn(2, 3, 8, 8)])
    assert len(report.layers) == len(proto.graph.node)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("edgezoo.weight_bits", "99"),
        ("edgezoo.activation_bits", "eight"),
        ("edgezoo.activation_rounding", "stochastic"),
        ("edgezoo.bias_rule", "none"),
        ("edgezoo.input_std", "0 0 0"),
    ],
)
def test_bad_metadata_is_a_violation_and_simulate_refuses_it(tmp_path, key, value, capsys):
    proto = exported(tmp_path, qdq=False)
    props = {p.key: p.value for p in proto.metadata_props}
    props[key] = value
    del proto.metadata_props[:]
    helper.set_model_props(proto, props)
    assert "metadata" in rules_broken(proto)
    path = tmp_path / "bad.onnx"
    onnx.save(proto, path)
    if key != "edgezoo.input_std":
        assert main(["simulate", str(path), "--batches", "1", "--batch-size", "1"]) == 2


@pytest.mark.parametrize("bound", [3.0, np.inf, np.nan])
def test_simulate_refuses_clip_bounds_tidl_cannot_hold(tmp_path, bound):
    proto = exported(tmp_path, qdq=False)
    clip = [n for n in proto.graph.node if n.op_type == "Clip"][1]
    replace_constant(proto, clip.input[2], np.asarray(bound, np.float32))
    with pytest.raises(SimulationError):
        simulate_tidl(proto, np.zeros((1, 3, 8, 8), np.float32))


def test_simulate_names_a_malformed_node(tmp_path):
    proto = exported(tmp_path, qdq=False)
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    del conv.input[1:]
    with pytest.raises(SimulationError, match="Conv"):
        simulate_tidl(proto, np.zeros((1, 3, 8, 8), np.float32))


def test_simulate_refuses_an_input_it_cannot_allocate(tmp_path, capsys):
    proto = exported(tmp_path, qdq=False)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = 60000
    path = tmp_path / "huge.onnx"
    onnx.save(proto, path)
    assert main(["simulate", str(path)]) == 2
    assert "values per image" in capsys.readouterr().err


def test_simulation_beyond_the_free_memory_is_refused_before_it_allocates(
    tmp_path, monkeypatch, capsys
):
    proto = exported(tmp_path, qdq=False)
    path = tmp_path / "tiny.onnx"
    images = np.zeros((64, 3, 8, 8), np.float32)
    simulate_tidl(path, images)  # fits in what this machine has free
    monkeypatch.setattr(memory, "available_memory", lambda: 200_000)
    with pytest.raises(MemoryBudgetError, match="smaller batch"):
        simulate_tidl(proto, images)
    simulate_tidl(proto, images[:1])  # one image still fits in 200 kB
    assert main(["simulate", str(path), "--batch-size", "64"]) == 2  # a resource, not "differs"
    assert "GiB is available" in capsys.readouterr().err


def test_an_export_beyond_the_free_memory_is_refused_before_it_traces(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(export_memory, "available_memory", lambda: 2**30)
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3))
    path = tmp_path / "big.onnx"
    with pytest.raises(MemoryBudgetError, match=r"exporting at 2048x2048 would need about \d+"):
        edgezoo.export_onnx(model, path, input_size=(2048, 2048), write_configs=False)
    assert not path.exists()
    args = ["export", "resnet18", "--input-size", "4096", "4096", "-o", str(tmp_path / "o")]
    assert main(args) == 2
    assert "smaller input size" in capsys.readouterr().err


def test_sizes_and_seeds_beyond_reason_are_refused_when_parsed(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--model", "resnet18", "--input-size", "100000", "--out", "x"])
    assert info.value.code == 2 and "at most 8192" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "resnet18", "--input-size", "32", "100000", "-o", "x"])
    with pytest.raises(SystemExit):
        main(["train", "--model", "resnet18", "--seed", str(2**70), "--out", "x"])


def test_crafted_tensors_and_missing_opsets_are_violations_not_tracebacks(tmp_path):
    proto = exported(tmp_path, qdq=False)
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    next(i for i in proto.graph.initializer if i.name == conv.input[1]).dims[0] = 10**7
    assert "tensor-payload" in rules_broken(proto)  # declared dims far beyond the data
    with pytest.raises(SimulationError, match="needs"):
        simulate_tidl(proto, np.zeros((1, 3, 8, 8), np.float32))
    proto = exported(tmp_path, qdq=False)
    del proto.opset_import[:]
    assert "opset" in rules_broken(proto)


def test_a_constant_node_bomb_is_a_violation_not_a_traceback(tmp_path, capsys):
    bomb = TensorProto(name="c", data_type=TensorProto.FLOAT, dims=[10**5, 10**5, 100])
    bomb.raw_data = b"\0" * 4  # four bytes claiming 4 TB
    nodes = [
        helper.make_node("Constant", [], ["c"], value=bomb),
        helper.make_node("Add", ["x", "c"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "bomb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
    )
    path = tmp_path / "bomb.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), path)
    assert "tensor-payload" in rules_broken(onnx.load(path))
    assert main(["verify", str(path)]) == 1
    assert main(["simulate", str(path)]) == 2
    assert "Constant node 'c' holds 4 bytes" in capsys.readouterr().err


def test_a_vector_clip_bound_is_refused(tmp_path):
    proto = exported(tmp_path, qdq=False)
    clip = [n for n in proto.graph.node if n.op_type == "Clip"][1]
    replace_constant(proto, clip.input[2], np.array([4.0, 4.0], np.float32))
    assert "clip-bounds" in rules_broken(proto)
    with pytest.raises(SimulationError, match="scalar"):
        simulate_tidl(proto, np.zeros((1, 3, 8, 8), np.float32))


def test_a_model_with_nan_weights_is_not_exported(tmp_path):
    from edgezoo.errors import ExportVerificationError

    model = Tiny()
    with torch.no_grad():
        model.conv2.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ExportVerificationError, match=r"conv2\.weight holds NaN"):
        edgezoo.export_onnx(model, tmp_path / "m.onnx", input_size=(8, 8), write_configs=False)
    assert not (tmp_path / "m.onnx").exists()


def test_simulate_refuses_a_bitwidth_the_graph_was_not_exported_with(tmp_path, capsys):
    path = tmp_path / "tiny.onnx"
    onnx.save(exported(tmp_path, qdq=False), path)
    assert main(["simulate", str(path), "--bitwidth", "16", "--batches", "1"]) == 2
    assert "a bit width of 16 would simulate another model" in capsys.readouterr().err
    # The library refuses it too (it simulated 16-bit weights of an 8-bit export before).
    with pytest.raises(SimulationError, match="exported with 8-bit weights and 8-bit"):
        simulate_tidl(path, np.zeros((1, 3, 8, 8), np.float32), bitwidth=16)
    assert simulate_tidl(path, np.zeros((1, 3, 8, 8), np.float32), bitwidth=8)


def test_evaluate_says_what_onnx_needs_and_refuses_a_nan_checkpoint(tmp_path, capsys):
    quick = ["evaluate", "--model", "mobilenetv2", "--max-batches", "1", "--no-progress"]
    assert main([*quick, "--onnx", str(tmp_path / "x.onnx")]) == 2
    assert "add --simulate" in capsys.readouterr().err
    state = edgezoo.get_model("mobilenetv2", num_classes=10).state_dict()
    state["features.0.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    assert main([*quick, "--checkpoint", str(tmp_path / "nan.pth")]) == 2
    assert "NaN or infinite" in capsys.readouterr().err


def test_data_that_is_a_file_or_a_decompression_bomb_is_named(tmp_path, capsys):
    from PIL import Image

    from edgezoo.errors import DataError
    from edgezoo.tasks import build_task_data

    text = tmp_path / "afile.txt"
    text.write_text("not data")
    with pytest.raises(DataError, match="is a file"):
        build_task_data(text, "classification", 32)
    for split in ("train", "val"):
        (tmp_path / "folder" / split / "cat").mkdir(parents=True)
    Image.new("L", (8, 8)).save(tmp_path / "folder" / "train" / "cat" / "a.png")
    Image.new("L", (8, 8)).save(tmp_path / "folder" / "val" / "cat" / "a.png")
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 16  # every image above it is a "bomb" to PIL
    try:
        data = build_task_data(tmp_path / "folder", "classification", 32)
        with pytest.raises(DataError, match="cannot read image"):
            data.train[0]
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def test_missing_external_data_is_named_not_called_corrupt(tmp_path, capsys):
    proto = exported(tmp_path, qdq=False)
    path = tmp_path / "split.onnx"
    onnx.save(proto, path, save_as_external_data=True, location="split.onnx.data", size_threshold=0)
    (tmp_path / "split.onnx.data").unlink()
    assert main(["verify", str(path)]) == 2
    err = capsys.readouterr().err
    assert "external data files that are not beside it (split.onnx.data)" in err
    assert "corrupt" not in err


def _no_outputs(proto: onnx.ModelProto) -> None:
    del proto.graph.output[:]


def _opset_99(proto: onnx.ModelProto) -> None:
    proto.opset_import[0].version = 99


def _ir_999(proto: onnx.ModelProto) -> None:
    proto.ir_version = 999


def _repeated_initializer(proto: onnx.ModelProto) -> None:
    proto.graph.initializer.append(proto.graph.initializer[0])


def _clip_upside_down(proto: onnx.ModelProto) -> None:
    clip = [n for n in proto.graph.node if n.op_type == "Clip"][1]
    replace_constant(proto, clip.input[1], np.asarray(4.0, np.float32))
    replace_constant(proto, clip.input[2], np.asarray(2.0, np.float32))


@pytest.mark.parametrize(
    "damage", [_no_outputs, _opset_99, _ir_999, _repeated_initializer, _clip_upside_down]
)
def test_simulate_refuses_graphs_verify_rejects_instead_of_calling_them_exact(
    tmp_path, capsys, damage
):
    proto = exported(tmp_path, qdq=False)
    damage(proto)
    path = tmp_path / "damaged.onnx"
    onnx.save(proto, path)
    assert main(["simulate", str(path), "--batches", "1", "--batch-size", "1"]) == 2
    assert "is not a graph TIDL (or its simulation) can run as written" in capsys.readouterr().err
