"""Failures explain themselves: bad options, broken files, full disks, resumes, stuck ranks.

Every expected failure of the CLI is one message line and a non-zero exit (2; 1 means "the
graph breaks a TIDL rule"), never a traceback; nothing already saved is lost.
"""

import errno
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from torch import nn
from torch.utils.data import Subset

import edgezoo
from edgezoo.cli import main
from edgezoo.engine import LAST, TrainConfig, fit, read_checkpoint
from edgezoo.engine import checkpoint as checkpoint_module
from edgezoo.engine.distributed import as_distributed_error, setup_distributed
from edgezoo.errors import (
    DataError,
    DiskFullError,
    ResumeMismatchError,
    TIDLRuleError,
    UncalibratedRangesError,
)
from edgezoo.quantization import QuantTrainModule
from edgezoo.tasks import build_task_data

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = ["--model", "mobilenetv2", "--batch-size", "8", "--max-batches", "1", "--no-progress"]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """The exit status and stderr of one CLI call (argparse's usage errors included)."""
    try:
        status = main(argv)
    except SystemExit as stop:  # argparse: usage line, then one error line, exit 2
        status = stop.code
    return status, capsys.readouterr().err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error" in line.lower()]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", *QUICK, "--epochs", "0", "--out", "r"], "--epochs: must be at least 1, got 0"),
        (["train", *QUICK, "--batch-size", "0", "--out", "r"], "--batch-size: must be at least 1"),
        (["train", *QUICK, "--lr", "nan", "--out", "r"], "--lr: must be a finite number > 0"),
        (["train", *QUICK, "--num-workers", "-1", "--out", "r"], "--num-workers: must be at"),
        (
            ["train", *QUICK, "--max-batches", "0", "--out", "r"],
            "--max-batches: must be at least 1",
        ),
        (["train", *QUICK, "--input-size", "0", "--out", "r"], "--input-size: must be at least 1"),
        (["check", "resnet18", "--input-size", "0", "0"], "--input-size: must be at least 1"),
    ],
)
def test_bad_options_stop_before_any_work_with_one_error_line(argv, message, capsys, tmp_path):
    argv = [str(tmp_path / a) if a == "r" else a for a in argv]
    status, err = run_cli(argv, capsys)
    assert status == 2
    assert len(error_lines(err)) == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_a_file_where_a_folder_is_needed_is_refused(capsys, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    for argv in (["train", *QUICK, "--out", str(taken)], ["export", "resnet18", "-o", str(taken)]):
        status, err = run_cli(argv, capsys)
        assert status == 2 and f"{taken} is a file, not a folder" in err
    assert taken.read_text() == "mine"


def test_cuda_without_a_gpu_is_one_line(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    status, err = run_cli(["train", *QUICK, "--device", "cuda", "--out", str(tmp_path)], capsys)
    assert status == 2 and "torch sees no CUDA GPU" in err and "--device cpu" in err
    assert len(err.strip().splitlines()) == 1


def test_a_non_finite_loss_stops_the_run_with_advice(capsys, tmp_path, monkeypatch):
    from edgezoo.tasks import Classification

    monkeypatch.setattr(Classification, "loss", lambda self, logits, *_: logits.sum() * np.nan)
    status, err = run_cli(["train", *QUICK, "--out", str(tmp_path / "run")], capsys)
    assert status == 2 and "the loss became nan at step 0: lower the learning rate" in err
    assert len(err.strip().splitlines()) == 1


def _image_folder(root: Path, broken: bool) -> None:
    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for index in range(4):
                pixels = np.full((12, 12, 3), 40 * index, dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.png")
    if broken:
        data = (root / "train" / "a" / "0.png").read_bytes()
        (root / "train" / "a" / "0.png").write_bytes(data[: len(data) // 2])


def test_a_corrupt_image_mid_epoch_names_the_file(capsys, tmp_path):
    _image_folder(tmp_path / "data", broken=True)
    argv = ["train", "--model", "resnet18", "--data", str(tmp_path / "data"), "--batch-size", "8"]
    status, err = run_cli(
        [*argv, "--epochs", "1", "--no-progress", "--out", str(tmp_path / "r")], capsys
    )
    assert status == 2 and "cannot read image" in err and "0.png" in err
    assert "Traceback" not in err


def test_verify_tells_an_unreadable_file_from_a_graph_with_violations(capsys, tmp_path):
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("hello")
    status, err = run_cli(["verify", str(not_onnx)], capsys)
    assert status == 2 and "is not a readable ONNX model" in err
    q = QuantTrainModule(edgezoo.get_model("resnet18", num_classes=10), torch.rand(1, 3, 32, 32))
    with torch.no_grad():
        q(torch.randn(2, 3, 32, 32))
    path = tmp_path / "good.onnx"
    edgezoo.export_onnx(q, path, input_size=(32, 32), write_configs=False)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(path.read_bytes()[:5000])
    status, err = run_cli(["verify", str(truncated)], capsys)
    assert status == 2 and "truncated" in err and len(err.strip().splitlines()) == 1


def test_an_uncalibrated_model_is_not_stamped_tidl_ready(tmp_path):
    q = edgezoo.get_model(
        "resnet18", num_classes=10, qat=True, example_input=torch.rand(1, 3, 32, 32)
    )
    with pytest.raises(UncalibratedRangesError, match="30 of the model's activation ranges"):
        edgezoo.export_onnx(q, tmp_path / "x.onnx", input_size=(32, 32))
    assert list(tmp_path.iterdir()) == []


def test_seed_makes_a_run_from_scratch_repeat(capsys, tmp_path):
    states = []
    for run, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        out = tmp_path / run
        assert main(["train", *QUICK, "--epochs", "1", "--seed", seed, "--out", str(out)]) == 0
        states.append(read_checkpoint(out / LAST)["model"])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_resume_refuses_options_that_differ_and_extends_epochs(capsys, tmp_path, caplog):
    out = tmp_path / "run"
    assert main(["train", *QUICK, "--epochs", "1", "--out", str(out)]) == 0
    saved = (out / LAST).read_bytes()
    status, err = run_cli(
        ["train", *QUICK, "--resume", "--lr", "0.5", "--seed", "3", "--out", str(out)], capsys
    )
    assert status == 2
    assert "--lr 0.5 (the run uses 0.002)" in err
    assert "--seed 3 (the run uses 0)" in err
    assert (out / LAST).read_bytes() == saved  # nothing saved is touched
    other = ["--checkpoint", str(out / LAST)]
    status, err = run_cli(["train", *QUICK, "--resume", *other, "--out", str(out)], capsys)
    assert status == 2
    assert f"--checkpoint {out / LAST} would be ignored" in err
    assert main(["train", *QUICK, "--resume", "--epochs", "2", "--out", str(out)]) == 0
    assert read_checkpoint(out / LAST)["epoch"] == 2
    assert "with --epochs 2 instead of 1" in caplog.text


def _fit_tiny(out: Path, epochs: int, resume: bool = False, lr: float = 1e-3) -> None:
    data = build_task_data("embedded", "classification", 32)
    model = edgezoo.get_model("mobilenetv2", num_classes=10)
    config = TrainConfig(epochs=epochs, batch_size=8, max_batches=1, lr=lr, optimizer="adamw")
    train, val = Subset(data.train, range(16)), Subset(data.val, range(8))
    fit(model, train, val, config, out, resume=resume, progress=False)


def test_a_full_disk_names_the_folder_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _fit_tiny(out, epochs=1)
    good = read_checkpoint(out / LAST)

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 18")

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    monkeypatch.setattr("edgezoo.fileio.shutil.disk_usage", lambda path: SimpleNamespace(free=0))
    with pytest.raises(DiskFullError) as info:
        _fit_tiny(tmp_path / "second", epochs=1)
    message = str(info.value)
    assert "is full (0 MB free) while writing last.pth" in message and "MB needed" in message
    monkeypatch.undo()
    assert read_checkpoint(out / LAST)["epoch"] == good["epoch"]
    assert not list((tmp_path / "second").glob(".*.partial"))


def test_a_full_disk_with_a_few_mb_left_is_still_a_full_disk(tmp_path, monkeypatch):
    """torch.save's raw RuntimeError on a disk with 5 MB free: the partial file was deleted
    before the free space was measured, so a small free space alone is not the test."""

    def full_disk(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 18")

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    free = SimpleNamespace(free=5 * 2**20)
    monkeypatch.setattr("edgezoo.fileio.shutil.disk_usage", lambda path: free)
    with pytest.raises(DiskFullError, match=r"is full \(5 MB free\)"):
        _fit_tiny(tmp_path / "run", epochs=1)


def test_resume_after_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _fit_tiny(out, epochs=1)
    before = (out / LAST).read_bytes()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", no_space)
    with pytest.raises(DiskFullError, match=r"the previous last\.pth is intact"):
        _fit_tiny(out, epochs=2, resume=True)
    assert (out / LAST).read_bytes() == before


def test_stale_partial_checkpoints_are_removed_when_a_run_starts(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = out / f".{LAST}.999999.{'c' * 32}.partial"
    legacy = out / f".{LAST}.{'d' * 32}.partial"
    mine = out / "notes.partial"
    for path in (dead, legacy, mine):
        path.write_bytes(b"x")
    _fit_tiny(out, epochs=1)
    assert not dead.exists() and not legacy.exists() and mine.exists()


def test_wrapping_names_a_layer_tidl_cannot_import_before_training(caplog):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=3))
    with pytest.raises(TIDLRuleError, match=r"scale_factor 3\.0 is not supported") as info:
        QuantTrainModule(model, torch.rand(1, 3, 8, 8))
    assert "[resize] 2" in str(info.value) and "tidl_rules=False" in str(info.value)
    q = QuantTrainModule(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=3)),
        torch.rand(1, 3, 8, 8),
        tidl_rules=False,
    )
    assert "layers TIDL cannot import" in caplog.text and isinstance(q, QuantTrainModule)


def test_a_bad_validation_mask_is_found_before_training(tmp_path):
    for split in ("train", "val"):
        for folder in ("images", "masks"):
            (tmp_path / split / folder).mkdir(parents=True)
        for index in range(2):
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(
                tmp_path / split / "images" / f"{index}.png"
            )
            Image.fromarray(np.ones((8, 8), np.uint8)).save(
                tmp_path / split / "masks" / f"{index}.png"
            )
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(tmp_path / "val" / "masks" / "1.png")
    # Building the data (before any model or training exists) already finds it.
    with pytest.raises(DataError, match=r"mask .*val/masks/1\.png holds class ids \[7\]"):
        build_task_data(tmp_path, "segmentation", 16, num_classes=3)


def _stuck_rank(rank: int, port: int, errors, released) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank)
    )
    os.environ["LOCAL_RANK"] = str(rank)
    ctx = setup_distributed("cpu", timeout_s=3.0)
    try:
        if rank == 1:
            released.wait(600)  # a stopped rank: it never joins the collective
        else:
            try:
                dist.all_reduce(torch.ones(1))
            except RuntimeError as err:
                errors.put(str(as_distributed_error(err, ctx.rank)))
                errors.close()
                errors.join_thread()  # the message is in the pipe before the hard exit below
    finally:
        if rank == 0:
            os._exit(0)


def test_a_stuck_rank_fails_the_job_in_seconds_not_half_an_hour():
    context = mp.get_context("spawn")
    errors = context.Queue()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    released = context.Event()  # set only after rank 0 failed: rank 1 never answers before
    processes = [
        context.Process(target=_stuck_rank, args=(r, port, errors, released)) for r in (0, 1)
    ]
    for process in processes:
        process.start()
    message = errors.get(timeout=600)  # the 3 s process-group timeout, not rank 1, ends it
    released.set()
    for process in processes:
        process.kill()
        process.join()
    assert message and "another process of the job stopped answering" in message
    assert "--resume" in message


def test_the_library_and_the_cli_resume_under_one_rule(tmp_path):
    from edgezoo.cli.run_resume import _OPTIONS
    from edgezoo.engine import FIXED_ON_RESUME

    assert set(_OPTIONS) <= set(FIXED_ON_RESUME)
    out = tmp_path / "run"
    _fit_tiny(out, epochs=1)
    with pytest.raises(ResumeMismatchError, match=r"lr: saved 0.001, now 0.01"):
        _fit_tiny(out, epochs=2, resume=True, lr=1e-2)
    _fit_tiny(out, epochs=2, resume=True)  # more epochs: allowed
    assert read_checkpoint(out / LAST)["epoch"] == 2


def test_a_scheme_that_differs_on_resume_is_named_option_by_option():
    from edgezoo.cli.run_resume import described_difference

    saved = {"target": "am67a", "asymmetric_activations": True, "bias_rule": None}
    given = {"target": "am67a", "asymmetric_activations": False, "bias_rule": "joint"}
    assert described_difference("quantization", saved, given) == [
        "--asymmetric-activations not given (the run was started with it)",
        "--bias-rule joint (the run uses the default)",
    ]
