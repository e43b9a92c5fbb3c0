"""Channel splits (torch.chunk / split / x[:, a:b]): exported as TIDL's Split when the parts
cover every channel, named per node otherwise, simulated, and quantized on their source's grid."""

import pytest
import torch
from torch import nn

from edgezoo import QuantTrainModule, export_onnx
from edgezoo.layers import CatBlock
from edgezoo.quantization.weight_layers import QuantWeightMixin


class Shuffle(nn.Module):
    """ShuffleNetV2-style: one conv, its channels split in two, each half convolved, concat."""

    def __init__(self, partial: bool = False) -> None:
        super().__init__()
        self.partial = partial
        self.conv = nn.Conv2d(3, 8, 1)
        self.relu = nn.ReLU()
        self.left = nn.Conv2d(4, 4, 1)
        self.right = nn.Conv2d(2 if partial else 4, 4, 1)
        self.cat = CatBlock()

    def forward(self, x):
        y = self.relu(self.conv(x))
        a, b = (y[:, :4], y[:, 6:]) if self.partial else y.chunk(2, dim=1)
        return self.cat([self.left(a), self.right(b)])


def exported(tmp_path, partial: bool, opset: int, seed: int = 0):
    torch.manual_seed(seed)
    x = torch.randn(1, 3, 8, 8)
    q = QuantTrainModule(Shuffle(partial), x)
    q(torch.randn(4, 3, 8, 8))
    path = tmp_path / "shuffle.onnx"
    report = export_onnx(
        q.eval(), path, example_input=x, write_configs=False, strict=False, opset=opset
    )
    return q, report


@pytest.mark.parametrize("opset", [11, 13])
def test_a_full_channel_split_exports_as_one_split_and_simulates_exactly(tmp_path, opset):
    for seed in range(3):
        _, report = exported(tmp_path, False, opset, seed)
        assert report.ok, str(report)
        assert report.node_counts.get("Split") == 1 and "Slice" not in report.node_counts
        assert report.integer_max_steps == 0


def test_a_partial_slice_is_named_with_its_own_rule(tmp_path):
    _, report = exported(tmp_path, True, 11)
    rules = [(v.rule, v.node) for v in report.verification.violations]
    assert [rule for rule, _ in rules] == ["slice", "slice"]
    assert "torch.split" in report.verification.violations[0].message
    assert not report.ok and "not run" in str(report)  # and the integers are flagged unchecked


def test_a_conv_reading_a_chunk_knows_its_input_grid():
    """The bias of a conv lies on its input's grid: a chunk of a range is on that range's grid."""
    q = QuantTrainModule(Shuffle(), torch.randn(1, 3, 8, 8))
    units = {n: m for n, m in q.module.named_modules() if isinstance(m, QuantWeightMixin)}
    assert units["left"].input_grid is q.module.relu and units["right"].input_grid is q.module.relu


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle between two convs: view, transpose, reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.relu = nn.ReLU()
        self.after = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.relu(self.conv(x))
        n, c, h, w = y.shape
        shuffled = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.after(shuffled)


def test_a_channel_shuffle_keeps_its_grid_and_simulates_exactly(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    q = QuantTrainModule(ChannelShuffle(), x)
    q(torch.randn(4, 3, 8, 8))
    assert q.module.after.input_grid is q.module.relu  # credited through view/transpose/reshape
    report = export_onnx(q.eval(), tmp_path / "s.onnx", example_input=x, write_configs=False)
    assert report.ok and report.integer_max_steps == 0 and report.node_counts["Transpose"] == 1
