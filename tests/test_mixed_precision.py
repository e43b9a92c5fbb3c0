"""Per-layer bit widths: the spec's resolution, 16-bit layers through QAT, export, verify,
TIDL's files and the integer simulation (bit-exact at every 8/16-bit joint)."""

import json

import numpy as np
import onnx
import pytest
import torch
from test_fidelity import harshly_trained
from torch import nn

import edgezoo
from edgezoo.errors import CheckpointMismatchError, QuantizationConfigError
from edgezoo.export import verify_onnx
from edgezoo.quantization import (
    PACT2,
    QuantCalibrateModule,
    QuantizationConfig,
    QuantTrainModule,
)
from edgezoo.quantization.grid import BIAS_RULES
from edgezoo.quantization.layer_spec import LayerRule, resolve_layer_bits
from edgezoo.quantization.weight_layers import QuantWeightMixin
from edgezoo.simulation import parity_report, simulate_tidl
from edgezoo.tidl.tensor_bits import TENSOR_BITS_PROP, TensorBits

pytestmark = pytest.mark.usefixtures("one_thread")

RESNET_16 = {"layer1.0.conv1": 16, "layer2.*": 16, "fc": 16}


def widths(q: nn.Module) -> dict[str, int]:
    """Module name -> width of every unit and range of a quantized model."""
    return {
        name: module.bitwidth
        for name, module in q.module.named_modules()
        if isinstance(module, PACT2 | QuantWeightMixin)
    }


def test_the_most_specific_rule_wins_and_later_rules_win_among_equals():
    conv, relu = nn.Conv2d(1, 1, 1), nn.ReLU()
    leaves = {"a.conv": conv, "a.relu": relu, "b.conv": nn.Conv2d(1, 1, 1)}
    rules = (
        LayerRule("b.conv", bitwidth_weights=8),
        LayerRule("*.conv", 16, 16),
        LayerRule("Conv2d", bitwidth_activations=8),
        LayerRule("a.*", bitwidth_activations=16),
        LayerRule("a.*", bitwidth_activations=8),
    )
    table = resolve_layer_bits(rules, leaves, 8, 8)
    assert (table["b.conv"].weights, table["b.conv"].activations) == (8, 16)  # name, then glob
    assert (table["a.conv"].weights, table["a.conv"].activations) == (16, 8)  # the later glob
    assert table["a.relu"].ruled and table["a.relu"].activations == 8


@pytest.mark.parametrize(
    ("layer_bits", "message"),
    [({"layr1.*": 16}, "match no layer"), ({"fc": 12}, "8 or 16"), ({"fc": "16"}, "8 or 16")],
)
def test_a_rule_that_would_change_nothing_or_is_no_tidl_width_is_refused(layer_bits, message):
    with pytest.raises(QuantizationConfigError, match=message):
        config = QuantizationConfig(layer_bits=layer_bits)
        model = edgezoo.get_model("resnet18", num_classes=5)
        QuantCalibrateModule(model, torch.rand(1, 3, 32, 32), config=config)


def test_a_16_bit_layer_widens_its_own_unit_and_output_and_what_merges_into_it():
    q = QuantCalibrateModule(
        edgezoo.get_model("resnet18", num_classes=5),
        torch.rand(1, 3, 32, 32),
        config=QuantizationConfig(layer_bits={"layer1.0.conv1": 16}),
    )
    wide = {name for name, bits in widths(q).items() if bits == 16}
    # The conv's weights, and its output range: the ReLU that TIDL merges into the conv.
    assert wide == {"layer1.0.conv1", "layer1.0.relu1"}
    unit = q.module.get_submodule("layer1.0.conv2")
    assert unit.bitwidth == 8 and unit.bias_bitwidth == 16  # it reads a 16-bit input
    assert q.config.evaluates_exactly  # float32 cannot hold 16-bit sums exactly


def test_get_model_takes_the_per_layer_spec_and_the_checkpoint_keeps_the_widths():
    config = QuantizationConfig(layer_bits={"fc": 16})
    q = edgezoo.get_model("resnet18", num_classes=5, qat=True, config=config)
    assert widths(q)["fc"] == 16
    state = q.module.state_dict()
    uniform = edgezoo.get_model("resnet18", num_classes=5, qat=True)
    with pytest.raises(CheckpointMismatchError, match="layer_bits"):
        uniform.module.load_state_dict(state)
    again = edgezoo.get_model("resnet18", num_classes=5, qat=True, config=config)
    again.module.load_state_dict(state)
    assert widths(again) == widths(q)
    saved = QuantizationConfig(**json.loads(json.dumps(config.to_dict())))
    assert saved.rules == config.rules


@pytest.mark.parametrize("rule", BIAS_RULES)
@pytest.mark.parametrize(
    ("name", "layer_bits", "seed"),
    [
        ("resnet18", RESNET_16, 1),
        ("mobilenetv2", {"features.2.*": 16, "features.5.conv.0.*": 16}, 2),
        (
            "deeplabv3plus_mobilenetv2",
            {"shortcut.*": 16, "cat": 16, "predictor.*": 16, "aspp.project.*": 16},
            3,
        ),
    ],
)
def test_mixed_precision_qat_exports_verifies_and_simulates_bit_for_bit(
    tmp_path, name, layer_bits, seed, rule
):
    config = QuantizationConfig(layer_bits=layer_bits, bias_rule=rule)
    q = harshly_trained(name, 32, config, seed)
    path = tmp_path / "m.onnx"
    report = edgezoo.export_onnx(q, path, input_size=(32, 32), write_configs=False)
    assert report.ok and report.integer_max_steps == 0.0
    recorded = TensorBits.of_graph(onnx.load(path))
    assert recorded.mixed and recorded.widest == 16
    assert (recorded.bitwidth_weights, recorded.bitwidth_activations) == (8, 8)
    assert set(recorded.activations.values()) == set(recorded.weights.values()) == {16}
    wide_units = sum(
        1 for m in q.module.modules() if isinstance(m, QuantWeightMixin) and m.bitwidth == 16
    )
    assert len(recorded.weights) == wide_units
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed + 100))
    assert parity_report(path, [x]).exact
    with torch.no_grad():
        qat = q(x).double().numpy()
    (device,) = simulate_tidl(path, x, return_integers=True)
    assert np.array_equal(qat * device.scale, device.integers)


@pytest.fixture(scope="module")
def mixed_resnet_export(tmp_path_factory):
    """A calibrated ResNet18 with 16-bit layers, exported with its TIDL files."""
    torch.manual_seed(0)
    config = QuantizationConfig(layer_bits=RESNET_16)
    q = QuantCalibrateModule(
        edgezoo.get_model("resnet18", num_classes=5), torch.rand(1, 3, 32, 32), config=config
    )
    with torch.no_grad():
        for step in range(3):
            q(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(step)))
    path = tmp_path_factory.mktemp("mixed") / "r18_mixed.onnx"
    report = edgezoo.export_onnx(q.eval(), path, input_size=(32, 32))
    return q, path, report


def test_the_tidl_files_list_the_16_bit_layers(mixed_resnet_export):
    _, path, report = mixed_resnet_export
    proto = onnx.load(path)
    recorded = TensorBits.of_graph(proto)
    outputs = {o for node in proto.graph.node for o in node.output}
    options = json.loads(report.config_files["compile_options"].read_text())["provider_options"]
    assert options["tensor_bits"] == 8
    features = options["advanced_options:output_feature_16bit_names_list"].split(", ")
    params = options["advanced_options:params_16bit_names_list"].split(", ")
    assert sorted(features) == sorted(recorded.activations)
    assert len(params) == len(recorded.weights) and set(params) <= outputs
    imported = report.config_files["import_config"].read_text()
    assert f'outFeature16bitNamesList = "{",".join(features)}"' in " ".join(imported.split())


def retagged(proto: onnx.ModelProto, activations: dict) -> onnx.ModelProto:
    """The graph with its per-tensor activation widths replaced."""
    edited = onnx.ModelProto()
    edited.CopyFrom(proto)
    props = {p.key: p.value for p in edited.metadata_props}
    record = json.loads(props[TENSOR_BITS_PROP])
    record["activations"] = activations
    props[TENSOR_BITS_PROP] = json.dumps(record)
    del edited.metadata_props[:]
    onnx.helper.set_model_props(edited, props)
    return edited


def test_the_verifier_refuses_widths_on_missing_tensors_and_illegal_joints(mixed_resnet_export):
    _, path, _ = mixed_resnet_export
    proto = onnx.load(path)
    assert verify_onnx(proto).ok
    after_pool = next(
        n.output[0] for n in proto.graph.node if n.op_type == "Clip" and "maxpool" in n.name.lower()
    )
    for activations, expected in [
        ({"no_such_tensor": 16}, "no Clip's output"),
        ({after_pool: 16}, "follows MaxPool"),
    ]:
        report = verify_onnx(retagged(proto, activations))
        found = [v for v in report.violations if v.rule == "mixed-precision"]
        assert found and expected in found[0].message, report.violations


def test_a_qdq_export_of_a_mixed_model_is_refused(mixed_resnet_export, tmp_path):
    q, _, _ = mixed_resnet_export
    with pytest.raises(QuantizationConfigError, match="8 bits only"):
        edgezoo.export_onnx(q, tmp_path / "q.onnx", input_size=(32, 32), export_format="qdq")
    assert not (tmp_path / "q.onnx").exists()


def test_qat_and_ptq_wrappers_train_a_mixed_model():
    config = QuantizationConfig(layer_rules=(LayerRule("Linear", 16, 16),))
    model = edgezoo.get_model("resnet18", num_classes=5)
    q = QuantTrainModule(model, torch.rand(1, 3, 32, 32), config=config)
    assert widths(q)["fc"] == 16 and widths(q)["layer1.0.conv1"] == 8
    loss = q.train()(torch.randn(2, 3, 32, 32)).square().mean()
    loss.backward()
    assert q.module.fc.weight.grad is not None


class TwoConvs(nn.Module):
    """A conv half of whose channels are 512 times smaller than the others (a per-tensor
    8-bit grid rounds them away) while the head reads them 512 times larger."""

    def __init__(self) -> None:
        super().__init__()
        self.plain = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.spread = nn.Conv2d(8, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.head = nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.spread.weight[:4].div_(512.0)
            self.spread.bias[:4].div_(512.0)
            self.head.weight[:, :4].mul_(512.0)

    def forward(self, x):
        return self.head(self.relu2(self.spread(self.relu1(self.plain(x)))))


class TwoHeads(TwoConvs):
    """TwoConvs with a second head: its output is a dict of two tensors, as a detector's."""

    def __init__(self) -> None:
        super().__init__()
        self.other = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        features = self.relu2(self.spread(self.relu1(self.plain(x))))
        return {"first": self.head(features), "second": self.other(features)}


def test_selection_ranks_the_layers_of_a_model_with_several_outputs():
    torch.manual_seed(0)
    data = [torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    choice = edgezoo.select_16bit_layers(TwoHeads(), data, budget=1.0, progress=False)
    assert max(choice.gains_db, key=choice.gains_db.get) == "spread"
    assert set(choice.gains_db) == {"plain", "spread", "head", "other"}


def test_selection_measures_each_layer_and_keeps_to_the_budget():
    torch.manual_seed(0)
    model = TwoConvs()
    data = [torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    macs = edgezoo.quantization.selection.layer_macs(model, data[0])
    assert macs == {"plain": 16 * 16 * 8 * 27, "spread": 16 * 16 * 8 * 72, "head": 16 * 16 * 4 * 8}
    choice = edgezoo.select_16bit_layers(model, data, budget=1.0, progress=False)
    assert max(choice.gains_db, key=choice.gains_db.get) == "spread"
    assert "spread" in choice.layer_bits and choice.sqnr_selected_db > choice.sqnr_8bit_db
    assert sum(choice.macs_share.values()) == pytest.approx(1.0)
    cheap = edgezoo.select_16bit_layers(model, data, budget=0.3, progress=False)
    assert "spread" not in cheap.layer_bits and cheap.used <= 0.3  # 'spread' is 67 % of MACs
    assert model.training  # the caller's model is left as it was
    none = edgezoo.select_16bit_layers(model, data, budget=0.0, progress=False)
    assert none.layer_bits == {} and none.sqnr_selected_db == none.sqnr_8bit_db


def test_the_cli_chooses_layers_that_train_and_export_read(tmp_path, capsys):
    from edgezoo.cli import main

    choice = tmp_path / "bits.json"
    args = ["mixed-precision", "resnet18", "--input-size", "32", "32", "--batches", "1"]
    args += ["--batch-size", "4", "--budget", "0.2", "--no-progress", "-o", str(choice)]
    assert main(args) == 0
    chosen = json.loads(choice.read_text())["layer_bits"]
    assert chosen and set(chosen.values()) == {16}
    assert "of MACs" in capsys.readouterr().out
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err  # nothing replaced
    config = QuantizationConfig(layer_bits=chosen)
    q = QuantTrainModule(
        edgezoo.get_model("resnet18", num_classes=10), torch.rand(1, 3, 32, 32), config=config
    )
    q.train()(torch.randn(4, 3, 32, 32))
    checkpoint = tmp_path / "qat.pth"
    torch.save(q.module.state_dict(), checkpoint)
    export = ["export", "resnet18", "--qat", "--input-size", "32", "32", "--checkpoint"]
    export += [str(checkpoint), "--allow-uncalibrated", "-o", str(tmp_path / "out")]
    assert main(export) == 2  # trained with 16-bit layers: refused without them
    assert "--layer-bits" in capsys.readouterr().err
    assert main([*export, "--layer-bits", str(choice)]) == 0
    files = list((tmp_path / "out").glob("*_compile_options.json"))
    options = json.loads(files[0].read_text())["provider_options"]
    assert "advanced_options:params_16bit_names_list" in options


@pytest.mark.parametrize(
    ("text", "expected"),
    [("fc", {"fc": 16}), ("layer1.*=16, fc=8", {"layer1.*": 16, "fc": 8})],
)
def test_layer_bits_option_reads_pairs(text, expected):
    from edgezoo.cli.arguments import layer_bits_option

    assert layer_bits_option(text) == expected
