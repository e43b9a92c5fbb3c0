"""Device fidelity under stress: QAT and TIDL's integers agree on every layer after harsh
training, with power-of-two weight peaks of both signs, under both bias rules; exports that
disagree are refused."""

import copy

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import edgezoo
from edgezoo.errors import (
    CheckpointMismatchError,
    ExportVerificationError,
    QuantizationConfigError,
)
from edgezoo.models import BUILDERS
from edgezoo.quantization import QuantizationConfig, QuantTrainModule, convert_to_deploy
from edgezoo.quantization.grid import (
    BIAS_RULES,
    bias_integers,
    fake_quantize_bias,
    imported_bias_integers,
    weight_scale,
)
from edgezoo.quantization.weight_layers import QuantWeightMixin, bn_scale
from edgezoo.simulation import parity_report, simulate_tidl

pytestmark = pytest.mark.usefixtures("one_thread")


def harshly_trained(
    name: str, size: int, config: QuantizationConfig, seed: int
) -> QuantTrainModule:
    """QAT at a large learning rate (SGD 0.02, momentum 0.9), as in the independent check."""
    torch.manual_seed(seed)
    model = BUILDERS[name](num_classes=5)
    q = QuantTrainModule(model, torch.rand(1, 3, size, size), config=config)
    optimizer = torch.optim.SGD(q.parameters(), lr=0.02, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(8):
        x = torch.randn(4, 3, size, size, generator=generator)
        target = torch.randint(0, 5, (4,), generator=generator)
        out = q(x)
        loss = nn.functional.cross_entropy(out if out.dim() == 2 else out.mean((2, 3)), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return q.eval()


def resnet(config: QuantizationConfig) -> QuantTrainModule:
    return QuantTrainModule(
        BUILDERS["resnet18"](num_classes=5), torch.rand(1, 3, 32, 32), config=config
    )


def plant_half_range_peaks(q: QuantTrainModule, bits: int) -> list[str]:
    """Make the folded weights of two layers peak at exactly half their clip once quantized:
    k = -2^(b-2) in one (TIDL would double its scale) and +2^(b-2) in another (TIDL would
    double it and clamp). Returns the planted layers' names."""
    units = [(n, m) for n, m in q.module.named_modules() if isinstance(m, QuantWeightMixin)]
    planted = []
    for (name, unit), sign in zip(units[1:3], (-1.0, 1.0), strict=True):
        with torch.no_grad():
            s = bn_scale(unit.bn) if unit.bn is not None else torch.ones(unit.weight.shape[0])
            s = s.reshape(unit._channel_shape)
            folded = (unit.weight * s).clamp(-0.24, 0.24)
            folded.view(-1)[0] = sign * 0.25 * (1 + 2.0 ** -(bits + 1))
            unit.weight.copy_(folded / s)
        planted.append(name)
    return planted


@pytest.mark.parametrize("rule", BIAS_RULES)
@pytest.mark.parametrize(
    ("name", "size", "bits", "seed"),
    [
        ("resnet18", 32, 8, 1),
        ("resnet18", 32, 8, 7),
        ("mobilenetv2", 32, 8, 1),
        ("deeplabv3plus_mobilenetv2", 32, 8, 3),
        ("resnet18", 32, 16, 1),
        ("mobilenetv2", 32, 16, 2),
    ],
)
def test_qat_equals_the_integers_on_every_layer_after_harsh_training(
    tmp_path, name, size, bits, seed, rule
):
    config = QuantizationConfig(bitwidth_weights=bits, bitwidth_activations=bits, bias_rule=rule)
    q = harshly_trained(name, size, config, seed)
    planted = plant_half_range_peaks(q, bits)
    deploy = convert_to_deploy(q)
    units = [m for m in q.module.modules() if isinstance(m, QuantWeightMixin)]
    convs = [m for m in deploy.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    for unit, conv in zip(units, convs, strict=True):
        qat_scale = weight_scale(unit.folded_weight_bias()[0], bits)
        assert weight_scale(conv.weight, bits) == qat_scale  # TIDL keeps every QAT scale
    path = tmp_path / "m.onnx"
    report = edgezoo.export_onnx(q, path, input_size=(size, size), write_configs=False)
    assert report.ok and report.integer_max_steps == 0.0
    assert len(report.aligned_weights) >= len(planted)
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(seed + 100))
    parity = parity_report(path, [x])
    assert parity.exact, str(parity)
    with torch.no_grad():
        qat = q(x).double().numpy()
    (device,) = simulate_tidl(path, x, return_integers=True)
    assert np.array_equal(qat * device.scale, device.integers)


def test_an_export_whose_integers_disagree_with_qat_is_refused(tmp_path):
    # 16-bit QAT evaluated in float32 (exact_eval off) rounds its sums: the device would not
    # compute what it computes.
    torch.manual_seed(0)
    config = QuantizationConfig(bitwidth_weights=16, bitwidth_activations=16, exact_eval=False)
    q = QuantTrainModule(
        BUILDERS["resnet18"](num_classes=5), torch.rand(1, 3, 32, 32), config=config
    )
    with torch.no_grad():
        for _ in range(3):
            q(torch.randn(4, 3, 32, 32))
    q.eval()
    path = tmp_path / "m.onnx"
    with pytest.raises(ExportVerificationError, match="first differing layer") as info:
        edgezoo.export_onnx(q, path, input_size=(32, 32), write_configs=False)
    assert "output steps from the QAT model" in str(info.value) and not path.exists()
    report = edgezoo.export_onnx(q, path, input_size=(32, 32), write_configs=False, strict=False)
    assert path.exists() and not report.ok and report.integer_max_steps > 0
    assert "FAILED" in str(report)


def test_a_qdq_export_of_a_model_trained_for_clip_graphs_is_refused_with_advice(tmp_path):
    q = resnet(QuantizationConfig(target="tda4vm"))
    with torch.no_grad():
        q(torch.randn(4, 3, 32, 32))
    q.eval()
    with pytest.raises(QuantizationConfigError, match="activation_rounding='half_even'") as info:
        edgezoo.export_onnx(q, tmp_path / "m.onnx", input_size=(32, 32), export_format="qdq")
    assert "half_up" in str(info.value) and "ti_v1" in str(info.value)


def test_a_qdq_export_for_tda4vm_computes_what_its_qat_model_computes(tmp_path):
    config = QuantizationConfig(target="tda4vm", activation_rounding="half_even", bias_rule="joint")
    torch.manual_seed(0)
    q = QuantTrainModule(
        BUILDERS["resnet18"](num_classes=5), torch.rand(1, 3, 32, 32), config=config
    )
    optimizer = torch.optim.SGD(q.parameters(), lr=0.02, momentum=0.9)
    for _ in range(3):
        loss = q(torch.randn(4, 3, 32, 32)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    q.eval()
    path = tmp_path / "m.onnx"
    report = edgezoo.export_onnx(
        q, path, input_size=(32, 32), export_format="qdq", write_configs=False
    )
    assert report.ok and report.qdq_semantics.max_steps == 0.0


def test_ti_v1_biases_are_a_b_bit_part_times_the_input_maximum():
    bias = torch.tensor([1.3, -0.7, 0.01, -2.9, 0.0])
    joint = torch.tensor(2.0**16)  # far finer than the bias's own 8-bit grid (2^5)
    for signed, multiplier in ((True, 127), (False, 255)):
        n = bias_integers(bias, joint, 8, "ti_v1", signed)
        assert torch.all(n.remainder(multiplier) == 0)
        assert torch.all((n / multiplier).abs() <= 128)
    # A coarse joint grid: the 8-bit bias truncated onto it, toward zero.
    coarse = bias_integers(bias, torch.tensor(4.0), 8, "ti_v1", True)
    assert coarse.tolist() == [5.0, -2.0, 0.0, -11.0, 0.0]
    assert bias_integers(bias, torch.tensor(4.0), 8, "joint", True).tolist() == [
        5.0,
        -3.0,
        0.0,
        -12.0,
        0.0,
    ]


@pytest.mark.parametrize("rule", BIAS_RULES)
def test_the_device_reads_back_exactly_the_bias_qat_used(rule):
    generator = torch.Generator().manual_seed(0)
    for trial in range(200):
        bias = torch.randn(16, generator=generator) * 10 ** (trial % 5 - 3)
        bias[0] = -0.25 if trial % 2 else 0.25  # power-of-two peaks too
        joint = 2.0 ** torch.randint(0, 22, (16,), generator=generator).double()
        for signed in (True, False):
            qat = fake_quantize_bias(bias, joint, 8, rule, signed)  # float32, as exported
            read = imported_bias_integers(qat.double(), joint, 8, rule, signed)
            assert torch.equal(read, bias_integers(bias, joint, 8, rule, signed))


def test_the_bias_rule_is_saved_with_the_model_and_recorded_in_the_export(tmp_path):
    config = QuantizationConfig(bias_rule="joint")
    q = QuantTrainModule(
        BUILDERS["resnet18"](num_classes=5), torch.rand(1, 3, 32, 32), config=config
    )
    state = copy.deepcopy(q.module.state_dict())
    other = resnet(QuantizationConfig())
    assert other.module.conv1.bias_rule == "ti_v1"  # the default for TDA4VM's Clip graphs
    # Another rule would export another model: refused, naming the option, never adopted.
    with pytest.raises(CheckpointMismatchError, match=r"bias_rule_index=joint.*--bias-rule"):
        other.module.load_state_dict(state)
    alike = resnet(QuantizationConfig(bias_rule="joint"))
    alike.module.load_state_dict(state)
    assert alike.module.conv1.bias_rule == "joint"
    with torch.no_grad():
        q(torch.randn(2, 3, 32, 32))
    path = tmp_path / "m.onnx"
    edgezoo.export_onnx(q.eval(), path, input_size=(32, 32), write_configs=False)
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert props["edgezoo.bias_rule"] == "joint"


def test_ti_v1_is_refused_for_qdq_schemes():
    with pytest.raises(QuantizationConfigError, match="bias_rule='joint'"):
        QuantizationConfig(bias_rule="ti_v1", per_channel_weights=True, target="am68a")
    assert QuantizationConfig(target="am68a").biases == "joint"
    assert QuantizationConfig().biases == "ti_v1"
