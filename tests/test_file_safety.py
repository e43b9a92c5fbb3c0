"""No user file is replaced or deleted without --overwrite, and exports are written atomically."""

import json
import os
import subprocess
import sys

import onnx
import pytest

from edgezoo.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

EXPORT = ["export", "mobilenetv2", "--input-size", "32", "32"]


def test_export_refuses_to_replace_files_without_overwrite(tmp_path, capsys):
    assert main([*EXPORT, "-o", str(tmp_path)]) == 0
    onnx_path = tmp_path / "mobilenetv2.onnx"
    before = onnx_path.read_bytes()
    user_file = tmp_path / "mobilenetv2_param.json"
    user_file.write_text("mine")
    capsys.readouterr()
    assert main([*EXPORT, "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "already exist" in err and "--overwrite" in err and "mobilenetv2.onnx" in err
    assert onnx_path.read_bytes() == before and user_file.read_text() == "mine"
    assert main([*EXPORT, "-o", str(tmp_path), "--overwrite"]) == 0
    assert user_file.read_text() != "mine"


def test_a_failed_export_write_leaves_the_previous_file_intact(tmp_path, monkeypatch, capsys):
    assert main([*EXPORT, "-o", str(tmp_path)]) == 0
    onnx_path = tmp_path / "mobilenetv2.onnx"
    before = onnx_path.read_bytes()

    def disk_full(proto, path, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"\0" * 1024)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", disk_full)
    assert main([*EXPORT, "-o", str(tmp_path), "--overwrite"]) == 2
    assert "the previous mobilenetv2.onnx is intact" in capsys.readouterr().err
    assert onnx_path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_simulate_never_writes_over_its_model_or_another_file(tmp_path, capsys):
    assert main([*EXPORT, "--qat", "--allow-uncalibrated", "-o", str(tmp_path)]) == 0
    model = tmp_path / "mobilenetv2_qat.onnx"
    before = model.read_bytes()
    simulate = ["simulate", str(model), "--batches", "1", "--batch-size", "2"]
    assert main([*simulate, "--save-layers", str(model), "--overwrite"]) == 2
    assert "is the model being simulated" in capsys.readouterr().err
    assert model.read_bytes() == before
    other = tmp_path / "notes.npz"
    other.write_text("mine")
    assert main([*simulate, "--save-layers", str(other)]) == 2
    assert other.read_text() == "mine" and "--overwrite" in capsys.readouterr().err


def test_evaluate_refuses_to_replace_eval_json(tmp_path, capsys):
    (tmp_path / "eval.json").write_text("mine")
    args = ["evaluate", "--model", "mobilenetv2", "--max-batches", "1", "--no-progress"]
    assert main([*args, "--out", str(tmp_path)]) == 2
    assert (tmp_path / "eval.json").read_text() == "mine"
    assert main([*args, "--out", str(tmp_path), "--overwrite"]) == 0
    assert (tmp_path / "eval.json").read_text() != "mine"


def test_train_overwrite_never_deletes_its_own_input_or_a_folder(tmp_path, capsys):
    run = tmp_path / "run"
    quick = ["train", "--model", "mobilenetv2", "--epochs", "1", "--max-batches", "1"]
    quick += ["--batch-size", "8", "--no-progress"]
    assert main([*quick, "--out", str(run)]) == 0
    checkpoint = run / "last.pth"
    again = [*quick, "--checkpoint", str(checkpoint), "--out", str(run), "--overwrite"]
    assert main(again) == 2
    assert "would delete" in capsys.readouterr().err and checkpoint.is_file()
    other = tmp_path / "other"
    (other / "best.pth").mkdir(parents=True)
    (other / "best.pth" / "keep.txt").write_text("mine")
    assert main([*quick, "--out", str(other), "--overwrite"]) == 2
    assert (other / "best.pth" / "keep.txt").read_text() == "mine"


def test_demo_refuses_to_replace_its_files_without_overwrite(tmp_path, capsys):
    (tmp_path / "accuracy.png").write_bytes(b"mine")
    assert main(["demo", "--out", str(tmp_path), "--max-batches", "1", "--no-progress"]) == 2
    assert "accuracy.png" in capsys.readouterr().err
    assert (tmp_path / "accuracy.png").read_bytes() == b"mine"


def test_a_folder_held_by_a_live_writer_is_refused_and_a_dead_ones_lock_taken_over(tmp_path):
    from edgezoo.errors import RunExistsError
    from edgezoo.fileio import LOCK_NAME, folder_lock

    folder = tmp_path / "out"
    with folder_lock(folder, "first") as lock:
        assert json.loads(lock.read_text())["what"] == "first"
        busy = r"being written by process \d+ .*\(first\)"
        with pytest.raises(RunExistsError, match=busy), folder_lock(folder, "second"):
            pass
    assert not (folder / LOCK_NAME).exists()
    # A lock left by a killed process is stale: the next writer takes it over.
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    (folder / LOCK_NAME).write_text(
        json.dumps({"pid": int(gone.stdout), "host": os.uname().nodename, "what": "killed"})
    )
    with folder_lock(folder, "third") as lock:
        assert json.loads(lock.read_text())["what"] == "third"


def test_a_second_train_or_export_into_a_busy_folder_is_refused(tmp_path, capsys):
    from edgezoo.fileio import LOCK_NAME

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for command in (
            ["train", "--model", "resnet18", "--max-batches", "1", "--out"],
            ["export", "resnet18", "--input-size", "32", "32", "-o"],
        ):
            folder = tmp_path / command[0]
            folder.mkdir()
            (folder / LOCK_NAME).write_text(
                json.dumps({"pid": holder.pid, "host": os.uname().nodename, "what": "other"})
            )
            assert main([*command, str(folder)]) == 2
            assert f"being written by process {holder.pid}" in capsys.readouterr().err
            assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]  # nothing written
    finally:
        holder.kill()
        holder.wait()


def test_exports_to_a_folder_or_a_read_only_place_are_refused_before_any_work(
    tmp_path, monkeypatch, capsys
):
    import torch

    import edgezoo
    from edgezoo.errors import UsageError
    from edgezoo.models import BUILDERS

    model = BUILDERS["resnet18"](num_classes=3)
    example = torch.rand(1, 3, 32, 32)
    with pytest.raises(UsageError, match=r"is a folder: give the file to write"):
        edgezoo.export_onnx(model, tmp_path, example_input=example, write_configs=False)
    monkeypatch.setattr("edgezoo.fileio.os.access", lambda *_: False)  # a read-only mount
    with pytest.raises(UsageError, match=r"cannot be written \(read-only or no permission\)"):
        edgezoo.export_onnx(model, tmp_path / "m.onnx", example_input=example)
    out = tmp_path / "ro"
    assert main(["export", "resnet18", "--input-size", "32", "32", "-o", str(out)]) == 2
    assert "cannot be written" in capsys.readouterr().err
    assert not list(out.iterdir())


def test_an_export_on_a_full_disk_is_disk_full_error(tmp_path, monkeypatch):
    import errno

    import torch

    import edgezoo
    from edgezoo.errors import DiskFullError
    from edgezoo.models import BUILDERS

    def no_space(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("edgezoo.export.onnx_export.onnx.save_model", no_space)
    with pytest.raises(DiskFullError, match=r"while writing m\.onnx.*nothing written"):
        edgezoo.export_onnx(
            BUILDERS["resnet18"](num_classes=3),
            tmp_path / "m.onnx",
            example_input=torch.rand(1, 3, 32, 32),
            write_configs=False,
        )
    assert not list(tmp_path.iterdir())
