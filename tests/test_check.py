"""check_model finds each planted violation, says where, and passes clean models."""

import importlib
import importlib.util

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import CONVERTED_FAMILIES
from torch import nn

import edgezoo
from edgezoo.check import CheckReport, Violation, check_model
from edgezoo.errors import ModuleOnlyViolationError
from edgezoo.layers import AddBlock, CatBlock, ResizeWith

IMAGE = torch.rand(1, 3, 16, 16)


def line_of(marker: str) -> str:
    """The file:line location of the one source line in this file carrying `marker`."""
    with open(__file__) as source:
        lines = [n for n, text in enumerate(source, start=1) if text.rstrip().endswith(marker)]
    assert len(lines) == 1, f"marker {marker!r} must tag exactly one line"
    return f"{__file__}:{lines[0]}"


def only(report: CheckReport, rule: str) -> Violation:
    """The single violation of `rule` in the report."""
    found = [v for v in report.violations if v.rule == rule]
    assert len(found) == 1, str(report)
    return found[0]


class TwoConvs(nn.Module):
    """conv -> act -> conv -> act; subclasses choose how `act` and `join` are spelled."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)


class SharedReLU(TwoConvs):
    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(self.conv1(x))
        return self.relu(self.conv2(x))  # plant: shared-relu


class FunctionalReLU(TwoConvs):
    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(self.conv1(x))
        return F.relu(self.conv2(x))  # plant: F.relu


class PlusAdd(TwoConvs):
    def forward(self, x):
        y = self.conv1(x)
        return y + self.conv2(y)  # plant: plus


class InplaceAdd(TwoConvs):
    def forward(self, x):
        y = self.conv1(x)
        z = self.conv2(y)
        z += y  # plant: iadd
        return z


class Inner(nn.Module):
    """A container nested in another, so the violation's module name is qualified."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return torch.cat([self.conv(x), x], dim=1)  # plant: cat


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(Inner())

    def forward(self, x):
        return self.body(x)


class BatchCat(nn.Module):
    """A leaf, CatBlock-like module: its torch.cat is legitimate, but not on the batch axis."""

    def forward(self, inputs):
        return torch.cat(inputs, dim=0)  # plant: batch-cat


class UsesBatchCat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cat = BatchCat()

    def forward(self, x):
        return self.cat([x, x])


class Resize(nn.Module):
    """A container that resizes with a functional call given as keyword arguments."""

    def __init__(self, **interpolate_kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.kwargs = interpolate_kwargs

    def forward(self, x):
        return F.interpolate(self.conv(x), **self.kwargs)  # plant: interpolate


class Clips(nn.Module):
    """A container that clips with the functional or tensor spelling named by `kind`."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.kind = kind

    def forward(self, x):
        y = self.conv(x)
        if self.kind == "relu6":
            return F.relu6(y)  # plant: relu6
        if self.kind == "clamp":
            return y.clamp(0, 4)  # plant: clamp
        return torch.clip(y, 0, 4)  # plant: torch.clip


class Clean(nn.Module):
    """Every range-changing op is its own module; only shape ops run in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.branch = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6()
        )
        self.add = AddBlock()
        self.cat = CatBlock()
        self.up = ResizeWith(2, "bilinear")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        y = self.add((x, self.branch(x)))
        y = self.up(self.cat([x, y]))
        z = self.pool(y).view(y.size(0), -1).reshape(y.shape[0], -1).contiguous()
        z = torch.flatten(z, 1)[:, :16]
        return self.fc(self.flatten(z))


@pytest.mark.parametrize(
    ("model", "rule", "module", "marker", "words"),
    [
        (SharedReLU(), "reused-module", "relu", "# plant: shared-relu", ["2 times", "nn.ReLU"]),
        (FunctionalReLU(), "functional-op", "<root>", "# plant: F.relu", ["relu", "nn.ReLU"]),
        (PlusAdd(), "functional-op", "<root>", "# plant: plus", ["`+`", "AddBlock"]),
        (InplaceAdd(), "functional-op", "<root>", "# plant: iadd", ["`+=`", "AddBlock"]),
        (Outer(), "functional-op", "body.0", "# plant: cat", ["cat", "CatBlock"]),
        (UsesBatchCat(), "concat-axis", "cat", "# plant: batch-cat", ["batch axis", "dim=1"]),
        (Clips("relu6"), "functional-op", "<root>", "# plant: relu6", ["relu6", "nn.ReLU6"]),
        (Clips("clamp"), "functional-op", "<root>", "# plant: clamp", ["clamp", "nn.ReLU6"]),
        (Clips("clip"), "functional-op", "<root>", "# plant: torch.clip", ["clip", "Hardtanh"]),
    ],
    ids=["shared-relu", "F.relu", "x+y", "x+=y", "cat", "cat-dim0", "relu6", "clamp", "clip"],
)
def test_planted_violation_is_reported_with_module_and_line(model, rule, module, marker, words):
    violation = only(check_model(model, IMAGE), rule)
    assert violation.module == module
    assert violation.location == line_of(marker)
    for word in words:
        assert word in violation.message


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"size": (32, 32)}, ["size=(32, 32)", "scale_factor"]),
        ({"scale_factor": 3}, ["power-of-two"]),
        ({"scale_factor": (2, 4)}, ["equal for H and W"]),
        ({"scale_factor": 2, "mode": "bilinear", "align_corners": True}, ["align_corners"]),
        ({"scale_factor": 2, "mode": "bicubic"}, ["'bicubic'"]),
    ],
    ids=["size", "scale3", "unequal", "align_corners", "bicubic"],
)
def test_tidl_resize_rules(kwargs, words):
    report = check_model(Resize(**kwargs), IMAGE)
    violation = only(report, "resize")
    assert violation.location == line_of("# plant: interpolate")
    assert all(word in violation.message for word in words), violation.message
    assert only(report, "functional-op").module == "<root>"


def test_legal_functional_resize_is_only_a_functional_op():
    report = check_model(Resize(scale_factor=2, mode="nearest"), IMAGE)
    assert [v.rule for v in report.violations] == ["functional-op"]
    assert "ResizeWith" in report.violations[0].message


def test_resize_rules_apply_inside_modules_too():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Upsample(size=(20, 20)))
    violation = only(check_model(model, IMAGE), "resize")
    assert violation.module == "1"


def test_depthwise_kernel_stride_rule():
    ok = nn.Sequential(nn.Conv2d(4, 4, 3, stride=1, padding=1, groups=4))
    assert check_model(ok, torch.rand(1, 4, 8, 8)).ok
    bad = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 5, padding=2, groups=4))
    report = check_model(bad, torch.rand(1, 4, 8, 8))
    violation = only(report, "depthwise-conv")
    assert violation.module == "1"
    assert "5x5" in violation.message and "3x3s1" in violation.message
    relaxed = check_model(bad, torch.rand(1, 4, 8, 8), tidl_rules=False)
    assert relaxed.ok and "TIDL rules not checked" in str(relaxed)


def test_torchvision_models_are_flagged():
    resnet = check_model(torchvision.models.resnet18(), torch.rand(1, 3, 64, 64))
    reused = only(resnet, "reused-module")
    assert reused.module == "layer1.0.relu"
    assert len(reused.other_modules) == 7
    assert "`+=`" in only(resnet, "functional-op").message

    mobilenet = check_model(torchvision.models.mobilenet_v2(), torch.rand(1, 3, 64, 64))
    messages = [v.message for v in mobilenet.violations if v.rule == "functional-op"]
    assert any("`+`" in m for m in messages)
    assert any("adaptive_avg_pool2d" in m for m in messages)


def test_repeated_violations_from_one_call_site_are_merged():
    model = nn.Sequential(PlusAdd(), nn.Conv2d(4, 3, 1), PlusAdd())
    violation = only(check_model(model, IMAGE), "functional-op")
    assert (violation.module, violation.other_modules) == ("0", ("2",))


def test_clean_model_passes_and_report_says_so():
    report = check_model(Clean(), IMAGE)
    assert report.ok, str(report)
    assert "no module-only or TIDL violations" in str(report)
    report.raise_if_failed()


def test_train_eval_flags_are_restored():
    model = Clean().train()
    model.stem[1].eval()  # a frozen BatchNorm inside a training model must stay frozen
    before = [m.training for m in model.modules()]
    check_model(model, IMAGE)
    assert [m.training for m in model.modules()] == before


def test_forward_runs_in_eval_mode_without_grad():
    seen = {}

    class Probe(nn.Module):
        def forward(self, x):
            seen.update(training=self.training, grad=torch.is_grad_enabled())
            return x

    check_model(Probe(), IMAGE)
    assert seen == {"training": False, "grad": False}


def test_hooks_are_removed_even_when_forward_fails():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)).train()
    with pytest.raises(RuntimeError):
        check_model(model, IMAGE)
    assert all(m.training for m in model.modules())
    for module in model.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks
    assert check_model(nn.Sequential(nn.Conv2d(3, 4, 1)), IMAGE).ok


def test_raise_if_failed_lists_every_violation():
    report = check_model(SharedReLU(), IMAGE)
    with pytest.raises(ModuleOnlyViolationError) as err:
        report.raise_if_failed()
    text = str(err.value)
    assert "[reused-module] relu" in text and "test_check.py" in text
    assert text == str(report)


def test_tuple_input_and_public_exports():
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, a, b):
            return self.conv(a) * b  # plant: mul

    violation = only(edgezoo.check_model(TwoInputs(), (IMAGE, IMAGE)), "functional-op")
    assert violation.location == line_of("# plant: mul")
    assert edgezoo.CheckReport is CheckReport and edgezoo.Violation is Violation


def _shipped_builders() -> dict:
    if importlib.util.find_spec("edgezoo.models") is None:
        return {}
    return getattr(importlib.import_module("edgezoo.models"), "BUILDERS", {})


def _checked_models() -> list[str]:
    """Every shipped model but the converted torchvision ones, of which one per family (they
    are module-only by construction: conversion checks them)."""
    converted = getattr(importlib.import_module("edgezoo.models"), "CONVERTED", ())
    families = {*CONVERTED_FAMILIES, "deeplabv3_resnet50"}
    return sorted(n for n in _shipped_builders() if n not in converted or n in families)


@pytest.mark.parametrize("name", _checked_models())
def test_every_shipped_model_passes(name):
    with torch.device("meta"):
        model = _shipped_builders()[name]()
    report = check_model(model, torch.rand(1, 3, 64, 64, device="meta"))
    assert report.ok, str(report)


def test_cli_check_reports_and_sets_exit_status(capsys):
    from edgezoo.cli import main

    assert main(["check", "resnet18", "--input-size", "64", "64"]) == 0
    assert "no module-only or TIDL violations" in capsys.readouterr().out


def test_cli_check_exits_1_and_prints_violations(capsys, monkeypatch):
    import edgezoo.registry
    from edgezoo.cli import main

    monkeypatch.setattr(edgezoo.registry, "get_model", lambda name: torchvision.models.resnet18())
    assert main(["check", "resnet18", "--input-size", "32", "32"]) == 1
    out = capsys.readouterr().out
    assert "[reused-module] layer1.0.relu" in out and "[functional-op] layer1.0" in out
