"""Every shipped model wraps for QAT, trains a step with finite gradients, and deploys."""

import pytest
import torch
import torchvision
from conftest import CONVERTED_FAMILIES

import edgezoo
from edgezoo.models import BUILDERS, CONVERTED
from edgezoo.quantization import (
    PACT2,
    QuantBatchNorm2d,
    QuantConv2d,
    QuantTestModule,
    QuantTrainModule,
    activation_ranges,
    clip_only,
    convert_to_deploy,
    freeze_bn,
)

SMALL_MODELS = ("resnet18", "mobilenetv2", "deeplabv3plus_mobilenetv2")


pytestmark = pytest.mark.usefixtures("one_thread")


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return BUILDERS[name](num_classes=5)


def image(name: str, batch: int) -> torch.Tensor:
    size = 64 if name.startswith("deeplab") else 32
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def assert_all_grads_finite(model: torch.nn.Module) -> None:
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without a gradient: {missing[:5]}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad[:5]}"


# One converted torchvision model per family: the others are the same conversion, only bigger.
WRAPPED = [*sorted(set(BUILDERS) - set(CONVERTED)), *CONVERTED_FAMILIES]


@pytest.mark.parametrize("name", WRAPPED)
def test_model_wraps_and_runs_forward_backward_with_bn_folded(name):
    model = build(name)
    float_keys = set(model.state_dict())
    x = image(name, batch=1)
    q = QuantTrainModule(model, x)
    assert float_keys <= set(q.module.state_dict())
    convs = [m for m in q.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(isinstance(m, QuantConv2d) for m in convs)
    freeze_bn(q)
    out = q(x)
    # torchvision's segmentation models return {"out": ...}, a detector its heads.
    out = torch.cat([t.flatten() for t in out.values()]) if isinstance(out, dict) else out
    out.float().square().mean().backward()
    assert torch.isfinite(out).all()
    assert_all_grads_finite(q)


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_small_model_trains_with_batch_statistics_and_deploys(name):
    q = QuantTrainModule(build(name), image(name, batch=1))
    x = image(name, batch=2)
    optimizer = torch.optim.SGD(q.parameters(), lr=1e-3)
    for _ in range(2):
        loss = q(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        assert_all_grads_finite(q)
        optimizer.step()
    assert all(int(p.num_batches_tracked) == 2 for p in activation_ranges(q))
    q.eval()
    deploy = convert_to_deploy(q)
    assert not any(isinstance(m, PACT2 | QuantConv2d | QuantBatchNorm2d) for m in deploy.modules())
    with torch.no_grad(), clip_only(q):
        expected = q(x)
        torch.testing.assert_close(deploy(x), expected, atol=1e-5, rtol=0)


def test_mobilenetv2_gets_ti_ranges():
    q = QuantTrainModule(build("mobilenetv2"), image("mobilenetv2", batch=1))
    m = q.module
    ranges = activation_ranges(q)
    relu6_ranges = [p for p in ranges if p.signed is False]
    assert len(relu6_ranges) == 35  # every ReLU6 became a learned power-of-two clip
    assert len(ranges) == 35 + 17 + 10 + 1  # + linear projections, residual adds, the input
    # projection conv + BN, no activation: the unit in the conv's slot holds the range
    assert isinstance(m.features[1].conv[1].output_quant, PACT2)
    assert isinstance(m.features[3].add.output_quant, PACT2)  # add not followed by activation
    assert m.classifier[1].output_quant is None  # logits stay float (quantize_output=False)


def test_get_model_returns_the_requested_wrapper():
    q = edgezoo.get_model("mobilenetv2", num_classes=4, qat=True)
    assert isinstance(q, QuantTrainModule)
    with torch.no_grad():
        assert q(torch.rand(2, 3, 32, 32)).shape == (2, 4)
    tester = edgezoo.get_model("resnet18", num_classes=4, qat="test")
    assert isinstance(tester, QuantTestModule) and not tester.training


def test_torchvision_checkpoint_loads_into_the_wrapped_model():
    torch.manual_seed(1)
    state = torchvision.models.mobilenet_v2(num_classes=5).state_dict()
    q = QuantTrainModule(build("mobilenetv2"), image("mobilenetv2", batch=1))
    q.module.load_state_dict(state)  # strict: only the range buffers are new
    loaded = q.module.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state.items())
