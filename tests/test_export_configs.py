"""The TIDL files parse and carry the QAT (no calibration) or PTQ settings and the preprocessing."""

import json

import pytest

from edgezoo.export import TIDLInputSpec, write_tidl_configs


def read_import_config(path):
    """Parse TIDL's `key = value` import configuration (comments start with #)."""
    entries = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = (part.strip() for part in line.split("=", 1))
            entries[key] = value.strip('"')
    return entries


@pytest.fixture
def imagenet_spec():
    return TIDLInputSpec(3, 224, 224, "classification", resize=256, crop=224)


def test_qat_files(tmp_path, imagenet_spec):
    onnx_path = tmp_path / "mnv2_qat.onnx"
    paths = write_tidl_configs(onnx_path, imagenet_spec, quantized=True)
    assert {p.name for p in paths.values()} == {
        "mnv2_qat_tidl_compile_options.json",
        "mnv2_qat_tidl_import.txt",
        "mnv2_qat_param.json",
    }
    compile_file = json.loads(paths["compile_options"].read_text())
    options = compile_file["provider_options"]
    assert options["tensor_bits"] == 8
    assert options["accuracy_level"] == 0
    assert options["advanced_options:quantization_scale_type"] == 1
    # TIDL ignores calibration frames and iterations at accuracy_level 0: not written.
    assert "advanced_options:calibration_frames" not in options
    assert "advanced_options:calibration_iterations" not in options
    assert compile_file["quantization"].startswith("QAT export")
    assert compile_file["target_device"] == "tda4vm" and compile_file["soc"] == "am68pa"
    assert set(compile_file["option_meanings"]) == set(options)

    entries = read_import_config(paths["import_config"])
    assert entries["modelType"] == "2"
    assert entries["quantizationStyle"] == "3"
    assert entries["calibrationOption"] == "64"
    assert entries["numParamBits"] == entries["numFeatureBits"] == "8"
    assert entries["inDataNorm"] == "1" and entries["inDataFormat"] == "1"
    assert entries["inputNetFile"] == "mnv2_qat.onnx"
    assert [float(v) for v in entries["inMean"].split()] == pytest.approx([123.675, 116.28, 103.53])
    assert [float(v) for v in entries["inScale"].split()] == pytest.approx(
        [0.017125, 0.017507, 0.017429], abs=1e-6
    )
    assert (entries["inWidth"], entries["inHeight"], entries["inNumChannels"]) == (
        "224",
        "224",
        "3",
    )
    assert entries["postProcType"] == "1"
    assert entries["numFrames"] == "1"

    config = json.loads(paths["model_config"].read_text())
    assert config["task_type"] == "classification"
    assert config["preprocess"]["resize"] == 256 and config["preprocess"]["crop"] == 224
    session = config["session"]
    assert session["model_path"] == "mnv2_qat.onnx"
    assert session["input_mean"] == pytest.approx([123.675, 116.28, 103.53])
    assert session["runtime_options"] == options


def test_float_files_say_ptq(tmp_path, imagenet_spec):
    paths = write_tidl_configs(tmp_path / "r18.onnx", imagenet_spec, quantized=False)
    compile_file = json.loads(paths["compile_options"].read_text())
    options = compile_file["provider_options"]
    assert options["accuracy_level"] == 1
    assert options["advanced_options:calibration_frames"] > 1
    assert options["advanced_options:calibration_iterations"] > 1
    assert "post-training quantization (PTQ)" in compile_file["quantization"]
    text = paths["import_config"].read_text()
    assert "post-training quantization (PTQ)" in text
    entries = read_import_config(paths["import_config"])
    assert entries["calibrationOption"] == "7"
    assert int(entries["numFrames"]) > 1
    assert "PTQ" in json.loads(paths["model_config"].read_text())["quantization"]


def test_segmentation_files(tmp_path):
    spec = TIDLInputSpec(3, 384, 768, "segmentation", argmax=True)
    paths = write_tidl_configs(tmp_path / "seg.onnx", spec, quantized=True)
    entries = read_import_config(paths["import_config"])
    assert entries["postProcType"] == "3"
    assert (entries["inWidth"], entries["inHeight"]) == ("768", "384")
    config = json.loads(paths["model_config"].read_text())
    assert config["task_type"] == "segmentation"
    assert config["preprocess"]["resize"] == [384, 768]
    assert config["postprocess"]["with_argmax"] is False


def test_spec_rejects_unknown_task_and_mismatched_normalisation():
    with pytest.raises(ValueError, match="unknown task 'tracking'; use one of classification"):
        TIDLInputSpec(3, 64, 64, "tracking")
    with pytest.raises(ValueError, match="one value per input channel"):
        TIDLInputSpec(1, 64, 64, "classification")
