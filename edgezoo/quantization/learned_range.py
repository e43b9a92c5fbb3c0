"""Power-of-two ranges trained by gradient in the log2 domain (TQT: Jain et al., MLSys 2020).

A learned range keeps log2 of its clip as a parameter t; the forward clips at 2^ceil(t), so the
deployed range is still a power of two and the graph is the same Clip graph. Through the
straight-through estimator (identity for round and ceil) the gradient of a fake-quantized value
y = s * clamp(round(x / s)) with respect to t is ln 2 * (y - x) where x is inside the clip (the
rounding error: widening the range coarsens the grid) and ln 2 * y where x was clipped (widening
the range lets it through). Adding that gradient leaves the forward's value untouched, so QAT,
the export and the integer simulation stay bit-exact.
"""

import math

import torch
from torch import Tensor, nn

__all__ = [
    "LOG2_THRESHOLD",
    "MAX_LOG2_CLIP",
    "initial_log2_threshold",
    "learned_clip",
    "learned_range_parameters",
    "with_threshold_gradient",
]

LOG2_THRESHOLD = "log2_threshold"
"""The parameter's name in a learned range (and its state_dict key suffix)."""

MAX_LOG2_CLIP = 16
"""The widest learned clip is 2^16 (the narrowest is grid.MIN_CLIP, 2^-16)."""

_LN2 = math.log(2.0)


def initial_log2_threshold(clip: float) -> float:
    """t for a power-of-two clip c: the middle of the cell (log2 c - 1, log2 c] that ceil maps
    to c, so the first small gradient steps keep the clip instead of doubling or halving it."""
    return math.log2(clip) - 0.5


def learned_clip(log2_threshold: Tensor) -> Tensor:
    """2^ceil(t), the power-of-two clip a learned range applies (no gradient)."""
    exponent = torch.ceil(log2_threshold.detach()).clamp(-MAX_LOG2_CLIP, MAX_LOG2_CLIP)
    return torch.exp2(exponent)


def with_threshold_gradient(
    y: Tensor, x: Tensor, log2_threshold: Tensor, clip_min: float, clip_max: float
) -> Tensor:
    """y, unchanged in value, carrying TQT's gradient to log2_threshold (module docstring)."""
    x = x.detach()
    inside = (x > clip_min) & (x < clip_max)
    slope = torch.where(inside, y.detach() - x, y.detach()).mul_(_LN2)
    # (t - t.detach()) is exactly 0, so y's value (and every bit of the forward) is kept.
    return y + (log2_threshold - log2_threshold.detach()) * slope


def learned_range_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The log2 thresholds of every learned range in model (an optimizer's own group: they
    take their own learning rate and no weight decay)."""
    return [
        parameter
        for name, parameter in model.named_parameters()
        if name.rsplit(".", 1)[-1] == LOG2_THRESHOLD
    ]
