"""make_module_only: torch.fx conversion of planted patterns and torchvision models, bit-equal,
same state_dict keys; the QAT wrappers convert automatically unless convert=False."""

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import edgezoo
from edgezoo.cli import main
from edgezoo.errors import (
    ConversionError,
    ModuleOnlyViolationError,
    SharedModuleError,
    TIDLRuleError,
)
from edgezoo.layers import AddBlock, CatBlock, ResizeWith

IMAGE = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


class Planted(nn.Module):
    """Every pattern conversion fixes: a shared ReLU, `+=`, torch.cat, x.relu(), F.max_pool2d,
    a legal F.interpolate, torch.flatten and a mean over H and W."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        y = self.conv2(x)
        y += x
        y = y.relu()
        z = torch.cat([F.max_pool2d(y, 2), F.avg_pool2d(x, 2)], dim=1)
        z = F.interpolate(z, scale_factor=2, mode="nearest")
        z = self.relu(z)
        return self.head(torch.flatten(z.mean((2, 3)), 1))


def outputs_equal(original: nn.Module, converted: nn.Module, training: bool) -> bool:
    """Outputs of copies of both, from the same random state (dropout in training)."""
    results = []
    for model in (original, converted):
        torch.manual_seed(0)
        with torch.no_grad():
            results.append(copy.deepcopy(model).train(training)(IMAGE))
    return torch.equal(*results)


def test_each_planted_pattern_becomes_a_module_of_its_own_with_equal_outputs():
    model = Planted()
    converted, report = edgezoo.make_module_only(model, IMAGE, return_report=True)
    kinds = {type(m) for m in converted.modules()}
    assert {AddBlock, CatBlock, ResizeWith, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten} <= kinds
    assert report.changes["add"] == 1 and report.changes["cat"] == 1
    assert report.changes["relu"] == 1 and report.changes["one module per call site"] == 1
    assert list(converted.state_dict()) == list(model.state_dict())
    assert converted.conv1.weight is model.conv1.weight
    assert outputs_equal(model, converted, training=False)
    assert outputs_equal(model, converted, training=True)
    assert edgezoo.check_model(converted, IMAGE).ok
    assert not edgezoo.check_model(model, IMAGE).ok


def test_a_resize_tidl_cannot_run_names_the_node_unless_tidl_rules_is_off():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(self.conv(x), scale_factor=3, mode="bilinear")

    with pytest.raises(TIDLRuleError, match=r"node 'interpolate'.*tidl_rules=False"):
        edgezoo.make_module_only(Odd(), IMAGE)
    converted = edgezoo.make_module_only(Odd(), IMAGE, tidl_rules=False)
    assert not any(isinstance(m, ResizeWith) for m in converted.modules())


def test_real_weight_sharing_and_untraceable_models_are_refused_with_the_way_out():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.conv(x))

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(SharedModuleError, match=r"'conv'.*called 2 times"):
        edgezoo.make_module_only(Shared(), IMAGE)
    with pytest.raises(ConversionError, match=r"cannot trace Branchy.*check_model"):
        edgezoo.make_module_only(Branchy(), IMAGE)


def test_an_in_place_add_whose_input_is_read_again_reads_the_changed_tensor():
    class Aliased(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            z = y.add_(x)
            return torch.cat([z, y], dim=1)

    model = Aliased().eval()
    converted = edgezoo.make_module_only(model, IMAGE)
    with torch.no_grad():
        assert torch.equal(converted(IMAGE), model(IMAGE))
    # Both halves of the concat are the sum now: the later read of y sees the in-place add.
    assert "conv" not in [n.name for n in converted.graph.nodes if n.op == "call_module"][-1:]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "shufflenet_v2_x0_5"])
def test_torchvision_models_convert_bit_equal_in_eval_and_train(name, one_thread):
    model = torchvision.models.get_model(name, num_classes=5)
    converted = edgezoo.make_module_only(model, IMAGE)
    assert list(converted.state_dict()) == list(model.state_dict())
    assert outputs_equal(model, converted, training=False)
    assert outputs_equal(model, converted, training=True)
    assert edgezoo.check_model(converted, IMAGE).ok


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_a_torchvision_model_converts_on_wrapping_trains_exports_and_verifies(
    tmp_path, one_thread, caplog, name
):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32)
    with caplog.at_level(logging.INFO, logger="edgezoo.quantization.wrappers"):
        q = edgezoo.QuantTrainModule(torchvision.models.get_model(name, num_classes=5), x)
    assert "converted to module-only: add" in caplog.text
    optimizer = torch.optim.SGD(q.parameters(), lr=1e-3)
    for _ in range(2):
        loss = q(torch.randn(4, 3, 32, 32)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in q.parameters())
        optimizer.step()
    report = edgezoo.export_onnx(q.eval(), tmp_path / "m.onnx", example_input=x)
    assert report.ok and report.verification.ok and report.integer_max_steps == 0


def test_convert_false_keeps_the_strict_refusal_and_leftovers_are_still_named():
    with pytest.raises(ModuleOnlyViolationError, match="reused-module"):
        edgezoo.QuantTrainModule(Planted(), IMAGE, convert=False)

    class ScalarAdd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.conv(x)) + 1

    with pytest.raises(ModuleOnlyViolationError, match="add"):
        edgezoo.QuantTrainModule(ScalarAdd(), IMAGE)


def test_a_timm_model_converts_when_timm_is_installed():
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", num_classes=5)
    converted = edgezoo.make_module_only(model, IMAGE)
    assert outputs_equal(model, converted, training=False)


def test_the_check_cli_takes_torchvision_names_and_reports_the_fix(capsys):
    args = ["check", "torchvision:regnet_x_400mf", "--input-size", "32", "32"]
    assert main(args) == 1
    assert main([*args, "--fix"]) == 0
    out = capsys.readouterr().out
    assert "conversion: add x" in out and "after conversion: no module-only" in out
    assert main(["check", "torchvision:no_such_net"]) == 2
    assert "torchvision has no model 'no_such_net'" in capsys.readouterr().err


class ShapeGate(nn.Module):
    """A helper whose forward branches on its input's size (fx cannot trace that); its
    weights are in its children."""

    def __init__(self, functional: bool = False) -> None:
        super().__init__()
        self.functional = functional
        self.conv = nn.Conv2d(8, 8, 1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > 8:
            x = self.pool(x)
        x = self.conv(x)
        return F.relu(x) if self.functional else self.relu(x)


class WithShapeGate(nn.Module):
    def __init__(self, gate: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.gate = gate
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gate(self.stem(x)))


class OwnWeightGate(nn.Module):
    """Control flow in a layer holding its own weight (as timm's Conv2dSame pads by shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 8, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2:
            x = F.pad(x, (0, 1, 0, 1))
        return F.conv2d(x, self.weight)


def test_a_submodule_fx_cannot_trace_is_kept_whole_and_quantizes(tmp_path):
    model = WithShapeGate(ShapeGate())
    converted, report = edgezoo.make_module_only(model, IMAGE, return_report=True)
    assert report.changes["kept whole (fx cannot trace it)"] == 1 and "gate" in report.modules
    assert converted.gate is model.gate
    assert outputs_equal(model, converted, training=False)
    q = edgezoo.QuantTrainModule(model, IMAGE)
    with torch.no_grad():
        q(IMAGE)
    report = edgezoo.export_onnx(
        q.eval(), tmp_path / "m.onnx", example_input=IMAGE[:1], write_configs=False
    )
    assert report.ok, str(report)


def test_what_a_kept_whole_submodule_leaves_functional_is_named_at_wrapping():
    with pytest.raises(ModuleOnlyViolationError, match="gate"):
        edgezoo.QuantTrainModule(WithShapeGate(ShapeGate(functional=True)), IMAGE)


def test_an_untraceable_layer_with_its_own_weights_is_refused_by_name():
    with pytest.raises(ConversionError, match=r"in gate, a OwnWeightGate holding its own weights"):
        edgezoo.make_module_only(WithShapeGate(OwnWeightGate()), IMAGE)


class Stacked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.stack([y, y], dim=1)  # plant: stack


def test_a_violation_left_after_conversion_names_the_users_line_not_generated_code():
    with pytest.raises(ModuleOnlyViolationError) as raised:
        edgezoo.QuantTrainModule(Stacked(), IMAGE)
    with open(__file__) as source:
        line = next(i for i, text in enumerate(source, 1) if text.rstrip().endswith("stack"))
    assert f"test_conversion.py:{line}" in str(raised.value), str(raised.value)


class BranchSum(nn.Module):
    """MobileOne's pattern: a sum of branches that starts from the number 0."""

    def __init__(self) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(3, 4, 3, padding=1) for _ in range(3))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = 0
        for branch in self.branches:
            out += branch(x)
        return self.relu(out + 0)


def test_a_sum_that_starts_from_zero_becomes_adds_without_a_functional_op():
    model = BranchSum()
    converted, report = edgezoo.make_module_only(model, IMAGE, return_report=True)
    assert report.changes["add_zero"] == 2 and report.changes["add"] == 2
    assert edgezoo.check_model(converted, IMAGE).ok
    assert outputs_equal(model, converted, training=False)
