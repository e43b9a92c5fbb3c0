"""Names and aliases, get_model's argument checks, load_weights' report, `edgezoo list/info`."""

import json

import pytest
import torch
from torch import nn

import edgezoo
from edgezoo.cli import main
from edgezoo.errors import CheckpointMismatchError, UnknownModelError, UsageError, WeightsError
from edgezoo.models import BUILDERS
from edgezoo.registry import (
    aliases_of,
    default_input_size,
    get_model,
    list_models,
    model_info,
    resolve_name,
)
from edgezoo.weights import ShapeMismatch, load_weights, read_state_dict


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("mobilenetv2", "mobilenetv2"),
        ("mobilenet_v2", "mobilenetv2"),
        ("MobileNet-V2", "mobilenetv2"),
        ("mnv2", "mobilenetv2"),
        ("deeplabv3plus_mobilenet_v2", "deeplabv3plus_mobilenetv2"),
        ("deeplabv3plus_mnv2", "deeplabv3plus_mobilenetv2"),
        ("DeepLabV3+_MobileNetV2", "deeplabv3plus_mobilenetv2"),
        ("deeplabv3plus_mobilenetv2_tv_edgeailite", "deeplabv3plus_mobilenetv2"),
        ("deeplabv3plus_r50", "deeplabv3plus_resnet50"),
        ("wide_resnet50_2", "wide_resnet50_2"),
    ],
)
def test_aliases_resolve(spelling, canonical):
    assert resolve_name(spelling) == canonical


def test_unknown_name_names_close_matches():
    with pytest.raises(UnknownModelError, match="did you mean resnet18") as info:
        resolve_name("resnet19")
    assert isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match="mobilenetv2"):
        get_model("mobilenet_v3")


def test_list_models_covers_every_builder_and_filters_by_task():
    names = list_models()
    assert sorted(names) == sorted(BUILDERS)
    assert names[:2] == ["resnet18", "resnet34"], "manifest order: family, then size"
    assert list_models("segmentation") == [
        "deeplabv3plus_mobilenetv2",
        "deeplabv3plus_resnet50",
        "deeplabv3_resnet50",
        "deeplabv3_resnet101",
        "fcn_resnet50",
        "fcn_resnet101",
    ]
    assert list_models("detection") == ["ssdlite_mobilenetv2_lite", "yolox_nano_lite"]
    others = set(list_models("segmentation")) | set(list_models("detection"))
    assert set(list_models("classification")) == set(names) - others
    assert edgezoo.list_models is list_models
    with pytest.raises(ValueError, match="classification"):
        list_models("keypoints")


def test_model_info_and_input_size():
    info = model_info("mobilenet_v2")
    assert info["name"] == "mobilenetv2"
    assert set(info["aliases"]) >= {"mobilenet_v2", "mnv2"}
    assert info["default_weights"] == "IMAGENET1K_V2"
    info["weights"].clear()
    assert model_info("mobilenetv2")["weights"], "model_info must return a copy"
    assert "mobilenet_v2" in aliases_of("mnv2")
    assert default_input_size("resnet50") == (3, 224, 224)
    channels, height, width = default_input_size("deeplabv3plus_mnv2")
    assert channels == 3 and height % 16 == 0 and width % 16 == 0


def test_get_model_builds_by_alias_with_builder_kwargs():
    model = get_model("mnv2", num_classes=5, width_mult=0.5)
    assert type(model) is type(BUILDERS["mobilenetv2"]())
    assert model.classifier[1].out_features == 5
    assert model.features[0][0].out_channels == 16


def test_get_model_argument_errors(tmp_path):
    with pytest.raises(UnknownModelError, match="IMAGENET1K_V1, IMAGENET1K_V2"):
        get_model("resnet50", pretrained="IMAGENET1K_V9")
    with pytest.raises(WeightsError, match="no weights file"):
        get_model("resnet18", pretrained=str(tmp_path / "missing.pth"))
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="not a loadable weights file"):
        get_model("resnet18", pretrained=tmp_path / "notes.pth")
    with pytest.raises(ValueError, match="pretrained_backbone is for deeplabv3plus"):
        get_model("resnet18", pretrained_backbone=True)
    with pytest.raises(ValueError, match="not both"):
        get_model("deeplabv3plus_mnv2", pretrained="x.pth", pretrained_backbone=True)
    with pytest.raises(UnknownModelError, match="IMAGENET1K_V1"):
        get_model("deeplabv3plus_mnv2", pretrained_backbone="IMAGENET1K_V7")


def test_get_model_refuses_a_checkpoint_of_another_model(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(BUILDERS["resnet18"]().state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match=r"314 missing .*\(conv1\.weight") as info:
        get_model("mobilenetv2", pretrained=path)
    assert "qat" not in str(info.value)
    state = BUILDERS["mobilenetv2"]().state_dict()
    state["features.0.1.range"] = torch.tensor(4.0)
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError, match=r"1 unexpected.*qat='test'"):
        get_model("mobilenetv2", pretrained=path)


class _Small(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, classes)


class _Wrapper(nn.Module):
    """Like the QAT wrappers: the wrapped model lives under `module`, plus a buffer of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.module = _Small()
        self.register_buffer("clip", torch.tensor(8.0))


def _random_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: torch.randn_like(v.float()).to(v.dtype) for k, v in model.state_dict().items()}


def test_load_weights_reports_every_kind_of_misfit():
    source = _random_state(_Small(classes=5))
    source.pop("bn.running_var")
    source["extra.weight"] = torch.ones(2)
    model = _Small(classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    with pytest.raises(CheckpointMismatchError) as info:
        load_weights(model, source)
    message = str(info.value)
    for text in ("bn.running_var", "extra.weight", "fc.weight", "strict=False"):
        assert text in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "strict: no-op"

    report = load_weights(model, source, strict=False)
    assert report.missing == ("bn.running_var",)
    assert report.unexpected == ("extra.weight",)
    assert report.mismatched == (
        ShapeMismatch("fc.weight", (5, 4), (3, 4)),
        ShapeMismatch("fc.bias", (5,), (3,)),
    )
    assert set(report.loaded) == {"conv.weight", "conv.bias", "bn.weight", "bn.bias"} | {
        "bn.running_mean",
        "bn.num_batches_tracked",
    }
    assert not report.ok
    assert torch.equal(model.conv.weight, source["conv.weight"])
    assert torch.equal(model.fc.weight, before["fc.weight"])


def test_load_weights_long_key_lists_are_shortened():
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(8)])
    with pytest.raises(CheckpointMismatchError, match=r"16 missing .*\(16 in all\)"):
        load_weights(model, {"other": torch.zeros(1)})


@pytest.mark.parametrize("nesting", ["flat", "state_dict", "model"])
def test_load_weights_strips_ddp_prefix_and_unwraps_checkpoints(tmp_path, nesting):
    source = _random_state(_Small())
    ddp = {f"module.{k}": v for k, v in source.items()}
    checkpoint = ddp if nesting == "flat" else {nesting: ddp, "epoch": 7}
    path = tmp_path / "ckpt.pth"
    torch.save(checkpoint, path)
    model = _Small()
    report = load_weights(model, str(path))
    assert report.ok and len(report.loaded) == len(source)
    assert torch.equal(model.fc.weight, source["fc.weight"])


def test_load_weights_keeps_a_wrappers_own_module_prefix():
    wrapper = _Wrapper()
    state = _random_state(wrapper)
    ddp_of_wrapper = {f"module.{k}": v for k, v in state.items()}
    for source in (state, ddp_of_wrapper):
        fresh = _Wrapper()
        assert load_weights(fresh, source).ok
        assert torch.equal(fresh.module.fc.weight, state["module.fc.weight"])


def test_read_state_dict_rejects_what_is_not_a_checkpoint():
    with pytest.raises(CheckpointMismatchError, match="top-level keys are epoch, optimizer"):
        read_state_dict({"epoch": 1, "optimizer": {"lr": 0.1}})


def test_cli_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["name", "task", "params"]
    assert "acc@1 69.758" in out and "IMAGENET1K_V2" in out
    assert "COCO_WITH_VOC_LABELS_V1" in out and "miou 66.400" in out
    assert all(name in out for name in BUILDERS)
    assert main(["list", "--task", "segmentation"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[0] for row in rows] == list_models("segmentation")
    assert "backbone: mobilenetv2 IMAGENET1K_V1" in rows[0]


def test_cli_info(capsys):
    assert main(["info", "mobilenet_v2"]) == 0
    out = capsys.readouterr().out
    for text in ("mnv2", "IMAGENET1K_V2 (default)", "mobilenet_v2-7ebf99e0.pth", "72.154", "232"):
        assert text in out
    assert main(["info", "deeplabv3plus_mnv2", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["pretrained_backbone"] == {"model": "mobilenetv2", "weights": "IMAGENET1K_V1"}
    assert main(["info", "deeplabv3plus_mnv2"]) == 0
    assert "none published; pretrained_backbone=True" in capsys.readouterr().out
    assert main(["info", "fcn_resnet50"]) == 0
    out = capsys.readouterr().out
    assert "weights:     pretrained_backbone=True loads resnet50" in out
    assert "COCO_WITH_VOC_LABELS_V1 (default)" in out and "left out:    aux_classifier." in out


def test_cli_info_unknown_name_fails_with_close_matches(capsys):
    assert main(["info", "resnet19"]) == 2
    assert "did you mean resnet18" in capsys.readouterr().err


def test_one_spelling_for_the_config_and_the_example_input():
    from edgezoo.errors import QuantizationConfigError
    from edgezoo.quantization import QuantizationConfig, QuantTrainModule

    config = QuantizationConfig(bitwidth_activations=8)
    example = torch.rand(1, 3, 32, 32)
    q = get_model("resnet18", num_classes=3, qat=True, config=config, example_input=example)
    assert q.config == config
    with pytest.raises(TypeError, match="quantization"):
        get_model("resnet18", num_classes=3, qat=True, quantization=config)
    with pytest.raises(QuantizationConfigError, match="dummy_input"):
        QuantTrainModule(BUILDERS["resnet18"](num_classes=3), dummy_input=example)
    with pytest.raises(UsageError, match="pass example_input"):
        QuantTrainModule(BUILDERS["resnet18"](num_classes=3))
