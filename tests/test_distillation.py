"""Distillation (with and without labels), freeze schedules chosen per run, and the fixed
validation split the QAT recipe is chosen on."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import edgezoo
from edgezoo.cli import main
from edgezoo.data import validation_split
from edgezoo.engine import TrainConfig, fit
from edgezoo.errors import DataError, QuantizationConfigError, UsageError
from edgezoo.quantization import QATSchedule, QuantTrainModule

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_loss_is_zero_when_the_student_matches_the_teacher_and_trains_only_the_student():
    loss = edgezoo.DistillationLoss(temperature=3.0)
    teacher = torch.randn(8, 10, requires_grad=True)
    assert float(loss(teacher.detach().clone(), teacher)) == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(8, 10, requires_grad=True)
    loss(student, teacher).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_the_terms_are_mixed_as_documented():
    student, teacher = torch.randn(6, 5), torch.randn(6, 5)
    targets = torch.randint(0, 5, (6,))
    t = 2.0
    kd = (
        F.kl_div(
            F.log_softmax(student / t, 1),
            F.log_softmax(teacher / t, 1),
            log_target=True,
            reduction="batchmean",
        )
        * t
        * t
    )
    ce = F.cross_entropy(student, targets)
    mixed = edgezoo.DistillationLoss(temperature=t, weight=0.25)(student, teacher, targets)
    assert float(mixed) == pytest.approx(float(0.25 * kd + 0.75 * ce), rel=1e-5)
    label_free = edgezoo.DistillationLoss(temperature=t, weight=0.25)(student, teacher)
    assert float(label_free) == pytest.approx(float(kd), rel=1e-5)


def test_segmentation_distils_per_pixel_and_leaves_ignored_pixels_out():
    student, teacher = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    targets = torch.randint(0, 4, (2, 3, 3))
    targets[0] = 255
    loss = edgezoo.DistillationLoss(weight=1.0, ignore_index=255)
    only_second = loss(student[1:], teacher[1:], targets[1:])
    assert float(loss(student, teacher, targets)) == pytest.approx(float(only_second), rel=1e-5)


def test_bad_settings_say_what_to_do():
    with pytest.raises(UsageError, match="temperature"):
        edgezoo.DistillationLoss(temperature=0)
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        edgezoo.DistillationLoss(weight=1.5)
    with pytest.raises(UsageError, match="differ in shape"):
        edgezoo.DistillationLoss()(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(UsageError, match="distill=True"):
        TrainConfig(mode="qat", labels=False)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Linear(8, 4),
    )


def tiny_data(seed: int = 0, labels_seed: int = 1) -> TensorDataset:
    images = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    labels = torch.randint(0, 4, (64,), generator=torch.Generator().manual_seed(labels_seed))
    return TensorDataset(images, labels)


def qat_state(config: TrainConfig, data: TensorDataset, teacher: nn.Module | None):
    q = QuantTrainModule(copy.deepcopy(tiny_net()), torch.rand(1, 3, 8, 8))
    fit(q, data, data, config, progress=False, teacher=teacher)
    return q.module.state_dict()


def test_label_free_distillation_never_reads_the_labels():
    config = TrainConfig(
        mode="qat", num_classes=4, epochs=2, batch_size=16, lr=1e-2, distill=True, labels=False
    )
    teacher = tiny_net().eval()
    first = qat_state(config, tiny_data(labels_seed=1), teacher)
    relabelled = qat_state(config, tiny_data(labels_seed=2), teacher)
    assert all(torch.equal(first[k], relabelled[k]) for k in first)
    with_labels = qat_state(
        TrainConfig(mode="qat", num_classes=4, epochs=2, batch_size=16, lr=1e-2, distill=True),
        tiny_data(labels_seed=2),
        teacher,
    )
    assert any(not torch.equal(first[k], with_labels[k]) for k in first)
    with pytest.raises(UsageError, match="teacher=float_model"):
        qat_state(config, tiny_data(), None)


def test_freeze_epochs_replace_ti_s_rule():
    assert (QATSchedule(8).bn_freeze_epoch, QATSchedule(8).range_freeze_epoch) == (3, 5)
    schedule = QATSchedule(8, bn_freeze_epoch=0, range_freeze_epoch=1)
    assert (schedule.bn_freeze_epoch, schedule.range_freeze_epoch) == (0, 1)
    with pytest.raises(QuantizationConfigError, match="bn_freeze_epoch"):
        QATSchedule(8, bn_freeze_epoch=-1)
    config = TrainConfig(mode="qat", num_classes=4, epochs=3, batch_size=16, bn_freeze_epoch=0)
    q = QuantTrainModule(tiny_net(), torch.rand(1, 3, 8, 8))
    history = fit(q, tiny_data(), tiny_data(), config, progress=False).history
    assert [r["bn_frozen"] for r in history] == [True, True, True]
    assert [r["ranges_frozen"] for r in history] == [False, False, True]


def test_the_validation_split_is_fixed_disjoint_and_reads_unaugmented_items():
    train = TensorDataset(torch.arange(100))
    plain = TensorDataset(torch.arange(100) + 1000)
    kept, held = validation_split(train, 10, unaugmented=plain)
    _, held_again = validation_split(train, 10, unaugmented=plain)
    assert held.indices == held_again.indices and len(held) == 10 and len(kept) == 90
    assert not set(kept.indices) & set(held.indices)
    assert int(held[0][0]) >= 1000  # read from the unaugmented copy
    with pytest.raises(DataError, match="larger"):
        validation_split(train, 100)


def test_the_cli_distils_without_labels_from_the_float_checkpoint(tmp_path):
    quick = ["--model", "mobilenetv2", "--batch-size", "8", "--max-batches", "2", "--no-progress"]
    assert main(["train", *quick, "--epochs", "1", "--out", str(tmp_path / "float")]) == 0
    checkpoint = str(tmp_path / "float" / "last.pth")
    qat = ["train", *quick, "--qat", "--checkpoint", checkpoint, "--epochs", "2"]
    args = [
        *qat,
        "--distill",
        "--no-labels",
        "--freeze-bn-epoch",
        "0",
        "--out",
        str(tmp_path / "q"),
    ]
    assert main(args) == 0
    record = json.loads((tmp_path / "q" / "metrics.json").read_text())
    assert record["config"]["distill"] is True and record["config"]["labels"] is False
    assert record["history"][0]["bn_frozen"] is True
    # The QAT defaults chosen on validation data (docs/accuracy.md): lr 1e-4, no weight decay,
    # TI's freeze schedule (2 epochs: ranges freeze at epoch 2, never).
    config = record["config"]
    assert (config["lr"], config["weight_decay"], config["range_freeze_epoch"]) == (1e-4, 0.0, None)
    assert [r["ranges_frozen"] for r in record["history"]] == [False, False]
    assert main([*qat, "--no-labels", "--out", str(tmp_path / "q2")]) == 2
    no_teacher = ["train", *quick, "--qat", "--distill", "--out", str(tmp_path / "q3")]
    assert main(no_teacher) == 2


def test_writing_the_quantized_weights_back_keeps_what_qat_computes():
    from edgezoo.quantization import write_back_quantized_weights
    from edgezoo.quantization.weight_layers import QuantWeightMixin

    q = QuantTrainModule(tiny_net(), torch.rand(1, 3, 8, 8))
    q(torch.randn(8, 3, 8, 8))
    units = [m for m in q.module.modules() if isinstance(m, QuantWeightMixin)]
    before = [u.quantized_weight_bias()[0].detach().clone() for u in units]
    assert write_back_quantized_weights(q) == len(units)
    for unit, old in zip(units, before, strict=True):
        new, _ = unit.quantized_weight_bias()
        assert float((new != old).double().mean()) < 0.01
        folded, _ = unit.folded_weight_bias()
        assert torch.allclose(folded, new, rtol=0, atol=1e-6)  # the float weights are the grid


def test_resuming_a_distilling_run_refuses_a_changed_teacher(tmp_path, capsys):
    quick = ["--model", "mobilenetv2", "--batch-size", "8", "--max-batches", "1", "--no-progress"]
    assert main(["train", *quick, "--epochs", "1", "--out", str(tmp_path / "float")]) == 0
    teacher = tmp_path / "float" / "last.pth"
    out = str(tmp_path / "q")
    qat = ["train", *quick, "--qat", "--checkpoint", str(teacher), "--distill"]
    assert main([*qat, "--epochs", "1", "--out", out]) == 0
    saved = json.loads((tmp_path / "q" / "metrics.json").read_text())["config"]["metadata"]
    assert len(saved["teacher_sha256"]) == 64
    # Another float model in the teacher's place: resuming would distil from it silently.
    assert (
        main(
            [
                "train",
                *quick,
                "--epochs",
                "1",
                "--seed",
                "5",
                "--out",
                str(tmp_path / "float"),
                "--overwrite",
            ]
        )
        == 0
    )
    resume = ["train", *quick, "--out", out, "--resume", "--epochs", "2"]
    assert main(resume) == 2
    assert "has changed since it started" in capsys.readouterr().err
