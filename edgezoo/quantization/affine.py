"""The affine activation grid of QDQ devices: a float scale and, where allowed, a zero point.

TIDL's devices after TDA4VM import prequantized ONNX QDQ graphs, whose QuantizeLinear nodes
hold any float scale and a zero point (ONNX: q = saturate(round(x / scale) + zero_point)).
The grid of a range is a pure function of its clip bounds, so QAT, the deploy conversion and
the QDQ export derive the same scale and zero point from the same two numbers:

- clip_min == 0: unsigned, zero point 0, scale = clip_max / (2^b - 1);
- clip_min == -clip_max: symmetric signed, zero point 0, scale = clip_max / (2^(b-1) - 1);
- otherwise asymmetric unsigned: scale = (clip_max - clip_min) / (2^b - 1), zero point
  round(-clip_min / scale).

Scales are float32, as the graph stores them. Integers saturate to the full int8/uint8 range
(what QuantizeLinear does), and x / scale is rounded by the range's rounding mode.
"""

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from edgezoo.errors import QuantizationConfigError
from edgezoo.quantization.grid import (
    HALF_AWAY,
    HALF_EVEN,
    MIN_CLIP,
    check_bitwidth,
    round_half_away,
)

__all__ = [
    "ACTIVATION_SCALES",
    "AFFINE_SCALES",
    "POWER_OF_TWO_SCALES",
    "AffineGrid",
    "affine_grid",
    "check_activation_scales",
    "fake_quantize_affine",
]

POWER_OF_TWO_SCALES = "power_of_two"
AFFINE_SCALES = "affine"
ACTIVATION_SCALES = (POWER_OF_TWO_SCALES, AFFINE_SCALES)
"""How an activation range turns into a grid: power-of-two clips (TIDL's Clip graphs, TDA4VM),
or affine (float scale and zero point, QDQ graphs for the other devices)."""


def check_activation_scales(scales: str) -> str:
    """Return scales if it is one of ACTIVATION_SCALES, else raise QuantizationConfigError."""
    if scales not in ACTIVATION_SCALES:
        raise QuantizationConfigError(
            f"activation scales {scales!r} is not one of {', '.join(ACTIVATION_SCALES)}"
        )
    return scales


class AffineGrid(NamedTuple):
    """value = (q - zero_point) * scale, q in [qmin, qmax] (the integer type's range)."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int

    @property
    def signed(self) -> bool:
        return self.qmin < 0

    @property
    def low(self) -> int:
        """The smallest integer steps from zero: qmin - zero_point."""
        return self.qmin - self.zero_point

    @property
    def high(self) -> int:
        return self.qmax - self.zero_point


def affine_grid(clip_min: float, clip_max: float, bitwidth: int = 8) -> AffineGrid:
    """The QDQ grid of a clip range (see the module docstring for the three cases)."""
    check_bitwidth(bitwidth)
    clip_min, clip_max = float(np.float32(min(clip_min, 0.0))), float(np.float32(clip_max))
    clip_max = max(clip_max, MIN_CLIP)
    if clip_min == -clip_max:
        levels = 2 ** (bitwidth - 1) - 1
        scale = float(np.float32(clip_max / levels))
        return AffineGrid(scale, 0, -(2 ** (bitwidth - 1)), levels)
    levels = 2**bitwidth - 1
    scale = float(np.float32((clip_max - clip_min) / levels))
    zero_point = int(np.clip(np.rint(-clip_min / scale), 0, levels))
    return AffineGrid(scale, zero_point, 0, levels)


class _FakeQuantizeAffine(torch.autograd.Function):
    """round(x / scale) saturated, times scale (or, without rounding, x clamped to the clip);
    gradient 1 strictly inside the clip range."""

    @staticmethod
    def forward(
        ctx, x: Tensor, grid: AffineGrid, bounds: tuple[float, float], rounding: bool, mode: str
    ) -> Tensor:
        ctx.bounds = bounds
        ctx.save_for_backward(x)
        if not rounding:
            return torch.clamp(x, *bounds)
        steps = torch.div(x, grid.scale)
        if mode == HALF_EVEN:
            steps = torch.round(steps)
        elif mode == HALF_AWAY:
            steps = round_half_away(steps)
        else:
            steps = steps.add_(0.5).floor_()
        return steps.clamp_(grid.low, grid.high).mul_(grid.scale)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad, x, *ctx.bounds), None, None, None, None


def fake_quantize_affine(
    x: Tensor,
    clip_min: float,
    clip_max: float,
    bitwidth: int = 8,
    rounding: bool = True,
    mode: str = HALF_EVEN,
) -> Tensor:
    """x on the affine grid of (clip_min, clip_max): what QuantizeLinear + DequantizeLinear
    compute for that range (rounding half to even by default, as QuantizeLinear does), with a
    straight-through gradient inside it. Without rounding, x clamped to the clip (the Clip the
    export writes)."""
    grid = affine_grid(clip_min, clip_max, bitwidth)
    return _FakeQuantizeAffine.apply(x, grid, (clip_min, clip_max), rounding, mode)
