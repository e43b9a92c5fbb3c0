"""Backbone feature maps (features_only / out_indices / feature_info), as timm gives them."""

import pytest
import torch
import torchvision
from conftest import seeded_images

import edgezoo
from edgezoo.errors import UsageError
from edgezoo.models import BUILDERS, feature_maps

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("name", "channels", "modules"),
    [
        ("resnet18", [64, 64, 128, 256, 512], ["relu", "layer1", "layer2", "layer3", "layer4"]),
        ("resnet50", [64, 256, 512, 1024, 2048], ["relu", "layer1", "layer2", "layer3", "layer4"]),
        (
            "mobilenetv2",
            [16, 24, 32, 96, 320],
            ["features.1", "features.3", "features.6", "features.13", "features.17"],
        ),
    ],
)
def test_feature_maps_are_the_classifiers_activations_at_each_stage(name, channels, modules):
    torch.manual_seed(0)
    classifier = BUILDERS[name](num_classes=10).eval()
    maps = feature_maps(classifier).eval()
    assert maps.channels == channels and maps.reductions == [2, 4, 8, 16, 32]
    assert [info.module for info in maps.feature_info] == modules
    # The same tensors as hooks on the classifier see (the maps share its modules).
    seen = {}
    handles = [
        classifier.get_submodule(m).register_forward_hook(
            lambda _m, _i, out, key=m: seen.__setitem__(key, out)
        )
        for m in modules
    ]
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        classifier(x)
        outputs = maps(x)
    for handle in handles:
        handle.remove()
    assert all(torch.equal(out, seen[m]) for out, m in zip(outputs, modules, strict=True))
    # Keys are the classifier's, less the head.
    kept = set(maps.state_dict())
    left = {k for k in classifier.state_dict() if k not in kept}
    assert kept <= set(classifier.state_dict())
    assert all(k.startswith(maps.unused_checkpoint_prefixes) for k in left)


def test_get_model_features_only_loads_torchvision_weights_and_picks_out_indices(tmp_path):
    reference = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    maps = edgezoo.get_model(
        "resnet18", pretrained=str(path), features_only=True, out_indices=(1, -1)
    )
    assert [i.module for i in maps.feature_info] == ["layer1", "layer4"]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        low, high = maps.eval()(x)
        stem = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        expected_low = reference.layer1(stem)
        expected_high = reference.layer4(reference.layer3(reference.layer2(expected_low)))
    assert torch.equal(low, expected_low) and torch.equal(high, expected_high)
    assert maps.unused_checkpoint_prefixes == ("fc.",)


@pytest.mark.parametrize(
    ("out_indices", "message"),
    [((5,), "must pick from the 5"), ((3, 1), "shallow to deep"), ((), "must pick")],
)
def test_bad_out_indices_and_models_without_stages_are_refused(out_indices, message):
    with pytest.raises(UsageError, match=message):
        edgezoo.get_model("resnet18", features_only=True, out_indices=out_indices)
    with pytest.raises(UsageError, match="features_only=True"):
        edgezoo.get_model("resnet18", out_indices=(1,))
    with pytest.raises(UsageError, match="does not describe its stages"):
        edgezoo.get_model("deeplabv3plus_mobilenetv2", features_only=True)


def test_deeplab_takes_its_taps_from_the_feature_maps():
    model = BUILDERS["deeplabv3plus_mobilenetv2"](num_classes=5)
    assert [(i.module, i.channels, i.reduction) for i in model.backbone.feature_info] == [
        ("features.3", 24, 4),
        ("features.17", 320, 16),
    ]
    assert model.output_stride == 16
    assert model.backbone.unused_checkpoint_prefixes == ("features.18.", "classifier.")


def test_quantized_feature_maps_export_and_simulate_bit_for_bit(tmp_path):
    maps = edgezoo.get_model("mobilenetv2", features_only=True, out_indices=(2, 3, 4))
    torch.manual_seed(0)
    q = edgezoo.QuantTrainModule(maps, torch.rand(1, 3, 32, 32)).train()
    optimizer = torch.optim.SGD(q.parameters(), lr=1e-3)
    for step in range(3):
        loss = sum(m.square().mean() for m in q(seeded_images(step, (4, 3, 32, 32))))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    report = edgezoo.export_onnx(
        q.eval(), tmp_path / "f.onnx", input_size=(32, 32), write_configs=False
    )
    assert report.ok and report.output_names == ("output_0", "output_1", "output_2")
    assert report.integer_max_steps == 0.0 and not report.integer_not_simulated
