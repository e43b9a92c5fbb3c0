"""make_module_only is never silently wrong: mode-dependent code kept live or refused with its
line, in-place changes seen through views refused, and the caller's model left as it was."""

import copy
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import edgezoo
from edgezoo.errors import (
    ConversionError,
    ExportVerificationError,
    InputShapeError,
    ModuleOnlyViolationError,
)
from edgezoo.quantization import wrap_model

IMAGE = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


class DropoutHead(nn.Module):
    """A user head with functional dropout reading self.training (timm's forward_head does)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.flatten(self.pool(self.conv(x)), 1)
        return self.fc(F.dropout(y, p=0.5, training=self.training))


class TrainOnlyOutput(nn.Module):
    """Returns an extra output in training only (torchvision's GoogLeNet aux logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.aux = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor):
        y = self.conv(x)
        if self.training:
            return y, self.aux(y)
        return y


class NormAct(nn.BatchNorm2d):
    """A BatchNorm subclass with its activation, branching on self.training (timm's
    BatchNormAct2d): traced through, its train branch would be baked in."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.drop = nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
        x = F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, self.training
        )
        return self.act(self.drop(x))


class RunningNorm(nn.BatchNorm2d):
    """A user's BatchNorm subclass without an activation, branching on self.training: no
    known layer, so conversion must refuse it rather than bake in one mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, self.training
        )


class NormActNet(nn.Module):
    def __init__(self, norm: type[nn.Module] = NormAct) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = norm(8)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.bn(self.conv(x))), 1)


def outputs(model: nn.Module, training: bool) -> torch.Tensor:
    model.train(training)
    torch.manual_seed(0)
    with torch.no_grad():
        return model(IMAGE)


@pytest.mark.parametrize("converted_in_training", [True, False])
def test_functional_dropout_on_self_training_stays_live_in_both_modes(converted_in_training):
    model = DropoutHead().train(converted_in_training)
    converted, report = edgezoo.make_module_only(model, IMAGE, return_report=True)

    assert report.changes["dropout"] == 1
    assert converted.training == converted_in_training
    for training in (True, False):
        assert torch.equal(outputs(model, training), outputs(converted, training))
    # dropout really drops in training and is off in eval
    assert not torch.equal(outputs(converted, True), outputs(converted, False))


def test_explicit_always_on_dropout_is_kept_as_written():
    class MonteCarlo(DropoutHead):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.flatten(self.pool(self.conv(x)), 1)
            return self.fc(F.dropout(y, p=0.5, training=True))

    model = MonteCarlo().eval()
    converted, report = edgezoo.make_module_only(model, IMAGE, return_report=True)
    assert report.changes["dropout"] == 0
    assert torch.equal(outputs(model, False), outputs(converted, False))


def test_a_train_only_branch_is_refused_with_what_differs():
    where = r"depends on train/eval mode at (.*test_conversion_safety.py:\d+|the forward.s return)"
    for training in (True, False):
        with pytest.raises(ConversionError, match=where):
            edgezoo.make_module_only(TrainOnlyOutput().train(training), IMAGE)


def test_googlenet_aux_logits_branch_is_refused_naming_torchvision_line():
    model = torchvision.models.googlenet(num_classes=4, aux_logits=True, init_weights=False)
    image = torch.randn(2, 3, 64, 64)
    with pytest.raises(ConversionError, match=r"googlenet\.py:\d+ in .*self\.training"):
        edgezoo.make_module_only(model.train(), image)


def test_an_in_place_add_read_through_an_earlier_view_is_refused():
    class ViewThenAdd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.refine = nn.Conv2d(8, 8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.conv(x)
            low = f[:, :4]
            f += self.refine(f)  # fx traces this out of place: `low` would keep old values
            return torch.cat([f, low], dim=1)

    class ViewThenAddUnderscore(ViewThenAdd):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.conv(x)
            low = f[:, :4]
            f.add_(self.refine(f))
            return torch.cat([f, low], dim=1)

    with pytest.raises(ConversionError, match=r"computes something else.*differs by up to"):
        edgezoo.make_module_only(ViewThenAdd(), IMAGE)
    with pytest.raises(ConversionError, match=r"in-place add at .*test_conversion_safety.py"):
        edgezoo.make_module_only(ViewThenAddUnderscore(), IMAGE)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return copy.deepcopy(model.state_dict())


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor], training: bool) -> None:
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []
    assert all(m.training == training for m in model.modules())


class NormMean(NormActNet):
    """The same with a functional mean, which only conversion can make module-only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)).mean((2, 3))


def test_a_failed_conversion_leaves_the_callers_buffers_and_modes_as_they_were():
    model = NormActNet(RunningNorm).train()
    before = state(model)
    with pytest.raises(ConversionError, match=r"test_conversion_safety.py:\d+ in forward"):
        edgezoo.make_module_only(model, IMAGE)
    assert_unchanged(model, before, training=True)
    model = NormMean(RunningNorm).train()
    before = state(model)
    with pytest.raises(ModuleOnlyViolationError, match=r"automatic conversion.*train/eval mode"):
        wrap_model(model, "train", IMAGE)
    assert_unchanged(model, before, training=True)


def test_a_norm_act_layer_becomes_its_batch_norm_and_activation(tmp_path):
    model = NormActNet().train()
    before = state(model)
    converted, report = edgezoo.make_module_only(model, IMAGE, return_report=True)
    assert report.changes["norm-act split"] == 1
    assert type(converted.bn) is nn.BatchNorm2d and converted.bn.weight is model.bn.weight
    assert list(converted.state_dict()) == list(before)
    for training in (True, False):
        expected = outputs(copy.deepcopy(model), training)
        assert torch.equal(expected, outputs(copy.deepcopy(converted), training))
    q = wrap_model(NormActNet(), "train", IMAGE)  # the check flags it, wrapping converts it
    with torch.no_grad():
        q(IMAGE)
    report = edgezoo.export_onnx(
        q.eval(), tmp_path / "m.onnx", example_input=IMAGE[:1], write_configs=False
    )
    assert report.ok


def test_a_successful_train_mode_conversion_moves_no_statistics_and_keeps_mixed_modes():
    model = torchvision.models.resnet18(num_classes=4).train()
    model.layer1.eval()  # a user's frozen block stays frozen
    before = state(model)
    converted = edgezoo.make_module_only(model, IMAGE)
    assert [k for k in before if not torch.equal(before[k], model.state_dict()[k])] == []
    assert not model.layer1.training and not converted.layer1.training
    assert model.training and converted.training and converted.layer2.training


def test_an_ordered_dict_output_stays_an_ordered_dict():
    class Named(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: torch.Tensor):
            y = self.conv(x)
            return OrderedDict([("out", y), ("aux", torch.relu(y))])

    model = Named().eval()
    converted = edgezoo.make_module_only(model, IMAGE)
    result = converted(IMAGE)
    assert type(result) is OrderedDict and list(result) == ["out", "aux"]
    assert torch.equal(result["aux"], model(IMAGE)["aux"])


def test_a_converted_mnasnet_checkpoint_loads_back_into_torchvision():
    model = torchvision.models.mnasnet0_5(num_classes=4).eval()
    converted = edgezoo.make_module_only(model, torch.randn(1, 3, 64, 64))
    fresh = torchvision.models.mnasnet0_5(num_classes=4)
    fresh.load_state_dict(converted.state_dict())  # width 0.5 reads the stored version
    assert list(fresh.state_dict()) == list(model.state_dict())


def test_what_fx_cannot_take_is_refused_with_what_to_pass_instead(capsys):
    with pytest.raises(ConversionError, match="TorchScript module: convert the eager model"):
        edgezoo.make_module_only(torch.jit.script(nn.Conv2d(3, 4, 3)), IMAGE)
    with pytest.raises(ConversionError, match=r"takes an nn\.Module, not function"):
        edgezoo.make_module_only(lambda x: x, IMAGE)
    wrapped = wrap_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), "train", IMAGE)
    with pytest.raises(ConversionError, match="already wrapped for quantization"):
        edgezoo.make_module_only(wrapped, IMAGE)
    with pytest.raises(ConversionError, match=r"fails on the example input at .*channels"):
        edgezoo.make_module_only(DropoutHead(), torch.rand(1, 5, 16, 16))
    assert "Traceback" not in capsys.readouterr().err


def test_a_model_returning_a_dict_of_one_tensor_exports_and_verifies(tmp_path):
    class Segmenter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.relu = nn.ReLU()

        def forward(self, x: torch.Tensor):
            return OrderedDict([("out", self.relu(self.conv(x)))])

    class TwoHeads(Segmenter):
        def forward(self, x: torch.Tensor):
            y = self.relu(self.conv(x))
            return OrderedDict([("out", y), ("aux", y)])

    q = wrap_model(Segmenter(), "train", IMAGE)
    with torch.no_grad():
        q(IMAGE)
    report = edgezoo.export_onnx(
        q.eval(), tmp_path / "m.onnx", example_input=IMAGE[:1], write_configs=False
    )
    assert report.ok and report.integer_ok
    q = wrap_model(TwoHeads(), "train", IMAGE)
    with torch.no_grad():
        q(IMAGE)
    with pytest.raises(ExportVerificationError, match="aux repeats an earlier output"):
        edgezoo.export_onnx(
            q.eval(), tmp_path / "two.onnx", example_input=IMAGE[:1], write_configs=False
        )
    assert not (tmp_path / "two.onnx").exists()


def test_a_resize_to_a_fixed_size_refuses_inputs_it_would_resize_otherwise():
    class FixedSize(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(self.conv(x), size=(32, 32), mode="nearest")

    model = FixedSize().eval()
    x = torch.rand(1, 3, 16, 16)
    converted = edgezoo.make_module_only(model, x)
    with torch.no_grad():
        assert torch.equal(converted(x), model(x))
        for other in (converted, edgezoo.QuantTrainModule(model, x).eval()):
            # The original gives 32x32 at any input; x2 would give 16x16 here: refused.
            with pytest.raises(InputShapeError, match=r"fixed size 32x32.*8x8 input would give"):
                other(torch.rand(1, 3, 8, 8))


class _FrozenBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.training:
            y = y * 2
        return torch.relu(y)


class _DropoutBlock(_FrozenBlock):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(F.dropout(self.conv(x), 0.5, self.training))


class _WithBlock(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.stem, self.block, self.head = nn.Conv2d(3, 4, 1), block, nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))


def test_a_mode_branch_in_a_child_left_in_eval_while_its_parent_trains_is_seen():
    model = _WithBlock(_FrozenBlock()).train()
    model.block.eval()  # a frozen block: both traces used to see it in eval
    with pytest.raises(ConversionError, match=r"depends on train/eval mode at .*y = y \* 2"):
        edgezoo.make_module_only(model, torch.rand(1, 3, 8, 8))
    # A dropout there stays a live dropout, and the frozen block keeps it off.
    model = _WithBlock(_DropoutBlock()).train()
    model.block.eval()
    converted = edgezoo.make_module_only(model, torch.rand(1, 3, 8, 8))
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(converted(x), model(x))
        converted.train()
        model.train()  # now the block trains too: both drop the same way from the same seed
        torch.manual_seed(1)
        expected = model(x)
        torch.manual_seed(1)
        assert torch.equal(converted(x), expected)


def test_a_module_the_forward_never_calls_is_kept_unused_with_its_keys():
    class SpareHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 1)
            self.spare = nn.Conv2d(4, 7, 1)  # another head, not used in forward

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.conv(x)))

    model = SpareHead().eval()
    x = torch.rand(1, 3, 8, 8)
    converted, report = edgezoo.make_module_only(model, x, return_report=True)
    assert list(converted.state_dict()) == list(model.state_dict())
    assert converted.spare is model.spare and report.changes["kept unused"] == 1
    q = edgezoo.QuantTrainModule(model, x)  # was refused: "would drop state_dict entries"
    assert set(model.state_dict()) <= set(q.module.state_dict())
