"""Module-only models: torchvision equivalence, module-only structure, DeepLabV3+ lite contract."""

from collections import Counter
from collections.abc import Callable

import pytest
import torch
import torchvision.models as tvm
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

import edgezoo
from edgezoo.errors import InputShapeError
from edgezoo.layers import ResizeWith
from edgezoo.models import (
    BUILDERS,
    CONVERTED,
    DeepLabV3Plus,
    deeplabv3plus_mobilenetv2,
    deeplabv3plus_resnet50,
    mobilenetv2,
    resnet18,
    resnet50,
)

# (our name, torchvision builder, builder kwargs, batch); the big nets run at batch 1 to save time.
CLASSIFIERS = [
    ("resnet18", tvm.resnet18, {}, 2),
    ("resnet34", tvm.resnet34, {}, 2),
    ("resnet50", tvm.resnet50, {}, 2),
    ("resnet101", tvm.resnet101, {}, 1),
    ("resnet152", tvm.resnet152, {}, 1),
    ("resnext50_32x4d", tvm.resnext50_32x4d, {}, 2),
    ("resnext101_32x8d", tvm.resnext101_32x8d, {}, 1),
    ("resnext101_64x4d", tvm.resnext101_64x4d, {}, 1),
    ("wide_resnet50_2", tvm.wide_resnet50_2, {}, 1),
    ("wide_resnet101_2", tvm.wide_resnet101_2, {}, 1),
    ("mobilenetv2", tvm.mobilenet_v2, {}, 2),
    ("mobilenetv2", tvm.mobilenet_v2, {"width_mult": 0.5}, 2),
    ("mobilenetv2", tvm.mobilenet_v2, {"width_mult": 1.4}, 2),
    ("resnet50", tvm.resnet50, {"replace_stride_with_dilation": [False, False, True]}, 1),
]

METADATA_OPS = {"__get__", "size", "dim"}


def _randomize_norms(model: nn.Module) -> None:
    """Give every BN non-trivial affine parameters and running stats, so eval mode tests them."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0.0, 0.1)
            m.running_mean.normal_(0.0, 0.1)
            m.running_var.uniform_(0.5, 1.5)


def _load_sharing_parameters(ours_builder: Callable[[], nn.Module], reference: nn.Module):
    """Build ours without allocating, then load the reference's weights with strict=True.

    Parameters are shared (no optimizer step runs, so they stay equal); buffers are copied so
    each model's BN running stats update on their own. This keeps the big nets cheap.
    """
    with torch.device("meta"):
        ours = ours_builder()
    reference_state = reference.state_dict()
    ours_meta_state = ours.state_dict()
    assert list(ours_meta_state) == list(reference_state)
    for key, tensor in reference_state.items():
        assert ours_meta_state[key].shape == tensor.shape, key
    buffer_names = {name for name, _ in reference.named_buffers()}
    state = {k: v.clone() if k in buffer_names else v for k, v in reference_state.items()}
    ours.load_state_dict(state, strict=True, assign=True)
    return ours


@pytest.mark.parametrize(
    ("name", "tv_builder", "kwargs", "batch"),
    CLASSIFIERS,
    ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, _, kw, _ in CLASSIFIERS],
)
def test_classifier_matches_torchvision(name, tv_builder, kwargs, batch):
    torch.manual_seed(0)
    reference = tv_builder(**kwargs)
    _randomize_norms(reference)
    ours = _load_sharing_parameters(lambda: BUILDERS[name](**kwargs), reference)
    assert list(ours.state_dict()) == list(reference.state_dict())
    x = torch.randn(batch, 3, 64, 64)

    with torch.no_grad():
        for train in (False, True):
            ours.train(train)
            reference.train(train)
            torch.manual_seed(1)  # same dropout mask in both
            expected = reference(x)
            torch.manual_seed(1)
            actual = ours(x)
            assert actual.shape == expected.shape == (batch, 1000)
            diff = (actual - expected).abs().max().item()
            scale = expected.abs().max().item()
            assert diff <= 1e-5, f"train={train}: max diff {diff} at output scale {scale}"

    reference_buffers = dict(reference.named_buffers())
    for key, buffer in ours.named_buffers():
        assert torch.allclose(buffer, reference_buffers[key], atol=1e-6), key
    assert any(
        m.num_batches_tracked.item() == 1 for m in ours.modules() if isinstance(m, nn.BatchNorm2d)
    ), "train-mode forward did not update the BN running statistics"


def test_builders_construct_with_their_own_init():
    model = resnet18(num_classes=10)
    assert model.fc.out_features == 10
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    model = mobilenetv2(num_classes=7, width_mult=0.5).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_resnet_rejects_bad_configurations():
    with pytest.raises(ValueError, match="dilation"):
        resnet18(replace_stride_with_dilation=[False, False, True])
    with pytest.raises(ValueError, match="one flag per strided stage"):
        resnet50(replace_stride_with_dilation=[True, True])


class _OpRecorder(TorchFunctionMode):
    """Record torch ops issued directly by container modules (those with children)."""

    def __init__(self, module_stack: list[nn.Module]) -> None:
        super().__init__()
        self.module_stack = module_stack
        self.stray_ops: list[tuple[str, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", repr(func))
        if self.module_stack and name not in METADATA_OPS:
            owner = self.module_stack[-1]
            if next(owner.children(), None) is not None:
                self.stray_ops.append((type(owner).__name__, name))
        return func(*args, **(kwargs or {}))


def _trace_module_usage(model: nn.Module, x: Tensor) -> tuple[Counter, list[tuple[str, str]]]:
    """Run one forward; return calls per module id and the ops that bypassed leaf modules."""
    stack: list[nn.Module] = []
    calls: Counter = Counter()

    def enter(module: nn.Module, _args: object) -> None:
        calls[id(module)] += 1
        stack.append(module)

    def leave(module: nn.Module, _args: object, _out: object) -> None:
        stack.pop()

    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(enter))
        handles.append(m.register_forward_hook(leave))
    recorder = _OpRecorder(stack)
    try:
        with torch.no_grad(), recorder:
            model(x)
    finally:
        for h in handles:
            h.remove()
    return calls, recorder.stray_ops


MODULE_ONLY_CASES = [
    ("resnet18", 2),
    ("resnet50", 2),
    ("mobilenetv2", 2),
    ("deeplabv3plus_mobilenetv2", 2),
    ("deeplabv3plus_resnet50", 1),
]


@pytest.mark.parametrize(("name", "batch"), MODULE_ONLY_CASES)
def test_every_module_is_called_once_and_ops_live_in_modules(name, batch):
    torch.manual_seed(0)
    model = BUILDERS[name]().eval()
    calls, stray_ops = _trace_module_usage(model, torch.randn(batch, 3, 64, 64))

    named = dict(model.named_modules())
    relus = [n for n, m in named.items() if isinstance(m, nn.ReLU | nn.ReLU6)]
    assert relus, "expected ReLU/ReLU6 modules"
    # Leaves run exactly once; containers such as ModuleList may only be iterated over.
    wrong = {
        n: calls[id(m)]
        for n, m in named.items()
        if calls[id(m)] > 1 or (calls[id(m)] == 0 and next(m.children(), None) is None)
    }
    assert not wrong, f"modules not called exactly once: {wrong}"
    assert not stray_ops, f"torch ops outside leaf modules (use a module instead): {stray_ops}"
    if "mobilenetv2" in name:  # ReLU6 stays ReLU6 in the MobileNetV2 trunk
        trunk = getattr(model, "backbone", model)
        assert {type(m) for m in trunk.modules() if isinstance(m, nn.ReLU | nn.ReLU6)} == {nn.ReLU6}


def test_op_recorder_catches_functional_ops_and_reuse():
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.relu = nn.ReLU()

        def forward(self, x: Tensor) -> Tensor:
            y = self.relu(self.conv(x))
            return self.relu(y + x)

    model = Bad()
    calls, stray_ops = _trace_module_usage(model, torch.randn(1, 3, 4, 4))
    assert calls[id(model.relu)] == 2
    assert ("Bad", "add") in stray_ops


MNV2_SEG = ("deeplabv3plus_mobilenetv2", tvm.mobilenet_v2, {"classifier.", "features.18."})
R50_SEG = ("deeplabv3plus_resnet50", tvm.resnet50, {"fc."})


@pytest.mark.parametrize(("name", "tv_builder", "leftover"), [MNV2_SEG, R50_SEG])
def test_deeplab_backbone_loads_torchvision_classifier_checkpoint(name, tv_builder, leftover):
    torch.manual_seed(0)
    model = BUILDERS[name]()
    reference_state = tv_builder().state_dict()
    result = model.backbone.load_state_dict(reference_state, strict=False)
    assert result.missing_keys == []
    assert {k for k in result.unexpected_keys if not k.startswith(tuple(leftover))} == set()
    assert tuple(sorted(leftover)) == tuple(sorted(model.backbone.unused_checkpoint_prefixes))
    backbone_keys = [k for k in reference_state if not k.startswith(tuple(leftover))]
    ours = [k.removeprefix("backbone.") for k in model.state_dict() if k.startswith("backbone.")]
    assert ours == backbone_keys


def test_deeplab_mobilenetv2_backbone_is_torchvision_trunk_at_stride_16():
    torch.manual_seed(0)
    reference = tvm.mobilenet_v2()
    _randomize_norms(reference)
    reference.eval()
    reference.features[14].conv[1][0].stride = (1, 1)  # the stage DeepLab runs at stride 1
    model = deeplabv3plus_mobilenetv2().eval()
    model.backbone.load_state_dict(reference.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        low, high = model.backbone(x)
        expected_low = reference.features[:4](x)
        expected_high = reference.features[4:18](expected_low)
    assert low.shape == (1, 24, 16, 24)
    assert high.shape == (1, 320, 4, 6)
    assert (low - expected_low).abs().max() <= 1e-5
    assert (high - expected_high).abs().max() <= 1e-5


def test_deeplab_resnet50_backbone_is_torchvision_trunk_at_stride_16():
    torch.manual_seed(0)
    reference = tvm.resnet50(replace_stride_with_dilation=[False, False, True])
    _randomize_norms(reference)
    reference.eval()
    model = deeplabv3plus_resnet50().eval()
    model.backbone.load_state_dict(reference.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 64)
    r = reference
    with torch.no_grad():
        low, high = model.backbone(x)
        expected_low = r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x)))))
        expected_high = r.layer4(r.layer3(r.layer2(expected_low)))
    assert low.shape == (1, 256, 16, 16)
    assert high.shape == (1, 2048, 4, 4)
    assert (low - expected_low).abs().max() <= 1e-5
    assert (high - expected_high).abs().max() <= 1e-5


@pytest.fixture(scope="module")
def deeplab_models() -> dict[str, DeepLabV3Plus]:
    torch.manual_seed(0)
    return {
        "deeplabv3plus_mobilenetv2": deeplabv3plus_mobilenetv2(num_classes=5),
        "deeplabv3plus_resnet50": deeplabv3plus_resnet50(num_classes=5),
    }


@pytest.mark.parametrize("name", ["deeplabv3plus_mobilenetv2", "deeplabv3plus_resnet50"])
def test_deeplab_output_shapes_and_size_rule(deeplab_models, name):
    model = deeplab_models[name].eval()
    assert model.output_stride == 16
    resizes = [m for m in model.modules() if isinstance(m, ResizeWith)]
    assert [(m.scale_factor, m.mode) for m in resizes] == [(4, "bilinear"), (4, "bilinear")]
    assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in model.modules())
    with torch.no_grad():
        for h, w in [(64, 64), (64, 128), (96, 160)]:
            assert model(torch.randn(1, 3, h, w)).shape == (1, 5, h, w)
        for h, w in [(50, 50), (64, 72)]:
            with pytest.raises(InputShapeError, match="multiples of its output stride 16"):
                model(torch.randn(1, 3, h, w))
    with pytest.raises(ValueError, match=r"48x48 or 64x64"):
        model.check_input_size(50, 50)


@pytest.mark.parametrize("name", ["deeplabv3plus_mobilenetv2", "deeplabv3plus_resnet50"])
def test_deeplab_trains_every_parameter(deeplab_models, name):
    model = deeplab_models[name].train()
    model.zero_grad()
    logits = model(torch.randn(2, 3, 64, 64))
    target = torch.randint(0, 5, (2, 64, 64))
    nn.functional.cross_entropy(logits, target).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"


def test_builders_registry_covers_every_model():
    assert set(BUILDERS) == {
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "resnext50_32x4d",
        "resnext101_32x8d",
        "resnext101_64x4d",
        "wide_resnet50_2",
        "wide_resnet101_2",
        "mobilenetv2",
        "ssdlite_mobilenetv2_lite",
        "yolox_nano_lite",
        "deeplabv3plus_mobilenetv2",
        "deeplabv3plus_resnet50",
        *CONVERTED,
    }


@pytest.mark.parametrize(
    "name", ["squeezenet1_1", "regnet_x_400mf", "densenet121", "shufflenet_v2_x0_5"]
)
def test_a_converted_torchvision_model_loads_its_weights_unchanged_and_agrees(name):
    torch.manual_seed(0)
    reference = tvm.get_model(name, num_classes=7).eval()
    ours = BUILDERS[name](num_classes=7)
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(reference.state_dict())  # strict: torchvision's keys and shapes
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), reference(x))
    assert edgezoo.check_model(ours, x[:1]).ok


@pytest.mark.parametrize("name", ["squeezenet1_1", "fcn_resnet50"])
def test_a_converted_zoo_model_wraps_trains_exports_and_verifies(tmp_path, name):
    example = torch.rand(1, 3, 64, 64)
    q = edgezoo.get_model(name, num_classes=5, qat=True, example_input=example)
    optimizer = torch.optim.SGD(q.parameters(), lr=1e-3)
    for step in range(2):
        x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(step))
        out = q(x)
        loss = (out["out"] if isinstance(out, dict) else out).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # The zoo knows the model's task and preprocessing, so TIDL's files are written too.
    report = edgezoo.export_onnx(
        q.eval(), tmp_path / "m.onnx", example_input=example, model_name=name
    )
    assert report.ok and report.integer_ok, report
    assert report.output_names == ("output",) and report.config_files


def test_a_converted_torchvision_segmenter_loads_its_published_checkpoint(tmp_path):
    """torchvision's published weights hold the auxiliary head, which the zoo model leaves
    out unless asked for: both load, and the main output is torchvision's."""
    torch.manual_seed(0)
    reference = tvm.get_model("fcn_resnet50", weights_backbone=None, aux_loss=True).eval()
    path = tmp_path / "fcn.pth"
    torch.save(reference.state_dict(), path)
    ours = edgezoo.get_model("fcn_resnet50", pretrained=path).eval()
    assert not any(key.startswith("aux_classifier.") for key in ours.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert list(ours(x)) == ["out"]
        assert torch.equal(ours(x)["out"], reference(x)["out"])
    with_aux = edgezoo.get_model("fcn_resnet50", pretrained=path, aux_loss=True)
    assert list(with_aux.state_dict()) == list(reference.state_dict())
