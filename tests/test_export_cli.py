"""`edgezoo export` and `edgezoo verify`: round trips, checkpoints and exit codes."""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgezoo.cli import main
from edgezoo.models import BUILDERS
from edgezoo.quantization import QuantizationConfig, QuantTrainModule, activation_ranges

pytestmark = pytest.mark.usefixtures("one_thread")


def clip_bounds(path):
    """Sorted (min, max) of every Clip node of an exported graph."""
    proto = onnx.load(path)
    values = {
        i.name: float(numpy_helper.to_array(i)) for i in proto.graph.initializer if not i.dims
    }
    return sorted(
        (values[n.input[1]], values[n.input[2]]) for n in proto.graph.node if n.op_type == "Clip"
    )


def test_qat_export_then_verify_round_trip(tmp_path, capsys):
    # A fresh QAT model's ranges never saw data: refused unless the user says they know.
    export = ["export", "resnet18", "--qat", "--input-size", "32", "32", "-o", str(tmp_path)]
    assert main(export) == 2
    assert "30 of the model's activation ranges never saw data" in capsys.readouterr().err
    path = tmp_path / "resnet18_qat.onnx"
    assert not path.exists()
    assert main([*export, "--allow-uncalibrated"]) == 0
    assert path.is_file()
    assert "verification: OK" in capsys.readouterr().out
    compile_options = json.loads((tmp_path / "resnet18_qat_tidl_compile_options.json").read_text())
    assert compile_options["provider_options"]["accuracy_level"] == 0
    assert main(["verify", str(path)]) == 1
    assert "[untrained-ranges] <graph>: 30 of the exported QAT ranges" in capsys.readouterr().out
    assert main(["verify", str(path), "--allow-uncalibrated"]) == 0
    assert "OK, no TIDL rule violations" in capsys.readouterr().out


def test_float_export_fails_the_qat_rules_but_passes_the_float_rules(tmp_path, capsys):
    assert main(["export", "mobilenetv2", "--input-size", "32", "32", "-o", str(tmp_path)]) == 0
    path = tmp_path / "mobilenetv2.onnx"
    capsys.readouterr()
    assert main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "[weight-grid]" in out and "[input-clip] input" in out
    assert main(["verify", str(path), "--float"]) == 0


@pytest.mark.parametrize("engine_style", [False, True])
def test_qat_checkpoint_ranges_reach_the_graph(tmp_path, engine_style):
    torch.manual_seed(0)
    q = QuantTrainModule(BUILDERS["resnet18"](num_classes=7), torch.rand(1, 3, 32, 32))
    q.train()
    with torch.no_grad():
        q(torch.randn(4, 3, 32, 32) * 3)
    state = q.module.state_dict()
    checkpoint = tmp_path / "qat.pth"
    torch.save({"model": state, "epoch": 3} if engine_style else state, checkpoint)
    args = ["export", "resnet18", "--qat", "--checkpoint", str(checkpoint)]
    assert main([*args, "--input-size", "32", "32", "-o", str(tmp_path / "out")]) == 0
    expected = sorted(pact.clip_range() for pact in activation_ranges(q))
    assert np.allclose(clip_bounds(tmp_path / "out" / "resnet18_qat.onnx"), expected)


def test_failing_export_exits_1_and_verify_reports_missing_files(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "missing.onnx")]) == 2
    assert "no ONNX file" in capsys.readouterr().err
    args = ["export", "resnet18", "--checkpoint", str(tmp_path / "missing.pth")]
    assert main([*args, "-o", str(tmp_path)]) == 2
    assert main(["export", "resnet1800", "-o", str(tmp_path)]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_opset_choices_are_the_exported_range(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "resnet18", "--opset", "18", "-o", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "choose from 11, 12, 13, 14, 15, 16, 17" in capsys.readouterr().err


def _qat_checkpoint(tmp_path, name: str, config=None, classes: int = 7):
    """A QAT checkpoint whose ranges saw one batch."""
    torch.manual_seed(0)
    model = BUILDERS["resnet18"](num_classes=classes)
    q = QuantTrainModule(model, torch.rand(1, 3, 32, 32), config=config)
    with torch.no_grad():
        q.train()(torch.randn(4, 3, 32, 32))
    path = tmp_path / name
    torch.save(q.module.state_dict(), path)
    return path


def test_a_checkpoint_is_exported_only_as_it_was_trained(tmp_path, capsys):
    # Another --num-classes would export a random head; another scheme a different graph.
    checkpoint = _qat_checkpoint(tmp_path, "qat.pth")
    base = ["export", "resnet18", "--qat", "--input-size", "32", "32", "--checkpoint"]
    out = ["-o", str(tmp_path / "out")]
    assert main([*base, str(checkpoint), "--num-classes", "3", *out]) == 2
    assert "--num-classes 3 does not match" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    per_channel = QuantizationConfig(target="am68a", per_channel_weights=True)
    checkpoint = _qat_checkpoint(tmp_path, "per_channel.pth", per_channel)
    assert main([*base, str(checkpoint), *out]) == 2
    err = capsys.readouterr().err
    assert "trained with per_channel=True" in err and "--per-channel-weights" in err
    scheme = ["--per-channel-weights", "--target", "am68a"]
    assert main([*base, str(checkpoint), *scheme, *out]) == 0

    default = _qat_checkpoint(tmp_path, "ti_v1.pth")  # TDA4VM's default bias rule
    assert main([*base, str(default), "--bias-rule", "joint", "-o", str(tmp_path / "o2")]) == 2
    assert "trained with bias_rule_index=ti_v1" in capsys.readouterr().err


def test_a_float_checkpoint_is_not_exported_as_qat_even_when_uncalibrated_is_allowed(
    tmp_path, capsys
):
    checkpoint = tmp_path / "float.pth"
    torch.save(BUILDERS["resnet18"](num_classes=7).state_dict(), checkpoint)
    args = ["export", "resnet18", "--qat", "--checkpoint", str(checkpoint), "--input-size"]
    args += ["32", "32", "--allow-uncalibrated", "-o", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "use a float checkpoint in float (without --qat)" in err
    assert "--allow-uncalibrated only admits ranges a QAT run left untrained" in err


def test_a_checkpoint_from_before_the_scheme_flags_still_exports(tmp_path, capsys):
    checkpoint = _qat_checkpoint(tmp_path, "qat.pth")
    state = torch.load(checkpoint, weights_only=True)
    older = {k: v[:-1] if k.endswith("._extra_state") else v for k, v in state.items()}
    torch.save(older, checkpoint)  # the flags as written before per_channel / asymmetric
    args = ["export", "resnet18", "--qat", "--checkpoint", str(checkpoint), "--input-size"]
    assert main([*args, "32", "32", "-o", str(tmp_path / "out")]) == 0


def test_export_options_go_by_keyword(tmp_path):
    import edgezoo

    model = BUILDERS["resnet18"](num_classes=3)
    example = torch.rand(1, 3, 32, 32)
    with pytest.raises(TypeError, match="positional"):
        edgezoo.export_onnx(model, tmp_path / "a.onnx", example, 11, write_configs=False)
    with pytest.raises(TypeError, match="format"):
        edgezoo.export_onnx(model, tmp_path / "b.onnx", example_input=example, format="clip")
    new = edgezoo.export_onnx(model, tmp_path / "c.onnx", example_input=example, opset=11)
    assert new.ok and new.opset == 11
