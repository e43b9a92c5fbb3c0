"""QAT wrappers: range insertion, BN folding, freezing, calibration, checkpoints, deploy form."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import seeded_images
from torch import nn

from edgezoo.errors import ModuleOnlyViolationError, QuantizationConfigError, QuantizationModeError
from edgezoo.layers import AddBlock
from edgezoo.quantization import (
    PACT2,
    Clip,
    QATSchedule,
    QuantBatchNorm2d,
    QuantCalibrateModule,
    QuantConv2d,
    QuantizationConfig,
    QuantizedLayer,
    QuantTestModule,
    QuantTrainModule,
    activation_ranges,
    clip_only,
    convert_to_deploy,
    fake_quantize_bias,
    fake_quantize_weight,
    freeze_bn,
    freeze_quant_range,
    layer_report,
    weight_scale,
    wrap_model,
)
from edgezoo.quantization.parameter_free import InputGridLayer

IMAGE_SHAPE = (4, 3, 16, 16)


pytestmark = pytest.mark.usefixtures("one_thread")


class TinyNet(nn.Module):
    """Conv-BN-ReLU6, depthwise conv-BN into an add, pool, biased conv-ReLU, linear head."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU6()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.add = AddBlock()
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(8, 16, 1, bias=True)
        self.relu3 = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.add((x, self.bn2(self.conv2(x)))))
        x = self.relu3(self.conv3(self.pool(x)))
        return self.fc(self.flatten(self.avgpool(x)))


def tiny_net(seed: int = 0) -> TinyNet:
    """A TinyNet with non-trivial BN statistics and affine parameters."""
    torch.manual_seed(seed)
    model = TinyNet()
    for bn in (model.bn1, model.bn2):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    return model


def images(seed: int = 1, shape: tuple[int, ...] = IMAGE_SHAPE) -> torch.Tensor:
    return seeded_images(seed, shape)


def range_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.clone()
        for k, v in model.state_dict().items()
        if "quant." in k or k.split(".")[0].startswith("relu")
    }


def test_ranges_are_inserted_where_ti_puts_them_and_keys_are_kept():
    model = tiny_net()
    float_keys = list(model.state_dict())
    bn1 = model.bn1
    q = QuantTrainModule(model, images())
    m = q.module
    assert m is model
    assert isinstance(m.relu1, PACT2) and m.relu1.signed is False  # ReLU6 -> learned clip
    assert isinstance(m.relu2, PACT2) and isinstance(m.relu3, PACT2)
    # The conv unit holds its BN (same tensors) and the BN's slot passes through.
    assert isinstance(m.conv1, QuantConv2d) and m.conv1.bn.running_mean is bn1.running_mean
    assert isinstance(m.bn1, nn.Identity)
    assert isinstance(m.conv1.input_quant, PACT2)  # the model input
    assert m.conv1.output_quant is None  # a ReLU follows
    assert m.conv2.output_quant is not None and m.conv2.output_quant.signed is True  # add follows
    assert isinstance(m.add, AddBlock)  # an activation follows the add
    assert isinstance(m.pool, QuantizedLayer) and m.pool.output_quant is not None
    assert m.conv3.bn is None and m.conv3.output_quant is None  # ReLU follows
    assert m.conv3.input_grid is m.pool.output_quant
    assert m.fc.input_grid is m.relu3  # through global pool and flatten
    assert m.fc.output_quant is None  # quantize_output=False
    # The global pool gets no range of its own: its output is rounded onto relu3's grid, as
    # the integer graph keeps it at its input's scale.
    assert isinstance(m.avgpool, InputGridLayer) and m.avgpool.input_grid is m.relu3
    assert isinstance(m.avgpool.module, nn.AdaptiveAvgPool2d) and isinstance(m.flatten, nn.Flatten)
    keys = list(m.state_dict())
    assert [k for k in keys if k in float_keys] == float_keys
    new = [k for k in keys if k not in float_keys]
    suffixes = ("clips_act", "running_min", "running_max", "num_batches_tracked")
    flags = [k for k in new if k.endswith("_extra_state")]  # freeze/rounding flags, saved too
    ranges = [k for k in new if k not in flags]
    assert ranges and all(k.endswith(suffixes) and ("quant." in k or "relu" in k) for k in ranges)
    assert len(activation_ranges(m)) == 6


def test_quantize_output_and_per_channel_depthwise():
    q = QuantTrainModule(tiny_net(), images(), quantize_output=True, per_channel_depthwise=True)
    assert q.module.fc.output_quant is not None
    assert q.module.conv2.per_channel and not q.module.conv1.per_channel


def test_folded_weights_equal_conv_bn_in_eval():
    model = tiny_net()
    reference = copy.deepcopy(model).eval()
    q = QuantTrainModule(model, images())
    x = images(2, (2, 3, 16, 16))
    weight, bias = q.module.conv1.folded_weight_bias()
    folded = F.conv2d(x, weight, bias, padding=1)
    expected = reference.bn1(reference.conv1(x))
    torch.testing.assert_close(folded, expected, atol=1e-5, rtol=1e-5)
    weight, bias = q.module.conv2.folded_weight_bias()
    folded = F.conv2d(expected, weight, bias, padding=1, groups=8)
    torch.testing.assert_close(folded, reference.bn2(reference.conv2(expected)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("rule", ["ti_v1", "joint"])
def test_forward_after_freeze_bn_is_exactly_the_folded_quantized_conv(rule):
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 6, 3, padding=1, bias=True), nn.BatchNorm2d(6)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    model = nn.Sequential(conv, bn, nn.ReLU())
    q = QuantTrainModule(model, images(), config=QuantizationConfig(bias_rule=rule))
    for _ in range(2):
        q(images(3))  # learn some ranges and BN statistics first
    q.freeze_bn()
    q.freeze_quant_range()
    x = images(4)
    out = q(x)
    in_range, act = q.module[0].input_quant, q.module[2]
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    w = conv.weight * s.reshape(-1, 1, 1, 1)
    b = (conv.bias - bn.running_mean) * s + bn.bias
    c_in = in_range.clips_act
    in_scale = 128 / torch.maximum(-c_in[0], c_in[1]) if c_in[0] < 0 else 256 / c_in[1]
    joint = (in_scale * weight_scale(w)).reshape(-1)
    b_q = fake_quantize_bias(b, joint, 8, rule, input_signed=bool(c_in[0] < 0))
    expected = act(F.conv2d(in_range(x), fake_quantize_weight(w), b_q, padding=1))
    assert torch.equal(out, expected)
    running_mean = bn.running_mean.clone()
    q(images(5))
    assert torch.equal(bn.running_mean, running_mean)  # frozen BN stops its statistics


def test_unfrozen_training_normalises_with_batch_statistics():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    reference = copy.deepcopy(model)
    bn = model[1]
    q = QuantTrainModule(model, images(), quantize_input=False)
    x = images(6)
    out = q.module[0](x)  # the unit: conv then batch-norm with this batch's statistics
    mean = out.mean(dim=(0, 2, 3))
    torch.testing.assert_close(mean, bn.bias.detach().expand(4), atol=1e-5, rtol=0)
    reference(x)
    torch.testing.assert_close(bn.running_mean, reference[1].running_mean, atol=2e-3, rtol=0)


def test_eval_then_train_resumes_range_learning():
    q = QuantTrainModule(tiny_net(), images())
    q(images(1))
    before = range_state(q.module)
    q.eval()
    q(images(2))
    assert all(torch.equal(before[k], v) for k, v in range_state(q.module).items())
    q.train()
    q(images(3) * 3)
    after = range_state(q.module)
    assert all(p.num_batches_tracked == 2 for p in activation_ranges(q.module))
    assert any(not torch.equal(before[k], after[k]) for k in before if "running_max" in k)


def test_freeze_functions_freeze_and_train_eval_do_not():
    q = QuantTrainModule(tiny_net(), images())
    q(images(1))
    assert freeze_quant_range(q) == 6 and freeze_bn(q) == 2
    q.eval()
    q.train()
    assert all(p.range_frozen for p in activation_ranges(q))
    ranges, bn_mean = range_state(q.module), q.module.conv1.bn.running_mean.clone()
    out = q(images(2) * 5)
    assert all(torch.equal(ranges[k], v) for k, v in range_state(q.module).items())
    assert torch.equal(q.module.conv1.bn.running_mean, bn_mean)
    relu1 = q.module.relu1
    on_grid = relu1(torch.randn(100) * 3) * (256 / relu1.clips_act[1])
    assert out.requires_grad and torch.equal(on_grid, torch.round(on_grid))  # still quantizing
    freeze_quant_range(q, frozen=False)
    freeze_bn(q, frozen=False)
    q(images(3) * 5)
    assert not torch.equal(q.module.conv1.bn.running_mean, bn_mean)
    assert any(not torch.equal(ranges[k], v) for k, v in range_state(q.module).items())
    with pytest.raises(QuantizationModeError, match="QuantTrainModule"):
        freeze_bn(tiny_net())


def test_schedule_freezes_at_ti_epochs():
    schedule = QATSchedule(10)
    assert (schedule.bn_freeze_epoch, schedule.range_freeze_epoch) == (4, 6)
    q = QuantTrainModule(tiny_net(), images(), total_epochs=10)
    states = []
    for epoch in range(10):
        q.start_epoch(epoch)
        states.append((q.module.conv1.bn.bn_frozen, q.module.relu1.range_frozen))
    assert states == [(False, False)] * 4 + [(True, False)] * 2 + [(True, True)] * 4
    q.start_epoch(0)  # resuming earlier: the schedule sets the state from the epoch
    assert not q.module.conv1.bn.bn_frozen
    with pytest.raises(QuantizationConfigError, match="total_epochs"):
        QuantTrainModule(tiny_net(), images()).start_epoch(0)


def test_outlier_constraint_applies_once_at_the_first_training_forward():
    model = tiny_net()
    with torch.no_grad():
        model.conv3.weight.mul_(0.01)
        model.conv3.weight[0, 0] = 100.0
    q = QuantTrainModule(model, images())
    q.eval()
    q(images())
    assert float(model.conv3.weight.detach().abs().max()) == 100.0  # eval never constrains
    q.train()
    q(images())
    limit = float(model.conv3.weight.detach().abs().max())
    assert limit < 100.0 and limit * 128 / 120 in (2.0**k for k in range(-8, 8))
    with torch.no_grad():
        model.conv3.weight[0, 0] = 100.0
    q(images())
    assert float(model.conv3.weight.detach().abs().max()) == 100.0  # once only


def test_calibrate_runs_without_grad_collects_ranges_and_moves_biases():
    model = tiny_net()
    q = QuantCalibrateModule(model, images())
    biases = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("bias")}
    weights = model.conv1.weight.detach().clone()
    bn_stats = model.conv1.bn.running_var.clone()
    for step in range(3):
        q.start_epoch(step)
        out = q(images(step) * 2)
    assert not out.requires_grad and all(p.grad is None for p in model.parameters())
    assert all(p.num_batches_tracked == 3 for p in activation_ranges(model))
    moved = [
        n for n, p in model.named_parameters() if n in biases and not torch.equal(p, biases[n])
    ]
    # Folded BNs' parameters are named under their conv unit (their state_dict keys are not).
    assert {"conv1.bn.bias", "conv2.bn.bias", "conv3.bias", "fc.bias"} <= set(moved)
    assert torch.equal(model.conv1.weight, weights)
    assert torch.equal(model.conv1.bn.running_var, bn_stats)
    q.eval()
    q(images())
    assert all(p.num_batches_tracked == 3 for p in activation_ranges(model))


@pytest.mark.parametrize(("rule", "reduction"), [("joint", 0.5), ("ti_v1", 0.75)])
def test_bias_calibration_reduces_the_output_mean_shift(rule, reduction):
    # ti_v1 biases are b-bit on their own scale, so calibration corrects the shift more coarsely.
    model = tiny_net()
    reference = copy.deepcopy(model).eval()
    config = QuantizationConfig(bias_rule=rule)
    plain = QuantCalibrateModule(
        copy.deepcopy(model), images(), bias_calibration=False, config=config
    )
    calibrated = QuantCalibrateModule(model, images(), config=config)
    x = images(9)
    for _ in range(30):
        plain(x)
        calibrated(x)
    plain.eval()
    calibrated.eval()
    with torch.no_grad():
        target = reference(x).mean(dim=0)
        shift = [float((q(x).mean(dim=0) - target).abs().mean()) for q in (plain, calibrated)]
    assert shift[1] < reduction * shift[0]


def test_test_module_refuses_training():
    q = QuantTestModule(tiny_net(), images())
    assert not q.training and not q.module.training
    with pytest.raises(QuantizationModeError, match="QuantTrainModule"):
        q.train()
    q.eval()
    with torch.no_grad():
        assert q(images()).shape == (4, 4)


def test_checkpoint_round_trip_is_bit_exact():
    q = QuantTrainModule(tiny_net(seed=0), images())
    optimizer = torch.optim.SGD(q.parameters(), lr=0.01)
    for step in range(3):
        loss = q(images(step)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    q.eval()
    x = images(7)
    expected = q(x)
    state = q.module.state_dict()
    fresh = QuantTrainModule(tiny_net(seed=1), images())
    fresh.module.load_state_dict(state)
    fresh.eval()
    assert torch.equal(fresh(x), expected)
    tester = QuantTestModule(tiny_net(seed=2), images())
    tester.module.load_state_dict(state)
    assert torch.equal(tester(x), expected)


def test_float_checkpoint_loads_before_and_after_wrapping():
    float_state = tiny_net(seed=3).state_dict()
    after = QuantTrainModule(tiny_net(seed=4), images())
    after.module.load_state_dict(float_state)  # strict: the ranges keep their values
    before_model = tiny_net(seed=5)
    before_model.load_state_dict(float_state)
    before = QuantTrainModule(before_model, images())
    after.eval()
    before.eval()
    assert torch.equal(after(images()), before(images()))
    partial = {k: v for k, v in after.module.state_dict().items() if k != "relu1.running_max"}
    with pytest.raises(RuntimeError, match=r"relu1\.running_max"):
        before.module.load_state_dict(partial)


def test_deploy_form_matches_clip_only_eval():
    q = QuantTrainModule(tiny_net(), images(), quantize_output=True)
    for step in range(3):
        q(images(step))
    q.eval()
    deploy = convert_to_deploy(q)
    kinds = {type(m) for m in deploy.modules()}
    assert not kinds & {PACT2, QuantConv2d, QuantBatchNorm2d, QuantizedLayer}
    assert isinstance(deploy.bn1, nn.Identity) and isinstance(deploy.relu1, Clip)
    assert type(deploy.conv3).__mro__[1] is nn.Conv2d and isinstance(deploy.conv1[0], Clip)
    assert deploy.conv3.bitwidth == deploy.conv1[0].bitwidth == 8  # what the export records
    x = images(8)
    with clip_only(q), torch.no_grad():
        expected = q(x)
    torch.testing.assert_close(deploy(x), expected, atol=1e-5, rtol=0)
    w = deploy.conv3.weight
    assert torch.equal(w, fake_quantize_weight(w))  # already on its power-of-two grid


def test_wrap_model_modes_and_rejects_functional_models():
    assert isinstance(wrap_model(tiny_net(), True, images()), QuantTrainModule)
    assert isinstance(wrap_model(tiny_net(), "calibrate", images()), QuantCalibrateModule)
    assert isinstance(wrap_model(tiny_net(), "test", images()), QuantTestModule)
    # One vocabulary: the engine's run names work for the wrappers too.
    assert isinstance(wrap_model(tiny_net(), "qat", images()), QuantTrainModule)
    with pytest.raises(QuantizationConfigError, match="calibrate"):
        wrap_model(tiny_net(), "ptq", images())

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.conv(x)) + 1

    with pytest.raises(ModuleOnlyViolationError, match="functional-op") as error:
        QuantTrainModule(Functional(), images(), convert=False)
    assert "relu" in str(error.value) and "add" in str(error.value)


def test_qat_steps_lower_the_quantized_loss():
    torch.manual_seed(0)
    target = torch.arange(16) % 4
    x = 0.5 * torch.randn(16, 3, 8, 8)
    x[torch.arange(16), target % 3] += torch.where(target < 3, 1.0, -1.0)[:, None, None]
    q = QuantTrainModule(tiny_net(), x[:2])
    optimizer = torch.optim.SGD(q.parameters(), lr=0.05, momentum=0.9)

    def quantized_loss() -> float:
        q.eval()
        with torch.no_grad():
            loss = F.cross_entropy(q(x), target)
        q.train()
        return float(loss)

    q(x)  # learn ranges before measuring
    initial = quantized_loss()
    for _ in range(15):
        loss = F.cross_entropy(q(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert quantized_loss() < 0.8 * initial


def test_batch_statistics_path_passes_weight_gradients_straight_through():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    model[1].running_var.uniform_(0.5, 2.0)
    reference_bn = copy.deepcopy(model[1])
    q = QuantTrainModule(model, images(), quantize_input=False)
    conv, bn, x = q.module[0], q.module[0].bn, images(6)
    s = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).reshape(-1, 1, 1, 1)
    rescaled = (fake_quantize_weight(conv.weight * s) / s).detach().requires_grad_()
    # A random upstream gradient: sum(out^2) is nearly constant after batch normalisation.
    upstream = torch.randn(4, 4, 14, 14, generator=torch.Generator().manual_seed(7))
    out = conv(x)  # the unit: conv(x, fq(W*s)/s, b), then its BN with batch statistics
    out.backward(upstream)
    expected = reference_bn(F.conv2d(x, rescaled, conv.bias))
    expected.backward(upstream)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(conv.weight.grad, rescaled.grad, rtol=1e-5, atol=1e-4)


def test_copies_keep_the_conv_bn_pairing_and_layer_report_runs():
    q = QuantTrainModule(tiny_net(), images())
    q(images())
    twin = copy.deepcopy(q)
    assert twin.module.conv1.bn is not q.module.conv1.bn
    assert twin.module.fc.input_grid is twin.module.relu3
    q.eval()
    twin.eval()
    assert torch.equal(twin(images(2)), q(images(2)))
    report = layer_report(q, [images(3), (images(4), None)])
    assert [s.name for s in report.layers] == ["conv1", "conv2", "conv3", "fc"]
    assert report.batches == 2 and all(s.sqnr_db > 10 for s in report.layers)
    assert report.layers[0].output_clip == q.module.relu1.clip_range()
    assert "conv3" in str(report) and not q.training


@pytest.mark.parametrize("groups", [1, 4])
def test_layer_weight_quantizer_matches_fake_quantize_weight_bit_for_bit(groups):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, groups=groups)
    with torch.no_grad():
        conv.weight.mul_(3.0)
        conv.weight[0, 0, 0] = torch.tensor([2.0, 0.5 / 64, -1.5 / 64])  # max 2 and grid ties
        conv.weight[1, 0, 0] = torch.tensor([-2.0, 2.5 / 64, -127.5 / 64])
    per_channel = groups > 1
    quant = QuantConv2d.from_float(conv, bitwidth=8, per_channel=per_channel)
    weight, _ = quant.quantized_weight_bias()
    expected = fake_quantize_weight(conv.weight, 8, per_channel=per_channel)
    assert torch.equal(weight, expected)


def test_in_place_rounding_equals_round_half_away_formula():
    from edgezoo.quantization.grid import round_half_away

    x = torch.cat([torch.randn(1000) * 100, torch.arange(-130, 130) + 0.5, torch.tensor([-0.0])])
    assert torch.equal(round_half_away(x), torch.sign(x) * torch.floor(torch.abs(x) + 0.5))


def test_freezing_is_undone_with_frozen_false():
    q = QuantTrainModule(tiny_net(), images())
    freeze_bn(q)
    freeze_quant_range(q)
    assert freeze_bn(q, frozen=False) > 0
    assert freeze_quant_range(q, frozen=False) > 0
