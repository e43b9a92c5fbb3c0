"""Learned power-of-two ranges (TQT): gradient, training, checkpoints, export and simulation."""

import math

import numpy as np
import pytest
import torch
from conftest import is_power_of_two, seeded_images
from torch import nn

import edgezoo
from edgezoo.cli import main
from edgezoo.engine import LAST, read_checkpoint
from edgezoo.engine.optim import build_optimizer
from edgezoo.errors import QuantizationConfigError
from edgezoo.models import mobilenetv2 as mobilenet_v2
from edgezoo.quantization import (
    PACT2,
    QuantCalibrateModule,
    QuantizationConfig,
    QuantTestModule,
    QuantTrainModule,
    learned_range_parameters,
)
from edgezoo.simulation import simulate_tidl

pytestmark = pytest.mark.usefixtures("one_thread")

LEARN = QuantizationConfig(learn_ranges=True)


def test_the_threshold_gradient_is_tqts_and_the_forward_is_unchanged():
    learned, plain = PACT2(signed=True, learn_range=True), PACT2(signed=True)
    x = torch.linspace(-6.0, 6.0, 97, requires_grad=True)
    y = learned.train()(x)
    expected = plain.train()(x.detach())
    assert torch.equal(y, expected)  # the same first-batch statistics, the same grid
    assert learned.clip_range() == plain.clip_range() == (-8.0, 8.0)
    assert learned.log2_threshold.item() == pytest.approx(2.5)
    y.sum().backward()
    # d y / d log2 t = ln 2 * (y - x) inside the clip, ln 2 * y where x is clipped.
    inside = (x.detach() > -8.0) & (x.detach() < 8.0)
    manual = torch.where(inside, y.detach() - x.detach(), y.detach()).sum() * math.log(2.0)
    assert learned.log2_threshold.grad.item() == pytest.approx(manual.item(), rel=1e-6)
    assert torch.equal(x.grad, inside.float())  # the input's gradient stays the STE's


def test_a_clipped_input_pulls_the_threshold_up_and_the_clip_follows_in_powers_of_two():
    pact = PACT2(signed=False, learn_range=True).train()
    pact(torch.full((64,), 0.9))  # starts at clip 1
    assert pact.clip_range() == (0.0, 1.0)
    optimizer = torch.optim.SGD(pact.parameters(), lr=0.05)
    for _ in range(20):
        # Values above the clip want a wider range: the loss is lower when they get through.
        loss = (pact(torch.full((64,), 3.0)) - 3.0).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    low, high = pact.clip_range()
    assert low == 0.0 and high >= 4.0 and is_power_of_two(torch.tensor(high))
    pact.freeze_range()
    before = pact.clip_range()
    with torch.no_grad():
        pact.log2_threshold.add_(5.0)
    assert pact.clip_range() == before  # frozen: the clip no longer follows the threshold


def test_qat_with_learned_ranges_exports_and_simulates_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    q = QuantTrainModule(mobilenet_v2(num_classes=5), torch.rand(1, 3, 32, 32), config=LEARN)
    thresholds = learned_range_parameters(q)
    assert thresholds and all(p.requires_grad for p in thresholds)
    optimizer = build_optimizer(q, "adamw", lr=1e-3, weight_decay=0.0, range_lr=0.3)
    assert optimizer.param_groups[-1]["lr"] == 0.3
    clips_at_start = None
    q.train()
    for step in range(6):
        loss = q(seeded_images(step, (8, 3, 32, 32))).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if clips_at_start is None:
            clips_at_start = [m.clip_range() for m in q.modules() if isinstance(m, PACT2)]
    q.eval()
    clips = [m.clip_range() for m in q.modules() if isinstance(m, PACT2)]
    assert clips != clips_at_start  # the gradient moved some clips
    assert all(is_power_of_two(torch.tensor(high)) for _, high in clips)

    path = tmp_path / "m.onnx"
    report = edgezoo.export_onnx(q, path, input_size=(32, 32), write_configs=False)
    assert report.ok and report.integer_max_steps == 0.0
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        qat = q(x).double().numpy()
    (device,) = simulate_tidl(path, x, return_integers=True)
    assert np.array_equal(qat * device.scale, device.integers)

    # The checkpoint holds the thresholds and the clips they give; a wrapper that does not
    # learn (evaluation) loads it and computes the same.
    state = q.module.state_dict()
    assert any(key.endswith("log2_threshold") for key in state)
    tested = QuantTestModule(mobilenet_v2(num_classes=5), torch.rand(1, 3, 32, 32))
    tested.module.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(tested(x), q(x))


def test_learned_ranges_start_from_a_calibrated_checkpoint_and_are_refused_with_affine():
    torch.manual_seed(0)
    ptq = QuantCalibrateModule(mobilenet_v2(num_classes=5), torch.rand(1, 3, 32, 32), config=LEARN)
    assert not learned_range_parameters(ptq)  # calibration has no gradient to learn from
    ptq(seeded_images(0, (8, 3, 32, 32)))
    q = QuantTrainModule(mobilenet_v2(num_classes=5), torch.rand(1, 3, 32, 32), config=LEARN)
    q.module.load_state_dict(ptq.module.state_dict())
    calibrated = [m.clip_range() for m in ptq.modules() if isinstance(m, PACT2)]
    q.train()(seeded_images(1, (8, 3, 32, 32)))
    # The thresholds start from the calibrated clips, not from this batch's statistics.
    assert [m.clip_range() for m in q.modules() if isinstance(m, PACT2)] == calibrated
    with pytest.raises(QuantizationConfigError, match="learn_ranges"):
        QuantizationConfig(learn_ranges=True, asymmetric_activations=True, target="am68a")


def test_cli_learn_ranges_trains_and_records_it(tmp_path, capsys):
    out = tmp_path / "float"
    common = ["--model", "mobilenetv2", "--batch-size", "8", "--max-batches", "2", "--no-progress"]
    assert main(["train", *common, "--epochs", "1", "--out", str(out)]) == 0
    qat = tmp_path / "qat"
    args = ["train", "--qat", *common, "--checkpoint", str(out / LAST), "--learn-ranges"]
    assert main([*args, "--range-lr", "0.05", "--epochs", "1", "--out", str(qat)]) == 0
    saved = read_checkpoint(qat / LAST)
    assert saved["config"]["range_lr"] == 0.05
    assert saved["config"]["metadata"]["quantization"]["learn_ranges"] is True
    assert any(key.endswith("log2_threshold") for key in saved["model"])
    assert main(["train", *common, "--learn-ranges", "--out", str(tmp_path / "f2")]) == 2
    assert "--learn-ranges" in capsys.readouterr().err


def test_a_model_without_ranges_to_learn_gets_no_threshold_group():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    optimizer = build_optimizer(model, "adamw", lr=1e-3, range_lr=0.1)
    assert len(optimizer.param_groups) == 2
