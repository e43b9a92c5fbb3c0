"""The quantization core's shape: units own their parts, one grid, saved flags, clear failures."""

import copy

import pytest
import torch
from conftest import seeded_images
from torch import nn

import edgezoo
from edgezoo.errors import CheckpointMismatchError, QuantizationConfigError
from edgezoo.layers import AddBlock
from edgezoo.models import BUILDERS
from edgezoo.quantization import (
    PACT2,
    QuantCalibrateModule,
    QuantizationConfig,
    QuantTestModule,
    QuantTrainModule,
    activation_ranges,
    freeze_bn,
    freeze_quant_range,
    layer_report,
)
from edgezoo.quantization.batch_norm import QuantBatchNormMixin
from edgezoo.weights import load_checkpoint_into

pytestmark = pytest.mark.usefixtures("one_thread")


images = seeded_images


class Block(nn.Module):
    """conv-BN-ReLU, conv-BN into an add, a linear head: every kind of unit once."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.add = AddBlock()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.add((x, self.bn2(self.conv2(x))))
        return self.fc(self.flatten(self.pool(x)))


def block(seed: int = 0) -> Block:
    torch.manual_seed(seed)
    model = Block()
    for bn in (model.bn1, model.bn2):
        bn.running_var.uniform_(0.5, 2.0)
    return model


def test_units_hold_their_parts_as_children_and_no_module_references_another_hidden():
    model = block()
    q = QuantTrainModule(model, images())
    m = q.module
    assert "bn" in dict(m.conv1.named_children())  # a real child, not a hidden reference
    assert isinstance(m.bn1, nn.Identity) and isinstance(m.bn2, nn.Identity)
    assert "output_quant" in dict(m.conv2.named_children())
    # The range that quantized fc's input is a registered (shared) child, read for the bias.
    assert m.fc.input_grid is m.add.output_quant
    for module in m.modules():
        hidden = [
            k
            for k, v in vars(module).items()
            if isinstance(v, tuple | list) and v and all(isinstance(x, nn.Module) for x in v)
        ]
        assert not hidden, (type(module).__name__, hidden)
    assert not any(hasattr(bn, "folded_into_conv") for bn in m.modules())


def test_state_dict_keys_are_the_float_keys_plus_ranges_and_flags():
    model = block()
    float_keys = list(model.state_dict())
    q = QuantTrainModule(model, images())
    keys = list(q.module.state_dict())
    assert [k for k in keys if k in float_keys] == float_keys
    assert not any(".input_grid." in k or ".bn." in k for k in keys)  # saved once, float names
    assert "bn2.output_quant.clips_act" in keys  # the range after a folded BN keeps its name


def test_flags_are_saved_so_a_reloaded_model_trains_like_the_saved_one():
    q = QuantTrainModule(block(), images())
    q(images(2))
    freeze_bn(q)
    freeze_quant_range(q)
    state = copy.deepcopy(q.module.state_dict())
    fresh = QuantTrainModule(block(seed=3), images())
    fresh.module.load_state_dict(state)
    assert all(p.range_frozen for p in activation_ranges(fresh))
    assert all(bn.bn_frozen for bn in fresh.modules() if isinstance(bn, QuantBatchNormMixin))
    x = images(4)
    assert torch.equal(fresh(x), q(x))  # training mode: frozen BN and ranges on both sides
    assert torch.equal(fresh.module.conv1.bn.running_mean, q.module.conv1.bn.running_mean)


def test_checkpoints_without_flags_still_load_strictly():
    q = QuantTrainModule(block(), images())
    q(images(2))
    state = {k: v for k, v in q.module.state_dict().items() if not k.endswith("_extra_state")}
    fresh = QuantTrainModule(block(seed=3), images())
    fresh.module.load_state_dict(state)  # strict: flags keep their current values
    q.eval(), fresh.eval()
    assert torch.equal(fresh(images(5)), q(images(5)))


def test_config_object_and_keywords_give_the_same_wrapper():
    config = QuantizationConfig(bitwidth_activations=16, quantize_output=True)
    by_object = QuantTrainModule(block(), images(), config=config)
    by_keywords = QuantTrainModule(block(), images(), bitwidth_activations=16, quantize_output=True)
    assert by_object.config == by_keywords.config == config
    assert all(p.bitwidth == 16 for p in activation_ranges(by_object))
    assert by_object.module.fc.output_quant is not None
    with pytest.raises(QuantizationConfigError, match="bitwidth_activations"):
        QuantTrainModule(block(), images(), bit_width=8)
    with pytest.raises(QuantizationConfigError, match="max_range_update_gap"):
        QuantizationConfig(max_range_update_gap=0)


def test_observation_leaves_no_hook_behind():
    q = QuantCalibrateModule(block(), images())
    for step in range(2):
        q(images(step))
    layer_report(q, [images(3)])
    assert all(not (m._forward_hooks or m._forward_pre_hooks) for m in q.modules()), (
        "a calibration or report hook was left registered"
    )


def test_a_test_module_refuses_a_checkpoint_without_ranges(tmp_path):
    float_state = BUILDERS["resnet18"](num_classes=10).state_dict()
    path = tmp_path / "float.pth"
    torch.save(float_state, path)
    with pytest.raises(CheckpointMismatchError, match=r"no range for 30 activation range"):
        edgezoo.get_model("resnet18", pretrained=path, qat="test", example_input=images())
    # Loading by hand into a QuantTestModule fails the same strict way, naming the ranges.
    tester = QuantTestModule(BUILDERS["resnet18"](num_classes=10), images())
    with pytest.raises(RuntimeError, match=r"conv1\.input_quant\.clips_act"):
        tester.module.load_state_dict(float_state)
    # For QAT a float checkpoint is the usual start: its ranges learn from data.
    q = load_checkpoint_into(
        BUILDERS["resnet18"](num_classes=10),
        float_state,
        mode="train",
        example_input=images(),
        origin="float",
        model_name="resnet18",
    )
    assert isinstance(q, QuantTrainModule) and not any(p.trained for p in activation_ranges(q))


def test_a_quantized_model_is_refused_with_one_clear_message():
    q = QuantTrainModule(block(), images())
    with pytest.raises(QuantizationConfigError, match="already quantized") as error:
        QuantTrainModule(q.module, images())
    assert "violation" not in str(error.value)


def test_every_error_class_is_an_edgezoo_error_reachable_from_edgezoo_errors():
    errors = [
        obj
        for obj in vars(edgezoo.errors).values()
        if isinstance(obj, type) and issubclass(obj, Exception)
    ]
    assert errors and all(issubclass(e, edgezoo.EdgezooError) for e in errors)
    assert {e.__name__ for e in errors} <= set(edgezoo.errors.__all__)


@pytest.mark.parametrize("gap", [1, 4])
def test_range_statistics_skip_batches_only_while_the_clip_stays_put(gap):
    torch.manual_seed(0)
    pact = PACT2(signed=True, max_update_gap=gap)
    measured, clips = [], []
    for step in range(14):
        before = pact._updates
        pact(torch.randn(2, 4, 8, 8) * (1.0 if step < 10 else 100.0))
        measured.append(pact._updates > before)
        clips.append(pact.clip_range()[1])
    assert int(pact.num_batches_tracked) == 14  # every training batch is counted
    if gap == 1:
        assert all(measured)
    else:
        # The clip settles after the first two batches; the gap then doubles up to 4.
        assert [i for i, m in enumerate(measured) if m][:4] == [0, 1, 3, 7]
        assert not all(measured)
    # The jump at step 10 moves the clip within `gap` batches.
    assert clips[10 + gap - 1] > clips[9]


def test_a_measured_batch_counts_for_the_batches_it_stands_for():
    # x, y, y measured every batch, or x then the second y standing for both y batches: the
    # running range is the same batch-weighted mean.
    x = torch.linspace(-1.0, 1.0, 16).reshape(1, 1, 4, 4)  # 4x4: no subsampling
    y = 3.0 * x
    dense, sparse = PACT2(signed=True), PACT2(signed=True, max_update_gap=4)
    for batch in (x, y, y):
        dense(batch)
    sparse(x)
    sparse._countdown = 1  # as if the clip had stayed put: the next batch is not measured
    sparse(y)
    sparse(y)
    assert sparse._updates == 2 and int(sparse.num_batches_tracked) == 3
    assert sparse.running_max.item() == pytest.approx(dense.running_max.item(), rel=1e-6)
    assert sparse.running_min.item() == pytest.approx(dense.running_min.item(), rel=1e-6)
