"""Exact (float64) eval of a quantized model that holds layers quantization leaves in float."""

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

import edgezoo

pytestmark = pytest.mark.usefixtures("one_thread")


class _Scale(nn.Module):
    """A custom weighted leaf edgezoo knows nothing about."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((1, 8, 1, 1), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class _WithLayer(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.conv, self.relu, self.layer = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), layer
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(self.relu(self.conv(x))))


@pytest.mark.parametrize(
    "layer",
    [
        lambda: nn.ConvTranspose2d(8, 8, 3, padding=1),
        lambda: nn.GroupNorm(2, 8),
        lambda: nn.LayerNorm([8, 16, 16]),
        lambda: FrozenBatchNorm2d(8),
        _Scale,
    ],
    ids=["conv_transpose", "group_norm", "layer_norm", "frozen_batch_norm", "custom_leaf"],
)
@pytest.mark.parametrize("config", [{"exact_eval": True}, {"bitwidth_activations": 16}])
def test_exact_eval_runs_layers_left_in_float_in_their_own_dtype(layer, config):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16)
    exact = edgezoo.QuantTrainModule(_WithLayer(layer()), x, **config).train()
    for _ in range(4):
        exact(x)
    plain = edgezoo.QuantTrainModule(_WithLayer(layer()), x, **{**config, "exact_eval": False})
    plain.module.load_state_dict(exact.module.state_dict())
    with torch.no_grad():
        got = exact.eval()(x)  # raised "expected Double" / "mixed dtype" before
        expected = plain.eval()(x)
    assert got.dtype == torch.float64
    # The same quantized model; float32 against float64 arithmetic, a step apart at most.
    assert torch.allclose(got.float(), expected, atol=1e-2)
    assert all(p.dtype == torch.float32 for p in exact.parameters())  # nothing cast for good
