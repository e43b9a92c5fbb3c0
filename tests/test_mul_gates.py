"""Channel-broadcast multiplies and their gates (squeeze-excitation): MulBlock, conversion,
QAT ranges, export for TDA4VM (Clip) and QDQ devices, and the integer simulation."""

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgezoo import QuantTrainModule, check_model, export_onnx, make_module_only, verify_onnx
from edgezoo.errors import SimulationError, UsageError
from edgezoo.layers import MulBlock, SelfGate
from edgezoo.quantization import QuantizationConfig, named_activation_ranges
from edgezoo.simulation import simulate_tidl


class SqueezeExcite(nn.Module):
    """timm's SE as users write it: functional mean, relu, gate and multiply."""

    def __init__(self, channels: int, gate: str) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // 2, 1)
        self.expand = nn.Conv2d(channels // 2, channels, 1)
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.expand(F.relu(self.reduce(x.mean((2, 3), keepdim=True))))
        if self.gate == "hard":
            return x * F.hardsigmoid(s)
        if self.gate == "inplace":
            return x.mul_(s.sigmoid())
        return x * torch.sigmoid(s)


class Net(nn.Module):
    def __init__(self, gate: str = "sigmoid") -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.se = SqueezeExcite(8, gate)
        self.head = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 4),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.se(self.stem(x)))


def images(count: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def qat(gate: str, config: QuantizationConfig | None = None) -> QuantTrainModule:
    torch.manual_seed(0)
    return trained(make_module_only(Net(gate), images(1)), config)


def trained(model: nn.Module, config: QuantizationConfig | None = None) -> QuantTrainModule:
    """model wrapped for QAT after three SGD steps, in eval."""
    q = QuantTrainModule(model, images(1), config=config)
    optimizer = torch.optim.SGD(q.parameters(), lr=1e-3)
    for step in range(3):
        loss = q(images(4, step)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return q.eval()


def test_mul_block_broadcasts_a_gate_and_refuses_the_batch_axis():
    x, gate = torch.randn(2, 8, 4, 4), torch.rand(2, 8, 1, 1)
    assert torch.equal(MulBlock()([x, gate]), x * gate)
    with pytest.raises(UsageError, match="batch axis"):
        MulBlock()([x, torch.rand(1, 8, 1, 1)])
    with pytest.raises(UsageError, match="two tensors"):
        MulBlock()([x, x, x])


@pytest.mark.parametrize("gate", ["sigmoid", "hard", "inplace"])
def test_a_functional_gate_converts_to_modules_with_equal_outputs(gate):
    model = Net(gate).eval()
    converted = make_module_only(model, images(1))
    kinds = {type(m).__name__ for m in converted.modules()}
    assert "MulBlock" in kinds and ({"Sigmoid", "Hardsigmoid"} & kinds)
    x = images(2)
    assert torch.equal(converted(x.clone()), model(x.clone()))
    assert check_model(converted, images(1)).ok


def test_a_constant_factor_is_not_a_mul_block_and_the_lint_says_what_to_do():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x) * 0.5

    violations = check_model(Scaled(), images(1)).violations
    assert [v.rule for v in violations] == ["functional-op"]
    assert "MulBlock" in violations[0].message and "fold a constant" in violations[0].message


@pytest.mark.parametrize("gate", ["sigmoid", "hard"])
def test_squeeze_excitation_exports_for_tda4vm_and_simulates_bit_exactly(gate, tmp_path):
    q = qat(gate)
    report = export_onnx(q, tmp_path / "se.onnx", example_input=images(1), write_configs=False)
    assert report.ok and report.integer_max_steps == 0
    op = "Sigmoid" if gate == "sigmoid" else "HardSigmoid"
    assert report.node_counts["Mul"] == 1 and report.node_counts[op] == 1
    assert report.integer_assumed_ops == (op,) and "assumed, not known" in str(report)
    proto = onnx.load(tmp_path / "se.onnx")
    # Every multiply and gate reads and feeds clipped ranges.
    for node in proto.graph.node:
        if node.op_type in ("Mul", op):
            readers = [n.op_type for n in proto.graph.node if node.output[0] in n.input]
            assert readers == ["Clip"]
    x = images(8, 5)
    (device,) = simulate_tidl(proto, x, return_integers=True)
    with torch.no_grad():
        expected = q(x).double().numpy() * device.scale
    assert (abs(expected - device.integers) == 0).all()


def test_a_gate_without_its_range_is_a_violation_and_is_not_simulated(tmp_path):
    q = qat("sigmoid")
    export_onnx(q, tmp_path / "se.onnx", example_input=images(1), write_configs=False)
    proto = onnx.load(tmp_path / "se.onnx")
    sigmoid = next(n for n in proto.graph.node if n.op_type == "Sigmoid")
    clip = next(n for n in proto.graph.node if sigmoid.output[0] in n.input)
    for node in proto.graph.node:  # bypass the Clip after the gate
        node.input[:] = [sigmoid.output[0] if i == clip.output[0] else i for i in node.input]
    proto.graph.node.remove(clip)
    assert "range-coverage" in {v.rule for v in verify_onnx(proto).violations}
    with pytest.raises(SimulationError, match="not followed by a Clip"):
        simulate_tidl(proto, images(1))


def test_an_unsimulated_graph_is_flagged_not_passed_quietly(tmp_path):
    torch.manual_seed(0)
    q = QuantTrainModule(Net(), images(1), config=QuantizationConfig(quantize_input=False))
    q(images(4))
    report = export_onnx(
        q.eval(), tmp_path / "n.onnx", example_input=images(1), write_configs=False, strict=False
    )
    assert report.integer_max_steps is None and report.integer_not_simulated
    assert "not run" in str(report)


def test_squeeze_excitation_exports_as_qdq_with_exact_semantics(tmp_path):
    config = QuantizationConfig(target="am68a", activation_rounding="half_even", bias_rule="joint")
    report = export_onnx(
        qat("sigmoid", config),
        tmp_path / "se.onnx",
        example_input=images(1),
        write_configs=False,
        export_format="qdq",
    )
    assert report.ok and report.qdq_semantics.max_steps == 0


@pytest.mark.parametrize("activation", [nn.SiLU, nn.Hardswish])
def test_silu_and_hardswish_become_a_gate_and_a_product_with_ranges(activation, tmp_path):
    """x * gate(x): flagged by the lint, split by wrapping, exported as gate + Mul with Clips."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        activation(),
        nn.Conv2d(8, 8, 3, padding=1),
        activation(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    (violation,) = check_model(model, images(1)).violations  # both uses, one message
    assert violation.rule == "self-gate" and len(violation.other_modules) == 1
    expected = model.eval()(images(2))
    converted = make_module_only(model, images(1))
    assert sum(isinstance(m, SelfGate) for m in converted.modules()) == 2
    assert torch.allclose(converted(images(2)), expected, atol=1e-6)
    q = QuantTrainModule(model.train(), images(1))
    q(images(4))
    report = export_onnx(
        q.eval(), tmp_path / "g.onnx", example_input=images(1), write_configs=False
    )
    assert report.ok and report.integer_max_steps == 0 and report.node_counts["Mul"] == 2


def test_a_learned_scale_is_not_a_range_product():
    """ConvNeXt's layer scale multiplies by a parameter: a weight to fold, not a MulBlock."""

    class LayerScale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.gamma = nn.Parameter(torch.ones(4))

        def forward(self, x):
            return self.conv(x) * self.gamma.reshape(1, -1, 1, 1)

    converted = make_module_only(LayerScale(), images(1))
    assert not any(isinstance(m, MulBlock) for m in converted.modules())
    assert converted(images(3)).shape == (3, 4, 16, 16)  # any batch size still runs
    violations = check_model(converted, images(1)).violations
    assert [v.rule for v in violations] == ["functional-op"] and "fold" in violations[0].message


def test_a_deep_silu_network_converts_in_train_mode():
    """SiLU as x * sigmoid(x) differs from torch's SiLU kernel in the last float32 bits, which
    a deep train-mode network amplifies past any float32 tolerance; conversion compares the two
    models as float64 copies, where the rewrite is exact to far below it."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.efficientnet_b0(num_classes=4).train()
    converted = make_module_only(model, torch.randn(2, 3, 32, 32))
    assert sum(isinstance(m, SelfGate) for m in converted.modules()) > 40


class ScriptableLinear(nn.Linear):
    """timm's Linear: a TorchScript branch, else exactly nn.Linear."""

    def forward(self, x):
        if torch.jit.is_scripting():
            return F.linear(x, self.weight.to(x.dtype), self.bias)
        return F.linear(x, self.weight, self.bias)


class ScaledLinear(nn.Linear):
    def forward(self, x):
        return F.linear(x, self.weight * 2.0, self.bias)


def test_a_linear_subclass_that_computes_as_linear_is_quantized_as_one(tmp_path):
    from edgezoo.conversion.plain_layers import plain_base
    from edgezoo.quantization.weight_layers import QuantLinear

    assert plain_base(ScriptableLinear(4, 2)) is nn.Linear
    assert plain_base(ScaledLinear(4, 2)) is None and plain_base(nn.ReLU()) is None
    assert plain_base(nn.Conv2d(3, 4, 3)) is nn.Conv2d
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), ScriptableLinear(4, 3)
    )
    q = QuantTrainModule(model, images(1))
    assert isinstance(q.module[4], QuantLinear)
    q(images(4))
    path = tmp_path / "l.onnx"
    report = export_onnx(q.eval(), path, example_input=images(1), write_configs=False)
    assert report.ok and report.integer_max_steps == 0


class LeakyNet(nn.Module):
    """Darknet's conv-BN-LeakyReLU (functional, as CSPNet writes it in places)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(F.leaky_relu(self.bn(self.conv(x)), 0.1))


def test_leaky_relu_gets_its_own_signed_range_and_simulates_as_assumed(tmp_path):
    torch.manual_seed(0)
    q = trained(LeakyNet())
    ranges = dict(named_activation_ranges(q.module))
    leaky = next(r for name, r in ranges.items() if "leaky" in name)
    assert float(leaky.clips_act[0]) < 0  # the negative side keeps its values
    report = export_onnx(q, tmp_path / "m.onnx", example_input=images(1), write_configs=False)
    assert report.ok and report.integer_max_steps == 0, str(report)
    assert report.integer_assumed_ops == ("LeakyRelu",)
    proto = onnx.load(tmp_path / "m.onnx")
    leaky_node = next(n for n in proto.graph.node if n.op_type == "LeakyRelu")
    readers = [n.op_type for n in proto.graph.node if leaky_node.output[0] in n.input]
    assert readers == ["Clip"]
