"""torchvision's FrozenBatchNorm2d (detection backbones): conversion keeps it whole, QAT folds
it into its conv and never trains or updates it, its checkpoints load, the FPN exports."""

import pytest
import torch
from conftest import seeded_images
from torch import nn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d

from edgezoo import QuantTrainModule, check_model, export_onnx, make_module_only
from edgezoo.quantization import (
    QuantConv2d,
    QuantFrozenBatchNorm2d,
    convert_to_deploy,
    freeze_bn,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 32


def fpn() -> nn.Module:
    torch.manual_seed(0)
    model = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=3)
    for module in model.modules():  # statistics a trained backbone would have
        if isinstance(module, FrozenBatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model


def images(count: int = 2, seed: int = 1) -> torch.Tensor:
    return seeded_images(seed, (count, 3, SIZE, SIZE))


def test_conversion_keeps_frozen_batch_norm_whole_and_the_outputs_equal():
    model = fpn()
    assert not check_model(model, images(1)).ok  # torchvision's own forward: reused ReLUs, adds
    converted = make_module_only(model, images(1))
    assert check_model(converted, images(1)).ok
    # The FPN calls its inner and layer blocks interleaved: the order stays registration order,
    # so an optimizer state saved before conversion still lines up.
    assert list(converted.state_dict()) == list(model.state_dict())
    assert [n for n, _ in converted.named_parameters()] == [n for n, _ in model.named_parameters()]
    frozen = [m for m in converted.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(frozen) == sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    with torch.no_grad():
        for key, value in model(images()).items():
            assert torch.equal(converted(images())[key], value)


def test_qat_folds_frozen_batch_norm_and_never_trains_or_updates_it():
    model = make_module_only(fpn(), images(1))
    float_state = {k: v.clone() for k, v in model.state_dict().items()}
    q = QuantTrainModule(model, images(1))
    body = q.module.body
    conv1 = body.conv1
    assert isinstance(conv1, QuantConv2d) and isinstance(conv1.bn, QuantFrozenBatchNorm2d)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in q.modules())
    trained = {name for name, _ in q.named_parameters()}
    assert not any(name.endswith(("bn1.weight", "bn1.bias")) for name in trained)
    freeze_bn(q, frozen=False)  # a frozen BatchNorm stays frozen
    optimizer = torch.optim.SGD(q.parameters(), lr=0.1)
    for step in range(2):
        loss = sum(o.square().mean() for o in q(images(2, step)).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    state = q.module.state_dict()
    for key in ("body.bn1.running_mean", "body.bn1.running_var", "body.bn1.weight"):
        assert torch.equal(state[key], float_state[key]), key
    trainable = "body.layer4.0.conv1.weight"  # torchvision freezes the stem and layer1
    assert not torch.equal(state[trainable], float_state[trainable])
    assert set(float_state) <= set(state)
    norms = [k.removesuffix(".running_mean") for k in float_state if k.endswith("running_mean")]
    assert norms and not any(f"{name}.num_batches_tracked" in state for name in norms)


def test_a_frozen_batch_norm_checkpoint_loads_into_the_wrapped_model():
    source = fpn()
    q = QuantTrainModule(make_module_only(fpn(), images(1)), images(1))
    with torch.no_grad():
        for module in source.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.running_var.fill_(3.0)
    report = q.module.load_state_dict(source.state_dict(), strict=False)
    assert not report.unexpected_keys
    assert all(
        k.endswith(("clips_act", "num_batches_tracked", "_extra_state"))
        for k in report.missing_keys
    )
    assert torch.all(q.module.body.conv1.bn.running_var == 3.0)


def test_a_standalone_frozen_batch_norm_gets_its_own_unit_and_deploys_as_itself():
    class AfterAdd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
            self.norm = FrozenBatchNorm2d(4)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(self.norm(self.a(x) + self.b(x)))

    model = make_module_only(AfterAdd(), images(1))
    q = QuantTrainModule(model, images(1))
    assert isinstance(q.module.norm, QuantFrozenBatchNorm2d)
    q(images())
    deployed = convert_to_deploy(q.eval())
    assert any(type(m) is FrozenBatchNorm2d for m in deployed.modules())


def test_the_fpn_exports_each_level_as_a_named_output_and_verifies(tmp_path):
    q = QuantTrainModule(make_module_only(fpn(), images(1)), images(1))
    with torch.no_grad():
        for step in range(2):
            q(images(2, step))
    report = export_onnx(
        q.eval(), tmp_path / "fpn.onnx", example_input=images(1), write_configs=False
    )
    assert report.output_names == ("output_0", "output_1", "output_2", "output_3", "pool")
    assert report.ok and report.integer_max_steps == 0, str(report)
