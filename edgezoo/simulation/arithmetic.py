"""The ops of a QAT Clip graph in two arithmetics: TIDL's integers, and QAT's float32.

IntegerArithmetic is the device: b-bit activations at power-of-two scales, weights re-quantized
per tensor from max|w| as TIDL does on import, biases as 2b-bit integers at the joint scale,
exact int64 accumulation (float64 products, exact below 2^53), requantization by a rounding
shift with saturation. FloatArithmetic is what PyTorch's QAT eval computes: the same graph in
float32 with every range applied by fake quantization. Both follow the graph the same way, so
comparing them layer by layer shows where float32 arithmetic leaves the integer one.

Average pools and bilinear resizes make values between their input's grid points; such a value
is kept exact ("pending") until it is materialised: by the Clip that reads it (one rounding),
or else onto its input's grid, as the QAT forward does (InputGridLayer).
"""

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from edgezoo.quantization.exact import exact_conv2d
from edgezoo.quantization.grid import (
    bias_limits,
    fake_quantize_activation,
    round_half_away,
    rounding_divide,
    weight_integers,
    weight_scale,
)
from edgezoo.simulation.values import FloatValue, Grid, IntegerValue

__all__ = ["Bits", "ConvSpec", "FloatArithmetic", "IntegerArithmetic", "PoolSpec"]


@dataclass(frozen=True)
class ConvSpec:
    """A Conv node's geometry (symmetric padding)."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int


@dataclass(frozen=True)
class PoolSpec:
    """A pooling node's window."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    ceil_mode: bool = False
    count_include_pad: bool = False


def _exponent(scale: Tensor) -> int:
    """log2 of a power-of-two scale, exactly."""
    mantissa, exponent = math.frexp(float(scale))
    return exponent - 1 if mantissa == 0.5 else exponent


@dataclass(frozen=True)
class Bits:
    """The bit widths of a graph's weights and activations (biases: 2 x the wider)."""

    weights: int = 8
    activations: int = 8

    @property
    def bias(self) -> int:
        return max(self.weights, self.activations)


class IntegerArithmetic:
    """TIDL's fixed-point arithmetic on IntegerValue tensors (exact).

    input_dtype: the precision the float graph input is quantized in, QAT's eval precision
    (so the input integers are the QAT model's).
    """

    def __init__(
        self,
        bits: Bits = Bits(),
        rounding: str = "half_up",
        input_dtype: torch.dtype = torch.float32,
    ) -> None:
        self.bits = bits
        self.rounding = rounding
        self.input_dtype = input_dtype
        self._weights_of: dict[int, tuple[Tensor, int]] = {}

    def quantize_input(self, x: Tensor, grid: Grid) -> IntegerValue:
        """The float graph input through its Clip, rounded as the QAT forward rounds it."""
        values = _fake_quantize(x.to(self.input_dtype), grid, self.bits.activations, self.rounding)
        values = values.double()
        return IntegerValue(_to_int(values * 2.0**grid.exponent), grid.exponent, grid)

    def clip(self, value: IntegerValue, grid: Grid) -> IntegerValue:
        """Requantize onto a range's grid: one rounding (of a pending division too), saturation."""
        up, down = max(0, grid.exponent - value.exponent), max(0, value.exponent - grid.exponent)
        num = value.data * (1 << up)
        den = value.divisor * (1 << down)
        data = rounding_divide(num, den, self.rounding).clamp_(grid.low, grid.high)
        return IntegerValue(data, grid.exponent, grid)

    def settle(self, value: IntegerValue, grid: Grid) -> IntegerValue:
        """A pending value materialised onto its input's grid."""
        return self.clip(value, grid)

    def _weights(self, weight: Tensor, bias: Tensor | None, exponent: int):
        """TIDL's integer weights (per-tensor scale from max|w|) and 2b-bit integer bias."""
        integers, w_exponent = self._integer_weights(weight)
        if bias is None:
            return integers, None, w_exponent
        low, high = bias_limits(self.bits.bias)
        joint = 2.0 ** (exponent + w_exponent)
        bias_int = round_half_away(bias.double() * joint).clamp_(low, high)
        return integers, bias_int, w_exponent

    def _integer_weights(self, weight: Tensor) -> tuple[Tensor, int]:
        """The weight's integers and scale exponent, computed once per graph constant."""
        cached = self._weights_of.get(id(weight))
        if cached is None or cached[0].shape != weight.shape:
            scale = weight_scale(weight, self.bits.weights)
            integers = weight_integers(weight.double(), scale.double(), self.bits.weights)
            cached = self._weights_of[id(weight)] = (integers, _exponent(scale))
        return cached

    def conv(self, value: IntegerValue, weight: Tensor, bias: Tensor | None, spec: ConvSpec):
        integers, bias_int, w_exponent = self._weights(weight, bias, value.exponent)
        acc = exact_conv2d(
            value.data, integers, bias_int, spec.stride, spec.padding, spec.dilation, spec.groups
        )
        return IntegerValue(_to_int(acc), value.exponent + w_exponent)

    def gemm(self, value: IntegerValue, weight: Tensor, bias: Tensor | None) -> IntegerValue:
        integers, bias_int, w_exponent = self._weights(weight, bias, value.exponent)
        acc = F.linear(value.data.double(), integers, bias_int)
        return IntegerValue(_to_int(acc), value.exponent + w_exponent)

    def add(self, a: IntegerValue, b: IntegerValue) -> IntegerValue:
        """Operands aligned by left shifts to the finer scale, summed exactly."""
        exponent = max(a.exponent, b.exponent)
        data = a.data * (1 << (exponent - a.exponent)) + b.data * (1 << (exponent - b.exponent))
        return IntegerValue(data, exponent)

    def concat(self, values: list[IntegerValue], axis: int) -> IntegerValue:
        exponent = max(v.exponent for v in values)
        parts = [v.data * (1 << (exponent - v.exponent)) for v in values]
        return IntegerValue(torch.cat(parts, dim=axis), exponent)

    def max_pool(self, value: IntegerValue, spec: PoolSpec) -> IntegerValue:
        pooled = F.max_pool2d(
            value.data.double(), spec.kernel, spec.stride, spec.padding, ceil_mode=spec.ceil_mode
        )
        return replace(value, data=_to_int(pooled))

    def average_pool(self, value: IntegerValue, spec: PoolSpec) -> IntegerValue:
        """An exact integer sum over each window, divided by its count when materialised."""
        pool = (spec.kernel, spec.stride, spec.padding, spec.ceil_mode, spec.count_include_pad)
        sums = F.avg_pool2d(value.data.double(), *pool, divisor_override=1)
        counts = F.avg_pool2d(
            torch.ones_like(value.data[:1, :1]).double(), *pool, divisor_override=1
        )
        if spec.count_include_pad:
            counts = torch.full_like(counts, spec.kernel[0] * spec.kernel[1])
        return IntegerValue(_to_int(sums), value.exponent, None, _to_int(counts))

    def global_average_pool(self, value: IntegerValue) -> IntegerValue:
        sums = value.data.sum(dim=(2, 3), keepdim=True)
        count = value.data.shape[2] * value.data.shape[3]
        return IntegerValue(sums, value.exponent, None, count)

    def resize(self, value: IntegerValue, scale: int, mode: str) -> IntegerValue:
        """Nearest: a copy. Bilinear (half-pixel): fixed-point weights of 1/(2*scale) per axis,
        so the result is exact at 2 * log2(2 * scale) more fractional bits."""
        data = value.data.double()
        if mode == "nearest":
            return replace(value, data=_to_int(F.interpolate(data, scale_factor=scale)))
        extra = 2 * int(math.log2(2 * scale))
        upsampled = F.interpolate(data, scale_factor=scale, mode="bilinear", align_corners=False)
        return IntegerValue(_to_int(upsampled * 2.0**extra), value.exponent + extra)

    def argmax(self, value: IntegerValue, axis: int) -> Tensor:
        return value.data.argmax(dim=axis, keepdim=True)


def _to_int(values: Tensor) -> Tensor:
    """Float64 results that hold integers, as int64 (exact: they are below 2^53)."""
    return torch.round(values).to(torch.int64)


class FloatArithmetic:
    """PyTorch's QAT eval arithmetic on the same graph: float ops, fake-quantized ranges.

    In float32, or in float64 when QAT evaluates exactly (QuantizationConfig.exact_eval; by
    default above 8 bits).
    """

    def __init__(
        self, bits: Bits = Bits(), rounding: str = "half_up", dtype: torch.dtype | None = None
    ) -> None:
        self.bits = bits
        self.rounding = rounding
        wide = max(bits.weights, bits.activations) > 8
        self.dtype = dtype or (torch.float64 if wide else torch.float32)

    def quantize_input(self, x: Tensor, grid: Grid) -> FloatValue:
        data = _fake_quantize(x.to(self.dtype), grid, self.bits.activations, self.rounding)
        return FloatValue(data, grid)

    def clip(self, value: FloatValue, grid: Grid) -> FloatValue:
        data = _fake_quantize(value.data, grid, self.bits.activations, self.rounding)
        return FloatValue(data, grid)

    def settle(self, value: FloatValue, grid: Grid) -> FloatValue:
        return self.clip(value, grid)

    def conv(self, value: FloatValue, weight: Tensor, bias: Tensor | None, spec: ConvSpec):
        weight = _qat_weights(weight, self.bits.weights)
        conv = exact_conv2d if self.dtype == torch.float64 else F.conv2d
        out = conv(
            value.data,
            weight.to(self.dtype),
            _to(bias, self.dtype),
            spec.stride,
            spec.padding,
            spec.dilation,
            spec.groups,
        )
        return FloatValue(out)

    def gemm(self, value: FloatValue, weight: Tensor, bias: Tensor | None) -> FloatValue:
        weight = _qat_weights(weight, self.bits.weights).to(self.dtype)
        return FloatValue(F.linear(value.data, weight, _to(bias, self.dtype)))

    def add(self, a: FloatValue, b: FloatValue) -> FloatValue:
        return FloatValue(torch.add(a.data, b.data))

    def concat(self, values: list[FloatValue], axis: int) -> FloatValue:
        return FloatValue(torch.cat([v.data for v in values], dim=axis))

    def max_pool(self, value: FloatValue, spec: PoolSpec) -> FloatValue:
        pooled = F.max_pool2d(
            value.data, spec.kernel, spec.stride, spec.padding, ceil_mode=spec.ceil_mode
        )
        return replace(value, data=pooled)

    def average_pool(self, value: FloatValue, spec: PoolSpec) -> FloatValue:
        pooled = F.avg_pool2d(
            value.data,
            spec.kernel,
            spec.stride,
            spec.padding,
            spec.ceil_mode,
            spec.count_include_pad,
        )
        return FloatValue(pooled)

    def global_average_pool(self, value: FloatValue) -> FloatValue:
        return FloatValue(F.adaptive_avg_pool2d(value.data, 1))

    def resize(self, value: FloatValue, scale: int, mode: str) -> FloatValue:
        if mode == "nearest":
            return replace(value, data=F.interpolate(value.data, scale_factor=float(scale)))
        out = F.interpolate(
            value.data, scale_factor=float(scale), mode="bilinear", align_corners=False
        )
        return FloatValue(out)

    def argmax(self, value: FloatValue, axis: int) -> Tensor:
        return value.data.argmax(dim=axis, keepdim=True)


def _fake_quantize(data: Tensor, grid: Grid, bitwidth: int, rounding: str) -> Tensor:
    """QAT's fake quantization onto a grid, in the data's precision (what a PACT2 computes)."""
    return fake_quantize_activation(data, grid.clip_min, grid.clip_max, bitwidth, True, rounding)


def _to(tensor: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if tensor is None else tensor.to(dtype)


def _qat_weights(weight: Tensor, bitwidth: int) -> Tensor:
    """The weights QAT used: the exported ones re-quantized onto TIDL's grid (undoing the tiny
    nudge export gives a +64-step peak)."""
    scale = weight_scale(weight, bitwidth)
    return weight_integers(weight, scale, bitwidth) / scale
