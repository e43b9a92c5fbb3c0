"""The tensors of a simulated graph: integers at a power-of-two scale, or float values.

An IntegerValue is data * 2^-exponent with integer data, held exactly in float32 or float64
(integer_kernels says which). It is `ranged` when it lies on an
activation range's grid (it came out of a Clip, or out of an op that keeps its input's grid);
a Conv, Gemm, Add or Concat output is an accumulator until a Clip requantizes it.
"""

from dataclasses import dataclass

from torch import Tensor

from edgezoo.errors import SimulationError
from edgezoo.quantization.grid import clip_step, power_of_two_exponent


@dataclass(frozen=True)
class Grid:
    """An activation range's grid: value = integer * 2^-exponent, integers in [low, high] (a
    `bitwidth`-bit grid)."""

    exponent: int
    low: int
    high: int
    clip_min: float
    clip_max: float
    bitwidth: int = 8

    @classmethod
    def of_clip(cls, clip_min: float, clip_max: float, bitwidth: int) -> "Grid":
        """The grid of Clip(clip_min, clip_max) at `bitwidth` (its max must be a power of two)."""
        step, low, high = clip_step(clip_min, clip_max, bitwidth)
        exponent = power_of_two_exponent(step)
        if exponent is None:
            raise SimulationError(
                f"Clip({clip_min:g}, {clip_max:g}) has no power-of-two grid: TIDL's Clip "
                "ranges are (0, 2^k) or (-2^k, 2^k); export the QAT model with edgezoo.export_onnx"
            )
        return cls(-exponent, low, high, clip_min, clip_max, bitwidth)


@dataclass(frozen=True)
class IntegerValue:
    """An integer tensor (exact floats) at scale 2^exponent; grid set on a range's grid."""

    data: Tensor
    exponent: int
    grid: Grid | None = None
    divisor: Tensor | int = 1
    """A pending division (an average pool's count): value = data * 2^-exponent / divisor."""

    @property
    def ranged(self) -> bool:
        return self.grid is not None

    def dequantize(self) -> Tensor:
        """The real values, in float64 (exact up to a pending division)."""
        values = self.data.double() * 2.0 ** (-self.exponent)
        return (
            values if isinstance(self.divisor, int) and self.divisor == 1 else values / self.divisor
        )

    def steps(self) -> Tensor:
        """The values in steps of this tensor's grid (its integers)."""
        return self.data


@dataclass(frozen=True)
class FloatValue:
    """A float tensor, on an activation range's grid when grid is set (the QAT arithmetic)."""

    data: Tensor
    grid: Grid | None = None

    @property
    def ranged(self) -> bool:
        return self.grid is not None

    def dequantize(self) -> Tensor:
        return self.data.double()


Value = IntegerValue | FloatValue
