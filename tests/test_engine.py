"""edgezoo.engine: float / calibrate / QAT through one loop, metrics, checkpoints, resume, CLI."""

import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, Subset

from edgezoo.cli import main
from edgezoo.engine import (
    BEST,
    LAST,
    METRICS_CSV,
    METRICS_JSON,
    TrainConfig,
    evaluate,
    fit,
    prepare_run_dir,
    read_checkpoint,
)
from edgezoo.engine.checkpoint import save_checkpoint
from edgezoo.engine.setup import build_model
from edgezoo.errors import CheckpointMismatchError, RunExistsError
from edgezoo.quantization import PACT2
from edgezoo.registry import get_model
from edgezoo.tasks import ClassificationMeter, SegmentationMeter, build_task_data

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fmnist():
    """Embedded Fashion-MNIST at 32x32, cut to a few batches."""
    data = build_task_data("embedded", "classification", 32)
    return Subset(data.train, range(64)), Subset(data.val, range(16))


@pytest.fixture(scope="module")
def composite():
    """Composite segmentation scenes at 64x64, cut to a few batches."""
    data = build_task_data("composite", "segmentation", 64)
    return Subset(data.train, range(16)), Subset(data.val, range(4))


def _config(**overrides) -> TrainConfig:
    settings = {
        "epochs": 1,
        "batch_size": 8,
        "max_batches": 1,
        "lr": 1e-3,
        "optimizer": "adamw",
        "num_classes": 10,
    }
    settings.update(overrides)
    return TrainConfig(**settings)


def _ranges(model: torch.nn.Module) -> list[PACT2]:
    return [m for m in model.modules() if isinstance(m, PACT2)]


def test_classification_meter_counts_top1_top5_and_loss():
    meter = ClassificationMeter(num_classes=6)
    logits = torch.tensor([[5.0, 4, 3, 2, 1, 0], [0.0, 1, 2, 3, 4, 5], [0.0, 5, 1, 1, 1, 1]])
    meter.update(logits, torch.tensor([0, 0, 2]), torch.tensor(2.0))
    metrics = meter.compute()
    assert metrics["top1"] == pytest.approx(100 / 3)
    assert metrics["top5"] == pytest.approx(200 / 3)  # sample 2 has class 0 last of 6
    assert metrics["loss"] == pytest.approx(2.0)


def test_segmentation_meter_miou_pixel_accuracy_and_ignore_index():
    meter = SegmentationMeter(num_classes=3, ignore_index=255)
    targets = torch.tensor([[[0, 0, 1, 255]]])
    predicted = torch.tensor([[[0, 1, 1, 2]]])
    logits = torch.nn.functional.one_hot(predicted, 3).permute(0, 3, 1, 2).float()
    meter.update(logits, targets, torch.tensor(1.0))
    metrics = meter.compute()
    # class 0: TP 1, union 2; class 1: TP 1, union 2; class 2 absent everywhere counted pixels.
    assert metrics["miou"] == pytest.approx(50.0)
    assert metrics["pixel_acc"] == pytest.approx(200 / 3)


def test_float_qat_and_calibration_through_one_loop(fmnist, tmp_path):
    train, val = fmnist
    torch.manual_seed(0)
    model = build_model("mobilenetv2", 10, 32)
    result = fit(model, train, val, _config(), tmp_path / "float", progress=False)
    for name in (LAST, BEST, METRICS_CSV, METRICS_JSON):
        assert (tmp_path / "float" / name).is_file()
    saved = read_checkpoint(tmp_path / "float" / LAST)
    assert saved["epoch"] == 1 and saved["config"]["mode"] == "float"
    assert set(saved["model"]) == set(model.state_dict())
    assert 0.0 <= result.final["val_top1"] <= 100.0 and math.isfinite(result.final["train_loss"])
    assert json.loads((tmp_path / "float" / METRICS_JSON).read_text())["history"][0]["epoch"] == 1

    float_checkpoint = tmp_path / "float" / LAST
    calibrated = build_model("mobilenetv2", 10, 32, mode="calibrate", checkpoint=float_checkpoint)
    weights_before = calibrated.module.features[1].conv[1].weight.detach().clone()
    fit(calibrated, train, val, _config(mode="calibrate"), tmp_path / "ptq", progress=False)
    assert all(int(r.num_batches_tracked) == 1 for r in _ranges(calibrated))
    assert torch.equal(weights_before, calibrated.module.features[1].conv[1].weight)
    assert all(p.grad is None for p in calibrated.parameters())
    ptq_state = read_checkpoint(tmp_path / "ptq" / LAST)["model"]
    assert any(key.endswith("clips_act") for key in ptq_state)

    qat = build_model("mobilenetv2", 10, 32, mode="qat", checkpoint=float_checkpoint)
    result = fit(qat, train, val, _config(mode="qat", epochs=2), tmp_path / "qat", progress=False)
    assert [r["bn_frozen"] for r in result.history] == [True, True]  # TI: from epochs//2 - 1
    assert [r["ranges_frozen"] for r in result.history] == [False, False]
    # The QAT checkpoint restores the ranges: evaluating it reproduces the run's last validation.
    tested = build_model("mobilenetv2", 10, 32, mode="test", checkpoint=tmp_path / "qat" / LAST)
    metrics = evaluate(tested, val, _config(mode="qat"), progress=False)
    assert metrics["top1"] == pytest.approx(result.final["val_top1"])
    assert metrics["loss"] == pytest.approx(result.final["val_loss"], rel=1e-5)


def test_segmentation_float_calibrate_qat(composite, tmp_path):
    train, val = composite
    config = _config(task="segmentation", num_classes=11, batch_size=4, ignore_index=255)
    torch.manual_seed(0)
    model = build_model("deeplabv3plus_mobilenetv2", 11, 64)
    result = fit(model, train, val, config, tmp_path / "float", progress=False)
    assert {"val_miou", "val_pixel_acc", "val_loss"} <= result.final.keys()
    checkpoint = tmp_path / "float" / LAST
    for mode in ("calibrate", "qat"):
        wrapped = build_model("deeplabv3plus_mobilenetv2", 11, 64, mode=mode, checkpoint=checkpoint)
        config.mode = mode
        result = fit(wrapped, train, val, config, tmp_path / mode, progress=False)
        assert 0.0 <= result.final["val_miou"] <= 100.0
        assert all(int(r.num_batches_tracked) >= 1 for r in _ranges(wrapped))


class _Interrupting(Dataset):
    """Raises KeyboardInterrupt (Ctrl-C) at the n-th item read, once."""

    def __init__(self, dataset: Dataset, after: int) -> None:
        self.dataset, self.after, self.reads = dataset, after, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        self.reads += 1
        if self.reads == self.after:
            raise KeyboardInterrupt
        return self.dataset[index]


@pytest.mark.parametrize("mode", ["float", "qat"])
def test_interrupted_run_resumes_to_the_same_weights(fmnist, tmp_path, mode):
    train, val = fmnist
    config = _config(mode=mode, epochs=3, max_batches=2, lr=3e-3)

    def fresh_model():
        torch.manual_seed(1)
        return build_model("mobilenetv2", 10, 32, mode=mode)

    straight = fresh_model()
    fit(straight, train, val, config, tmp_path / "straight", progress=False)

    # Ctrl-C in the middle of epoch 2: epoch 1 reads 16 training items and 16 validation items.
    interrupting = _Interrupting(train, after=16 + 16 + 12)
    with pytest.raises(KeyboardInterrupt):
        fit(fresh_model(), interrupting, val, config, tmp_path / "cut", progress=False)
    saved = read_checkpoint(tmp_path / "cut" / LAST)
    assert saved["epoch"] == 1  # the last complete checkpoint is intact and loadable

    resumed = fresh_model()
    result = fit(resumed, train, val, config, tmp_path / "cut", resume=True, progress=False)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    owner = resumed.module if mode == "qat" else resumed
    expected = (straight.module if mode == "qat" else straight).state_dict()
    for key, tensor in owner.state_dict().items():
        assert torch.equal(tensor, expected[key]), key


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / LAST
    save_checkpoint({"epoch": 1}, path)

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert read_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == [LAST]


def test_run_directory_rules(tmp_path):
    prepare_run_dir(tmp_path, resume=False, overwrite=False)
    with pytest.raises(RunExistsError, match="nothing to resume"):
        prepare_run_dir(tmp_path, resume=True, overwrite=False)
    save_checkpoint({}, tmp_path / LAST)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunExistsError, match=r"--resume .* --overwrite"):
        prepare_run_dir(tmp_path, resume=False, overwrite=False)
    prepare_run_dir(tmp_path, resume=False, overwrite=True)
    assert not (tmp_path / LAST).exists() and (tmp_path / "notes.txt").read_text() == "mine"


def test_checkpoint_of_another_model_names_the_keys(tmp_path):
    torch.save(get_model("resnet18", num_classes=10).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(CheckpointMismatchError) as err:
        build_model("mobilenetv2", 10, 32, checkpoint=tmp_path / "r18.pth")
    message = str(err.value)
    assert "features.0.0.weight" in message and "conv1.weight" in message
    assert "314 missing" in message and "122 unexpected" in message


def test_qat_checkpoint_needs_a_quantized_mode(fmnist, tmp_path):
    qat = build_model("mobilenetv2", 10, 32, mode="qat")
    torch.save(qat.module.state_dict(), tmp_path / "qat.pth")
    with pytest.raises(CheckpointMismatchError, match="--qat"):
        build_model("mobilenetv2", 10, 32, checkpoint=tmp_path / "qat.pth")
    tested = build_model("mobilenetv2", 10, 32, mode="test", checkpoint=tmp_path / "qat.pth")
    assert torch.equal(_ranges(tested)[0].clips_act, _ranges(qat)[0].clips_act)


def test_cli_train_refuses_existing_run_resumes_and_evaluates(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--model", "mobilenetv2", "--batch-size", "8", "--max-batches", "1", "--no-progress"]
    assert main(["train", *common, "--epochs", "1", "--out", str(out)]) == 0
    assert "mobilenetv2 float, epoch 1" in capsys.readouterr().out

    assert main(["train", *common, "--epochs", "1", "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err

    assert main(["train", *common, "--out", str(out), "--resume"]) == 0
    assert read_checkpoint(out / LAST)["epoch"] == 1  # already complete: nothing more to do

    assert (
        main(
            ["calibrate", *common, "--checkpoint", str(out / LAST), "--out", str(tmp_path / "ptq")]
        )
        == 0
    )
    assert (
        main(
            [
                "evaluate",
                *common,
                "--checkpoint",
                str(tmp_path / "ptq" / BEST),
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["quantized"] is True and 0.0 <= report["top1"] <= 100.0

    assert main(["evaluate", "--model", "resnet18", "--checkpoint", str(out / LAST)]) == 2
    assert "does not fit resnet18" in capsys.readouterr().err


def test_cli_bad_data_directory(tmp_path, capsys):
    args = [
        "train",
        "--model",
        "mobilenetv2",
        "--data",
        str(tmp_path / "nope"),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(args) == 2
    assert "does not exist" in capsys.readouterr().err


def test_epoch_seeding_makes_data_order_independent_of_history(fmnist):
    from edgezoo.engine.rng import seed_epoch

    seed_epoch(0, 2)
    first = torch.rand(3), np.random.rand()
    torch.rand(100)
    seed_epoch(0, 2)
    assert torch.equal(first[0], torch.rand(3)) and first[1] == np.random.rand()


def test_held_out_validation_split_is_the_seeded_choice_and_leaves_the_test_set_alone():
    full = build_task_data("embedded", "classification", 32)
    held = build_task_data("embedded", "classification", 32, validation_split=500)
    assert len(held.train) + len(held.val) == len(full.train)
    assert held.test is not None and len(held.test) == len(full.val)
    assert set(held.train.indices).isdisjoint(held.held_out)
    assert list(held.held_out) == held.val.indices
    # Validation reads the held-out items without training augmentation.
    first = held.held_out[0]
    assert torch.equal(held.val[0][0], held.val[0][0])  # augmentation would draw anew each read
    assert held.val.dataset is not held.train.dataset
    assert held.val[0][1] == full.train[first][1]


def test_cli_train_with_a_validation_split_records_it_and_tests_once(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--model", "mobilenetv2", "--batch-size", "8", "--max-batches", "1", "--no-progress"]
    args = ["train", *common, "--epochs", "1", "--validation-split", "300", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "test set (the final figure" in printed
    held = json.loads((out / "held_out.json").read_text())
    expected = build_task_data("embedded", "classification", 32, validation_split=300)
    assert held["size"] == 300 and held["items"] == list(expected.held_out)
    test = json.loads((out / "test_metrics.json").read_text())
    assert test["epoch"] == 1 and 0.0 <= test["top1"] <= 100.0
    saved = read_checkpoint(out / LAST)["config"]["metadata"]
    assert saved["validation_split"] == 300

    # Resuming keeps the split; asking for another one is refused.
    resumed = ["train", *common, "--validation-split", "200", "--out", str(out), "--resume"]
    assert main(resumed) == 2
    assert "--validation-split 200 (the run uses 300)" in capsys.readouterr().err
    assert main(["train", *common, "--out", str(out), "--resume", "--epochs", "2"]) == 0
    assert json.loads((out / "test_metrics.json").read_text())["epoch"] == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--distill"], "--distill only act in QAT: add --qat"),
        (["--freeze-bn-epoch", "0"], "only act in QAT"),
        (["--qat", "--distill-temperature", "3"], "only act with --distill"),
        (["--qat", "--distill-weight", "0.3"], "only act with --distill"),
        (["--qat", "--distill", "--no-labels", "--distill-weight", "0"], "drop --distill-weight"),
        (["--qat", "--range-lr", "0.1"], "add --learn-ranges"),
        (["--qat", "--epochs", "2", "--freeze-ranges-epoch", "2"], "never reached"),
    ],
)
def test_options_that_would_do_nothing_are_refused_before_out_exists(
    tmp_path, capsys, options, message
):
    out = tmp_path / "run"
    common = ["train", "--model", "mobilenetv2", "--max-batches", "1", "--no-progress"]
    assert main([*common, *options, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
