"""The ops of a QAT Clip graph in two arithmetics: TIDL's integers, and QAT's float32.

IntegerArithmetic is the device: b-bit activations at power-of-two scales, weights re-quantized
per tensor from max|w| as TIDL does on import, biases as integers at the joint scale under the
graph's bias rule, exact accumulation (integer_kernels: float32 where its sums stay exact, else
float64), requantization by a rounding shift with saturation. FloatArithmetic is what
PyTorch's QAT eval computes: the same graph in float32 with every range applied by fake
quantization. Both follow the graph the same way, so
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

from edgezoo.errors import SimulationError
from edgezoo.quantization.exact import exact_conv2d
from edgezoo.quantization.grid import (
    BIAS_JOINT,
    fake_quantize_activation,
    fake_quantize_bias,
    imported_bias_integers,
    power_of_two_exponent,
    rounding_divide,
    scaled_round,
    weight_integers,
    weight_scale,
)
from edgezoo.simulation.integer_kernels import (
    EXACT_FLOAT32_SUM,
    IntegerWeights,
    integer_conv2d,
    integer_linear,
)
from edgezoo.simulation.values import FloatValue, Grid, IntegerValue
from edgezoo.tidl.tensor_bits import TensorBits

__all__ = ["ConvSpec", "FloatArithmetic", "IntegerArithmetic", "PoolSpec"]


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
    """log2 of a weight scale (a power of two by construction: weight_scale's)."""
    exponent = power_of_two_exponent(float(scale))
    if exponent is None:
        raise SimulationError(f"weight scale {float(scale)!r} is not a power of two")
    return exponent


def bias_bits(weight_bits: int, value: IntegerValue | FloatValue) -> int:
    """The bias grid follows the layer's widest operand: 2*b-1 bits for b = max(weights,
    input) (QuantWeightMixin's bias_bitwidth, as the planner sets it)."""
    return max(weight_bits, value.grid.bitwidth)


class IntegerArithmetic:
    """TIDL's fixed-point arithmetic on IntegerValue tensors (exact).

    Integers are held in float32 where they stay within EXACT_FLOAT32_SUM (every activation
    grid, most accumulators) and in float64 otherwise (exact below 2^53), so PyTorch's fast
    float kernels compute them exactly. input_dtype: the precision the float graph
    input is quantized in, QAT's eval precision (so the input integers are the QAT model's).
    bias_rule: how the device imports a bias (grid.BIAS_RULES).
    """

    def __init__(
        self,
        bits: TensorBits | None = None,
        rounding_mode: str = "half_up",
        input_dtype: torch.dtype = torch.float32,
        bias_rule: str = BIAS_JOINT,
    ) -> None:
        self.bits = bits or TensorBits()
        self.rounding_mode = rounding_mode
        self.input_dtype = input_dtype
        self.bias_rule = bias_rule
        self._weights_of: dict[int, tuple[Tensor, IntegerWeights, int]] = {}

    def quantize_input(self, x: Tensor, grid: Grid) -> IntegerValue:
        """The float graph input through its Clip, rounded as the QAT forward rounds it."""
        values = _fake_quantize(x.to(self.input_dtype), grid, self.rounding_mode)
        data = values.float() * 2.0**grid.exponent
        # Channels-last runs PyTorch's CPU convolutions and pools several times faster.
        if data.dim() == 4:
            data = data.contiguous(memory_format=torch.channels_last)
        return IntegerValue(data, grid.exponent, grid)

    def clip(self, value: IntegerValue, grid: Grid, owned: bool = False) -> IntegerValue:
        """Requantize onto a range's grid: one rounding (of a pending division too), saturation.

        owned: no one else reads value, so its tensor may be overwritten (no new allocation).
        """
        shift = value.exponent - grid.exponent
        if isinstance(value.divisor, int) and value.divisor == 1:
            # value * 2^-shift is exact, so it rounds exactly (integer_kernels' bound).
            data = scaled_round(value.data, 2.0**-shift, self.rounding_mode, out=owned)
        else:
            up, down = max(0, -shift), max(0, shift)
            num = value.data.to(torch.int64) * (1 << up)
            den = value.divisor * (1 << down)
            data = rounding_divide(num, den, self.rounding_mode).double()
        # A b-bit grid (b <= 16) holds integers float32 represents exactly.
        return IntegerValue(data.clamp_(grid.low, grid.high).float(), grid.exponent, grid)

    def settle(self, value: IntegerValue, grid: Grid) -> IntegerValue:
        """A pending value materialised onto its input's grid."""
        return self.clip(value, grid)

    def _weights(self, weight: Tensor, bias: Tensor | None, value: IntegerValue, bits: int):
        """TIDL's integer weights (per-tensor scale from max|w|, `bits` wide) and the integer
        bias its rule gives on the joint grid."""
        integers, w_exponent = self._integer_weights(weight, bits)
        if bias is None:
            return integers, None, w_exponent
        joint = 2.0 ** (value.exponent + w_exponent)
        signed = value.grid.low < 0
        rule = (bias_bits(bits, value), self.bias_rule, signed)
        return integers, imported_bias_integers(bias, joint, *rule), w_exponent

    def _integer_weights(self, weight: Tensor, bits: int) -> tuple[IntegerWeights, int]:
        """The weight's integers and scale exponent, computed once per graph constant."""
        cached = self._weights_of.get(id(weight))
        if cached is None or cached[0] is not weight:
            scale = weight_scale(weight, bits)
            integers = weight_integers(weight.double(), scale.double(), bits)
            cached = (weight, IntegerWeights.of(integers), _exponent(scale))
            self._weights_of[id(weight)] = cached
        return cached[1], cached[2]

    def conv(
        self, value: IntegerValue, weight: Tensor, bias: Tensor | None, spec: ConvSpec, bits: int
    ) -> IntegerValue:
        integers, bias_int, w_exponent = self._weights(weight, bias, value, bits)
        options = (spec.stride, spec.padding, spec.dilation, spec.groups)
        acc = integer_conv2d(value.data, integers, bias_int, *options, peak=_peak(value))
        return IntegerValue(acc, value.exponent + w_exponent)

    def gemm(
        self, value: IntegerValue, weight: Tensor, bias: Tensor | None, bits: int
    ) -> IntegerValue:
        integers, bias_int, w_exponent = self._weights(weight, bias, value, bits)
        acc = integer_linear(value.data, integers, bias_int, peak=_peak(value))
        return IntegerValue(acc, value.exponent + w_exponent)

    def add(self, a: IntegerValue, b: IntegerValue) -> IntegerValue:
        """Operands aligned by left shifts to the finer scale, summed exactly."""
        exponent = max(a.exponent, b.exponent)
        shifts = [2.0 ** (exponent - v.exponent) for v in (a, b)]
        dtype = _exact_dtype(_peak(a) * shifts[0] + _peak(b) * shifts[1])
        data = a.data.to(dtype) * shifts[0] + b.data.to(dtype) * shifts[1]
        return IntegerValue(data, exponent)

    def mul(self, a: IntegerValue, b: IntegerValue) -> IntegerValue:
        """The exact integer product at the sum of the scales (broadcast like the graph's Mul);
        the Clip after it requantizes it."""
        dtype = _exact_dtype(_peak(a) * _peak(b))
        return IntegerValue(a.data.to(dtype) * b.data.to(dtype), a.exponent + b.exponent)

    def gate(self, value: IntegerValue, function, grid: Grid) -> IntegerValue:
        """function of the dequantized values in QAT's precision, rounded onto grid."""
        x = value.dequantize().to(self.input_dtype)
        rounded = _fake_quantize(function(x), grid, self.rounding_mode)
        data = (rounded.double() * 2.0**grid.exponent).float()
        return IntegerValue(data, grid.exponent, grid)

    def concat(self, values: list[IntegerValue], axis: int) -> IntegerValue:
        exponent = max(v.exponent for v in values)
        shifts = [2.0 ** (exponent - v.exponent) for v in values]
        dtype = _exact_dtype(max(_peak(v) * shift for v, shift in zip(values, shifts, strict=True)))
        parts = [v.data.to(dtype) * shift for v, shift in zip(values, shifts, strict=True)]
        return IntegerValue(torch.cat(parts, dim=axis), exponent)

    def max_pool(self, value: IntegerValue, spec: PoolSpec) -> IntegerValue:
        pooled = F.max_pool2d(
            value.data, spec.kernel, spec.stride, spec.padding, ceil_mode=spec.ceil_mode
        )
        return replace(value, data=pooled)

    def average_pool(self, value: IntegerValue, spec: PoolSpec) -> IntegerValue:
        """An exact integer sum over each window, divided by its count when materialised."""
        pool = (spec.kernel, spec.stride, spec.padding, spec.ceil_mode, spec.count_include_pad)
        data = value.data.to(_exact_dtype(_peak(value) * spec.kernel[0] * spec.kernel[1]))
        sums = F.avg_pool2d(data, *pool, divisor_override=1)
        counts = F.avg_pool2d(torch.ones_like(value.data[:1, :1]), *pool, divisor_override=1)
        if spec.count_include_pad:
            counts = torch.full_like(counts, spec.kernel[0] * spec.kernel[1])
        return IntegerValue(sums, value.exponent, None, counts.to(torch.int64))

    def global_average_pool(self, value: IntegerValue) -> IntegerValue:
        count = value.data.shape[2] * value.data.shape[3]
        sums = value.data.to(_exact_dtype(_peak(value) * count)).sum(dim=(2, 3), keepdim=True)
        return IntegerValue(sums, value.exponent, None, count)

    def resize(self, value: IntegerValue, scale: int, mode: str) -> IntegerValue:
        """Nearest: a copy. Bilinear (half-pixel): fixed-point weights of 1/(2*scale) per axis,
        so the result is exact at 2 * log2(2 * scale) more fractional bits."""
        if mode == "nearest":
            return replace(value, data=F.interpolate(value.data, scale_factor=scale))
        extra = 2 * int(math.log2(2 * scale))
        # Half-pixel weights at a power-of-two scale are exact binary fractions, so float32
        # interpolates exactly while the result, in units of 2^-extra, stays within its bound.
        data = value.data.to(_exact_dtype(_peak(value) * 2.0**extra))
        upsampled = F.interpolate(data, scale_factor=scale, mode="bilinear", align_corners=False)
        return IntegerValue(torch.round(upsampled.mul_(2.0**extra)), value.exponent + extra)

    def argmax(self, value: IntegerValue, axis: int) -> Tensor:
        return value.data.argmax(dim=axis, keepdim=True)


def _peak(value: IntegerValue) -> float:
    """The largest magnitude an integer of a ranged value can have (its grid's bounds)."""
    return float(max(-value.grid.low, value.grid.high))


def _exact_dtype(bound: float) -> torch.dtype:
    """float32 for integers up to EXACT_FLOAT32_SUM in magnitude, else float64."""
    return torch.float32 if bound <= EXACT_FLOAT32_SUM else torch.float64


class FloatArithmetic:
    """PyTorch's QAT eval arithmetic on the same graph: float ops, fake-quantized ranges.

    In float32, or in float64 when QAT evaluates exactly (QuantizationConfig.exact_eval; by
    default above 8 bits). Each bias is the one QAT adds: the exported bias under bias_rule.
    """

    def __init__(
        self,
        bits: TensorBits | None = None,
        rounding_mode: str = "half_up",
        dtype: torch.dtype | None = None,
        bias_rule: str = BIAS_JOINT,
    ) -> None:
        self.bits = bits or TensorBits()
        self.rounding_mode = rounding_mode
        self.bias_rule = bias_rule
        wide = self.bits.widest > 8
        self.dtype = dtype or (torch.float64 if wide else torch.float32)

    def quantize_input(self, x: Tensor, grid: Grid) -> FloatValue:
        data = _fake_quantize(x.to(self.dtype), grid, self.rounding_mode)
        return FloatValue(data, grid)

    def clip(self, value: FloatValue, grid: Grid, owned: bool = False) -> FloatValue:
        data = _fake_quantize(value.data, grid, self.rounding_mode)
        return FloatValue(data, grid)

    def settle(self, value: FloatValue, grid: Grid) -> FloatValue:
        return self.clip(value, grid)

    def conv(
        self, value: FloatValue, weight: Tensor, bias: Tensor | None, spec: ConvSpec, bits: int
    ) -> FloatValue:
        bias = self._qat_bias(value, weight, bias, bits)
        weight = _qat_weights(weight, bits)
        conv = exact_conv2d if self.dtype == torch.float64 else F.conv2d
        out = conv(
            value.data,
            weight.to(self.dtype),
            bias,
            spec.stride,
            spec.padding,
            spec.dilation,
            spec.groups,
        )
        return FloatValue(out)

    def gemm(self, value: FloatValue, weight: Tensor, bias: Tensor | None, bits: int) -> FloatValue:
        bias = self._qat_bias(value, weight, bias, bits)
        weight = _qat_weights(weight, bits).to(self.dtype)
        return FloatValue(F.linear(value.data, weight, bias))

    def _qat_bias(
        self, value: FloatValue, weight: Tensor, bias: Tensor | None, bits: int
    ) -> Tensor | None:
        """The bias QAT added: the exported one as the device reads it, in QAT's precision."""
        if bias is None:
            return None
        joint = 2.0 ** (value.grid.exponent + _exponent(weight_scale(weight, bits)))
        signed = value.grid.low < 0
        read = bias.to(self.dtype)
        joint_scale = torch.tensor(joint, dtype=torch.float64)
        args = (bias_bits(bits, value), self.bias_rule, signed)
        return fake_quantize_bias(read, joint_scale, *args, imported=True)

    def add(self, a: FloatValue, b: FloatValue) -> FloatValue:
        return FloatValue(torch.add(a.data, b.data))

    def mul(self, a: FloatValue, b: FloatValue) -> FloatValue:
        return FloatValue(torch.mul(a.data, b.data))

    def gate(self, value: FloatValue, function, grid: Grid) -> FloatValue:
        return FloatValue(function(value.data))

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


def _fake_quantize(data: Tensor, grid: Grid, rounding: str) -> Tensor:
    """QAT's fake quantization onto a grid, in the data's precision (what a PACT2 computes)."""
    return fake_quantize_activation(
        data, grid.clip_min, grid.clip_max, grid.bitwidth, True, rounding
    )


def _to(tensor: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if tensor is None else tensor.to(dtype)


def _qat_weights(weight: Tensor, bitwidth: int) -> Tensor:
    """The weights QAT used: the exported ones re-quantized onto TIDL's grid (undoing the tiny
    nudge export gives a +64-step peak)."""
    scale = weight_scale(weight, bitwidth)
    return weight_integers(weight, scale, bitwidth) / scale
