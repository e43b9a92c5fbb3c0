"""`edgezoo demo` end to end with tiny settings: table, plot, results and a verified QAT ONNX."""

import json
from pathlib import Path

import pytest

from edgezoo.cli import main
from edgezoo.demo import DemoOptions, run_demo
from edgezoo.export import verify_onnx

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")


def test_classification_demo_from_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))  # no cached weights
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--epochs", "2", "--qat-epochs", "1", "--max-batches", "2"]
    assert main([*args, "--batch-size", "16", "--no-progress"]) == 0
    table = capsys.readouterr().out
    for text in (
        "mobilenetv2",
        "float",
        "PTQ",
        "QAT",
        "top-1 (%)",
        "from scratch",
        "verification: OK",
    ):
        assert text in table
    results = json.loads((out / "results.json").read_text())
    assert results["export_ok"] and results["verification_ok"]
    assert set(results["metrics"]) == {"float", "calibrate", "qat"}
    assert len(results["histories"]["float"]) == 2 and len(results["histories"]["qat"]) == 1
    onnx_path = out / "mobilenetv2_qat.onnx"
    assert str(onnx_path) in table and verify_onnx(onnx_path).ok
    assert results["tidl_files"] and all(Path(p).is_file() for p in results["tidl_files"].values())
    assert (out / "accuracy.png").read_bytes().startswith(PNG_MAGIC)

    assert main([*args, "--no-progress"]) == 2
    assert "already holds demo files" in capsys.readouterr().err


def test_segmentation_demo_on_composite_scenes(tmp_path):
    result = run_demo(
        DemoOptions(
            task="segmentation",
            out_dir=tmp_path,
            float_epochs=1,
            qat_epochs=1,
            max_batches=1,
            batch_size=4,
            progress=False,
        )
    )
    assert result.ok and result.metric == "miou"
    table = result.table()
    assert "deeplabv3plus_mobilenetv2" in table and "COMPOSITE" in table and "mIoU (%)" in table
    assert verify_onnx(result.onnx_path).ok
    assert result.plot_path.read_bytes().startswith(PNG_MAGIC)
    assert json.loads(result.results_path.read_text())["task"] == "segmentation"


def test_detection_demo_draws_its_boxes(tmp_path):
    result = run_demo(
        DemoOptions(
            task="detection",
            out_dir=tmp_path,
            float_epochs=1,
            qat_epochs=1,
            max_batches=1,
            batch_size=4,
            input_size=64,
            progress=False,
        )
    )
    assert result.ok and result.metric == "map"
    table = result.table()
    assert "yolox_nano_lite" in table and "COMPOSITE" in table and "mAP" in table
    prototxt = result.tidl_files["meta_arch"]
    assert Path(prototxt).is_file() and "verification: OK" in table
    assert result.examples_path.read_bytes().startswith(PNG_MAGIC)
    assert json.loads(result.results_path.read_text())["examples"] == str(result.examples_path)
