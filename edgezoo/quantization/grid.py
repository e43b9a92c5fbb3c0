"""The power-of-two quantization grid: the one place that defines how edgezoo quantizes.

Training (QAT and calibration), deploy conversion, the export's TIDL weight alignment, graph
verification and the integer simulation all call these functions, so they cannot drift apart.
Scales are powers of two (TIDL's fixed-point shifts). Weights and biases round half away from
zero, activations round half up (floor(x + 0.5)), and gradients pass straight through (STE)
inside the clip range.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple, overload

import torch
from torch import Tensor

from edgezoo.errors import QuantizationConfigError

__all__ = [
    "ACTIVATION_ROUNDINGS",
    "BIAS_JOINT",
    "BIAS_RULES",
    "BIAS_TI_V1",
    "DEFAULT_ACTIVATION_ROUNDING",
    "MAX_BITWIDTH",
    "MIN_BITWIDTH",
    "MIN_CLIP",
    "ActivationGrid",
    "activation_grid",
    "activation_scale",
    "apply_outlier_constraint",
    "bias_integers",
    "bias_limits",
    "bias_multiplier",
    "ceil2",
    "check_activation_rounding",
    "check_bias_rule",
    "check_bitwidth",
    "fake_quantize_activation",
    "fake_quantize_bias",
    "fake_quantize_weight",
    "imported_bias_integers",
    "keep_scale_on_import",
    "quant_limits",
    "quantize_weight_ste",
    "round_half_away",
    "round_half_up",
    "rounding_divide",
    "scaled_round",
    "weight_integers",
    "weight_scale",
]

MIN_BITWIDTH = 2
MAX_BITWIDTH = 16
MIN_CLIP = 2.0**-16
"""Smallest clip value: ceil2 floors its input here so an all-zero tensor still gets a scale."""

OUTLIER_MIN_MAX = 15.0
OUTLIER_MEDIAN_FACTOR = 16.0
OUTLIER_CLIP_FACTOR = 120.0 / 128.0

# Below float32, x * scale + 0.5 is not exact on an 8-bit grid (bfloat16 has 8 significant bits).
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def is_power_of_two_range(clip_min: float, clip_max: float) -> bool:
    """Whether (clip_min, clip_max) is a TIDL QAT range: max = 2^k, min = 0 or -max."""
    return ceil2(clip_max) == clip_max and clip_min in (0.0, -clip_max)


def power_of_two_exponent(scale: float) -> int | None:
    """k where scale == 2^k exactly (None when scale is not a positive power of two)."""
    mantissa, exponent = math.frexp(float(scale))
    return exponent - 1 if mantissa == 0.5 else None


def power_of_two_mask(values: Tensor) -> Tensor:
    """Which entries are exact powers of two (positive or negative)."""
    return torch.frexp(values)[0].abs() == 0.5


def clip_step(clip_min: float, clip_max: float, bitwidth: int) -> tuple[float, int, int]:
    """(value per integer step, lowest integer, highest integer) of a clip range's grid: the
    host-float form of activation_grid, as a QuantizeLinear or the simulator reads it."""
    scale, low, high = _host_grid(float(clip_min), float(clip_max), bitwidth)
    return 1.0 / scale, int(low), int(high)


def import_weight_scale(weight: Tensor, bitwidth: int = 8) -> float:
    """The per-tensor scale TIDL keeps on import for weights already on a QAT grid: 2^(b-1) /
    ceil2(max|w|), halved when a weight would land on +2^(b-1) (the power-of-two maximum case,
    where the QAT grid was the next coarser one; keep_scale_on_import)."""
    half = 2 ** (bitwidth - 1)
    scale = float(weight_scale(weight, bitwidth))
    if bool((weight.double() * scale >= half).any()):
        scale /= 2
    return scale


def check_bitwidth(bitwidth: int) -> int:
    """Return bitwidth if it is an int in [2, 16], else raise QuantizationConfigError."""
    if isinstance(bitwidth, bool) or not isinstance(bitwidth, int):
        raise QuantizationConfigError(
            f"bitwidth must be an int in [{MIN_BITWIDTH}, {MAX_BITWIDTH}], got {bitwidth!r}"
        )
    if not MIN_BITWIDTH <= bitwidth <= MAX_BITWIDTH:
        raise QuantizationConfigError(
            f"bitwidth {bitwidth} is outside [{MIN_BITWIDTH}, {MAX_BITWIDTH}]; "
            "use 8 (TIDL default) or 16"
        )
    return bitwidth


def quant_limits(bitwidth: int, signed: bool) -> tuple[int, int]:
    """Integer range of a bitwidth grid: [-2^(b-1), 2^(b-1)-1] signed, [0, 2^b-1] unsigned."""
    check_bitwidth(bitwidth)
    if signed:
        return -(2 ** (bitwidth - 1)), 2 ** (bitwidth - 1) - 1
    return 0, 2**bitwidth - 1


def bias_limits(bitwidth: int) -> tuple[int, int]:
    """Saturation of a bias on the joint (input x weight) grid: a signed 2b-bit integer.

    At 8 bits [-32768, 32767]: TIDL keeps biases in 16 bits ("bias-range clipping").
    """
    check_bitwidth(bitwidth)
    return -(2 ** (2 * bitwidth - 1)), 2 ** (2 * bitwidth - 1) - 1


@overload
def ceil2(x: Tensor) -> Tensor: ...
@overload
def ceil2(x: float) -> float: ...
def ceil2(x: Tensor | float) -> Tensor | float:
    """2 ** ceil(log2(max(x, 2**-16))), elementwise and exact for every float (frexp, not log2).

    A Python number gives a Python float (computed in float64); a tensor gives a tensor.
    """
    if not isinstance(x, Tensor):
        mantissa, exponent = math.frexp(max(float(x), MIN_CLIP))
        return math.ldexp(1.0, exponent - (mantissa == 0.5))
    x = torch.clamp(x, min=MIN_CLIP)
    mantissa, exponent = torch.frexp(x)
    # frexp gives x = m * 2^e with m in [0.5, 1): x is a power of two exactly when m == 0.5.
    exponent = exponent - (mantissa == 0.5).to(exponent.dtype)
    return torch.exp2(exponent.to(x.dtype))


def round_half_away(x: Tensor) -> Tensor:
    """Round to nearest, ties away from zero (weights and biases, as TI's reference does)."""
    # trunc(x + copysign(0.5, x)) equals sign(x) * floor(|x| + 0.5) bit for bit (IEEE addition
    # is symmetric in sign) with one temporary and three passes instead of two and five.
    return torch.copysign(x.new_full((), 0.5), x).add_(x).trunc_()


def round_half_up(x: Tensor) -> Tensor:
    """Round to nearest, ties towards +inf: floor(x + 0.5) (activations, as TIDL does)."""
    return torch.floor(x + 0.5)


def scaled_round(x: Tensor, scale: float, mode: str, out: bool = False) -> Tensor:
    """x * scale (a power of two, so exact) rounded as activation rounding `mode` rounds (the
    integer simulation's requantization shift); out: overwrite x instead of a new tensor."""
    scaled = x.mul_(scale) if out else x * scale
    if mode == HALF_UP:
        return scaled.add_(0.5).floor_()
    if mode == HALF_AWAY:
        return _round_half_away_(scaled)
    return scaled.round_()


HALF_UP = "half_up"
HALF_AWAY = "half_away"
HALF_EVEN = "half_even"
ACTIVATION_ROUNDINGS = (HALF_UP, HALF_AWAY, HALF_EVEN)
DEFAULT_ACTIVATION_ROUNDING = HALF_UP
"""How an activation is rounded onto its grid: floor(x + 0.5) (TI's PACT2 and the usual
fixed-point `(acc + 2^(s-1)) >> s`), half away from zero, or half to even (ONNX QuantizeLinear's
rule, the default of QDQ schemes). TIDL does not document its rule; this is the one assumption
about it, recorded in each exported graph, and the QAT forward and the integer simulation both
follow it (QuantizationConfig.activation_rounding switches it)."""


def check_activation_rounding(mode: str) -> str:
    """Return mode if it is one of ACTIVATION_ROUNDINGS, else raise QuantizationConfigError."""
    if mode not in ACTIVATION_ROUNDINGS:
        raise QuantizationConfigError(
            f"activation rounding {mode!r} is not one of {', '.join(ACTIVATION_ROUNDINGS)}"
        )
    return mode


def rounding_divide(
    num: Tensor, den: Tensor | int, mode: str = DEFAULT_ACTIVATION_ROUNDING
) -> Tensor:
    """Integers num / den (den > 0) rounded as `mode` rounds, exactly (average pooling)."""
    if mode == HALF_AWAY:
        magnitude = torch.div(2 * num.abs() + den, 2 * den, rounding_mode="floor")
        return torch.where(num < 0, -magnitude, magnitude)
    rounded = torch.div(2 * num + den, 2 * den, rounding_mode="floor")
    if mode == HALF_EVEN:
        tie = torch.remainder(2 * num + den, 2 * den) == 0
        rounded = rounded - (tie & (torch.remainder(rounded, 2) == 1)).to(rounded.dtype)
    return rounded


# Weights.


def weight_scale(w: Tensor, bitwidth: int = 8, per_channel: bool = False, axis: int = 0) -> Tensor:
    """Symmetric power-of-two scale 2^(b-1) / ceil2(max|w|), per tensor (0-d) or per channel.

    This is also TIDL's rule when it re-quantizes a float weight tensor on import.
    """
    check_bitwidth(bitwidth)
    w = w.detach()
    if per_channel:
        axis = axis % w.dim()
        shape = [1] * w.dim()
        shape[axis] = w.shape[axis]
        max_abs = _channel_max_abs(w, axis).reshape(shape)
    else:
        # aminmax reads the tensor once and allocates no |w| copy.
        low, high = torch.aminmax(w) if w.numel() else (w.new_zeros(()), w.new_zeros(()))
        max_abs = torch.maximum(-low, high)
    return float(2 ** (bitwidth - 1)) / ceil2(max_abs)


def weight_integers(w: Tensor, scale: Tensor, bitwidth: int = 8) -> Tensor:
    """The integer weights of w at a grid scale: round half away from zero, then saturate."""
    qmin, qmax = quant_limits(bitwidth, signed=True)
    return _round_half_away_(w * scale).clamp_(qmin, qmax)


def _round_half_away_(x: Tensor) -> Tensor:
    """round_half_away in place on a temporary the caller owns."""
    return x.add_(torch.copysign(x.new_full((), 0.5), x)).trunc_()


class _QuantizeWeight(torch.autograd.Function):
    """fq(W * s) / s and its grid scale; the gradient w.r.t. W is the identity (STE).

    With channel_scale s = None this is plain fq(W). With s (the BN folding scale, per output
    channel) d/dW [fq(W*s)/s] = 1 and d/ds = 0 under the straight-through estimator, so no
    weight-sized op runs in the backward. Multiplying by the exact power-of-two 1/scale equals
    dividing by it. s = 0 (gamma = 0) gives W*s = 0 and divides by 1 instead, keeping 0, not NaN.
    """

    @staticmethod
    def forward(
        ctx,
        weight: Tensor,
        channel_scale: Tensor | None,
        bitwidth: int,
        per_channel: bool,
        channel_shape: tuple[int, ...],
    ) -> tuple[Tensor, Tensor]:
        if channel_scale is None:
            scale = weight_scale(weight, bitwidth, per_channel).to(weight.dtype)
            quantized = weight_integers(weight, scale, bitwidth)
            ctx.mark_non_differentiable(scale)
            return quantized.mul_(1.0 / scale), scale
        channel_scale = channel_scale.reshape(channel_shape)
        scale = _rescaled_weight_scale(weight, channel_scale, bitwidth, per_channel)
        # W * (s * scale) equals (W * s) * scale exactly (scale is a power of two), so W * s is
        # never materialised; its max |.| comes from per-channel maxima of |W| the same way.
        quantized = weight_integers(weight, channel_scale * scale, bitwidth)
        inverse = 1.0 / (scale * torch.where(channel_scale == 0, 1.0, channel_scale))
        ctx.mark_non_differentiable(scale)
        return quantized.mul_(inverse), scale

    @staticmethod
    def backward(ctx, grad: Tensor, _grad_scale: Tensor):
        return grad, None, None, None, None


def _channel_max_abs(w: Tensor, axis: int = 0) -> Tensor:
    """max |w| per slice along axis (a 1-d tensor), with no |w| copy."""
    # amax and amin along a dim run several times faster than aminmax along it on CPU.
    flat = w.detach().movedim(axis, 0).flatten(1)
    return torch.maximum(torch.amax(flat, dim=1), -torch.amin(flat, dim=1))


def _rescaled_weight_scale(
    weight: Tensor, channel_scale: Tensor, bitwidth: int, per_channel: bool
) -> Tensor:
    """weight_scale(W * s) for a per-output-channel s, reading W once and allocating no copy.

    Rounding is monotonic, so max_i |fl(W_ci * s_c)| = fl(max_i |W_ci| * |s_c|) exactly.
    """
    check_bitwidth(bitwidth)
    channel_max = _channel_max_abs(weight) * channel_scale.detach().reshape(-1).abs()
    max_abs = channel_max.reshape(channel_scale.shape) if per_channel else torch.amax(channel_max)
    return float(2 ** (bitwidth - 1)) / ceil2(max_abs)


def quantize_weight_ste(
    weight: Tensor,
    bitwidth: int = 8,
    per_channel: bool = False,
    channel_scale: Tensor | None = None,
    channel_shape: tuple[int, ...] = (-1, 1, 1, 1),
) -> tuple[Tensor, Tensor]:
    """(fq(W * s) / s, grid scale) with a straight-through gradient; s = 1 when None.

    Per-channel scales run over axis 0 (output channels); channel_shape says how a per-channel
    vector broadcasts over the weight.
    """
    return _QuantizeWeight.apply(weight, channel_scale, bitwidth, per_channel, channel_shape)


def fake_quantize_weight(
    w: Tensor, bitwidth: int = 8, per_channel: bool = False, axis: int = 0
) -> Tensor:
    """Symmetric power-of-two fake quantization of weights with a straight-through gradient."""
    check_bitwidth(bitwidth)
    if per_channel and axis % w.dim() != 0:
        moved = w.movedim(axis, 0)
        return fake_quantize_weight(moved, bitwidth, True, 0).movedim(0, axis)
    shape = (-1,) + (1,) * (w.dim() - 1)
    quantized, _ = quantize_weight_ste(w, bitwidth, per_channel, None, shape)
    return quantized


def keep_scale_on_import(values: Tensor, scale: Tensor | float, bitwidth: int = 8) -> Tensor:
    """Grid values (integers / scale, per tensor) that TIDL re-quantizes at `scale` itself.

    TIDL re-derives a tensor's scale on import as 2^(b-1) / ceil2(max|v|). When the largest
    magnitude on the grid is exactly half the clip (k = +/-2^(b-2)), that is twice `scale`: a
    positive peak then clamps (2 * 64 = 128 -> 127) and a negative one keeps its value but halves
    the accumulator grid, and with it the bias grid and its limit. Moving those peak entries one
    unit in the last place away from zero (a relative 2^-23 in float32) makes ceil2 pick the
    original clip again, and the re-quantization rounds them back to k. Values already kept
    come back as they are (the same tensor).
    """
    scale = torch.as_tensor(scale, dtype=torch.float64)
    if values.numel() == 0 or bool(weight_scale(values, bitwidth).double() == scale):
        return values
    magnitude = values.abs()
    at_peak = magnitude == magnitude.amax()
    away = torch.copysign(values.new_full((), math.inf), values)
    return torch.where(at_peak, torch.nextafter(values, away), values)


# Biases.

BIAS_JOINT = "joint"
BIAS_TI_V1 = "ti_v1"
BIAS_RULES = (BIAS_JOINT, BIAS_TI_V1)
"""How the device holds a conv's bias on its accumulator (the joint grid of input scale x
weight scale); every part of edgezoo that computes a bias (QAT, deploy conversion, the export,
the integer simulation) follows the one rule a model was quantized with:

- "ti_v1": TI's v1 QAT rule (constrain_bias=SATURATE, its default): the bias is rounded to b bits
  on its own power-of-two scale (as a weight tensor is), then truncated onto the joint grid;
  where the joint grid is more than M times finer than the bias's own (M = 2^(b-1)-1 after a
  signed input, 2^b-1 after an unsigned one), the bias becomes a b-bit part times M: one more
  weight on a constant input at the input's largest integer.
- "joint": the bias rounded once onto the joint grid, saturated to a signed 2b-bit integer
  (the arithmetic of ONNX QDQ graphs' int32 biases).
"""


def check_bias_rule(rule: str) -> str:
    """Return rule if it is one of BIAS_RULES, else raise QuantizationConfigError."""
    if rule not in BIAS_RULES:
        raise QuantizationConfigError(f"bias rule {rule!r} is not one of {', '.join(BIAS_RULES)}")
    return rule


def bias_multiplier(bitwidth: int, input_signed: bool) -> int:
    """M of the ti_v1 rule: the largest integer of the layer's input grid at b bits."""
    return 2 ** (bitwidth - 1) - 1 if input_signed else 2**bitwidth - 1


def bias_integers(
    bias: Tensor,
    joint_scale: Tensor | float,
    bitwidth: int = 8,
    rule: str = BIAS_JOINT,
    input_signed: bool | Tensor = True,
) -> Tensor:
    """The integers the device adds to the accumulator for a float bias (float64, exact).

    joint_scale: input scale x weight scale (0-d, or per output channel). bitwidth: b of the
    bias rule (the model's widest tensor): the joint limit is a signed 2b-bit integer.
    """
    bias, joint = _bias_operands(bias, joint_scale, rule)
    low, high = bias_limits(bitwidth)
    if rule == BIAS_JOINT:
        return round_half_away(bias * joint).clamp_(low, high)
    own = weight_scale(bias, bitwidth).double()
    ratio = joint / own  # a power of two: steps * ratio is exact
    full = weight_integers(bias, own, bitwidth) * ratio
    return _parts_times_m(full.clamp(low, high), ratio, bitwidth, input_signed, torch.trunc(full))


def imported_bias_integers(
    bias: Tensor,
    joint_scale: Tensor | float,
    bitwidth: int = 8,
    rule: str = BIAS_JOINT,
    input_signed: bool | Tensor = True,
) -> Tensor:
    """The integers the device holds for an exported float bias (float64, exact).

    The export writes each bias as QAT's integers on the joint grid (as TI's v1 QAT code
    writes its constrained biases back), so the import reads it onto that grid (rounding half
    away, 2b-bit saturation); under ti_v1 the device keeps a b-bit part times M where the
    joint grid is more than M times finer than the bias's own b-bit grid. Both steps leave
    QAT's biases unchanged: imported_bias_integers(bias_integers(b) / joint) ==
    bias_integers(b) under either rule.
    """
    bias, joint = _bias_operands(bias, joint_scale, rule)
    integers = round_half_away(bias * joint).clamp_(*bias_limits(bitwidth))
    if rule == BIAS_JOINT:
        return integers
    ratio = joint / weight_scale(bias, bitwidth).double()
    return _parts_times_m(integers, ratio, bitwidth, input_signed, integers)


def _bias_operands(bias: Tensor, joint_scale: Tensor | float, rule: str) -> tuple[Tensor, Tensor]:
    """The bias and joint scale in float64 (every step of the bias rules is exact there)."""
    check_bias_rule(rule)
    bias = bias.detach().double()
    return bias, torch.as_tensor(joint_scale, dtype=torch.float64, device=bias.device)


def _parts_times_m(
    integers: Tensor, ratio: Tensor, bitwidth: int, input_signed: bool | Tensor, otherwise: Tensor
) -> Tensor:
    """ti_v1's split: where the joint grid is more than M times finer than the bias's own,
    trunc(integers / M) saturated to b bits, times M; elsewhere `otherwise`. input_signed may
    be a 0-d tensor, so a forward on an accelerator never waits for the host."""
    signed = torch.as_tensor(input_signed, device=integers.device)
    multiplier = torch.where(
        signed, float(bias_multiplier(bitwidth, True)), float(bias_multiplier(bitwidth, False))
    ).to(integers.dtype)
    qmin, qmax = quant_limits(bitwidth, signed=True)
    parts = torch.div(integers, multiplier, rounding_mode="trunc").clamp_(qmin, qmax)
    return torch.where(ratio > multiplier, parts * multiplier, otherwise)


class _StraightThroughBias(torch.autograd.Function):
    """integers(bias) / joint scale in the bias's dtype; identity gradient (STE)."""

    @staticmethod
    def forward(ctx, bias: Tensor, joint: Tensor, bitwidth: int, rule: str, signed: bool, integers):
        return (integers(bias, joint, bitwidth, rule, signed) / joint.double()).to(bias.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None, None, None, None, None


def fake_quantize_bias(
    b: Tensor,
    scale: Tensor,
    bitwidth: int = 8,
    rule: str = BIAS_JOINT,
    input_signed: bool | Tensor = True,
    imported: bool = False,
) -> Tensor:
    """QAT's bias under `rule` (bias_integers) as values on the joint grid (scale: input scale x
    weight scale); with imported, what the device adds for an exported bias b
    (imported_bias_integers). Straight-through gradient."""
    scale = torch.as_tensor(scale, device=b.device).detach()
    integers = imported_bias_integers if imported else bias_integers
    return _StraightThroughBias.apply(b, scale, bitwidth, rule, input_signed, integers)


def apply_outlier_constraint(w: Tensor) -> tuple[Tensor, Tensor | None]:
    """Clip outlier weights (TI's rule): returns (clipped weights, clip) or (w, None).

    If max|w| > 15 and max|w| > 16 * median|w|, the weights are clipped to
    +/-(120/128) * ceil2(min(max|w|, 16 * median|w|)), so one outlier no longer forces a
    coarse power-of-two grid on the whole tensor. The gradient is zero where w was clipped.
    """
    abs_w = torch.abs(w.detach())
    max_abs = torch.amax(abs_w)
    median_limit = OUTLIER_MEDIAN_FACTOR * torch.median(abs_w.flatten())
    if not bool((max_abs > OUTLIER_MIN_MAX) & (max_abs > median_limit)):
        return w, None
    clip = OUTLIER_CLIP_FACTOR * ceil2(torch.minimum(max_abs, median_limit))
    return torch.clamp(w, -clip, clip), clip


# Activations.


class ActivationGrid(NamedTuple):
    """An activation range's grid: value = integer / scale, integers in [low, high]."""

    scale: Tensor
    low: Tensor
    high: Tensor


def activation_grid(clip_min: Tensor, clip_max: Tensor, bitwidth: int) -> ActivationGrid:
    """The grid of a clip range: 2^(b-1)/c signed (clip_min < 0), 2^b/c unsigned, c = max|clip|.

    The integer bounds are the clip range's, cut to [-2^(b-1), 2^(b-1)-1] or [0, 2^b-1].
    """
    signed = clip_min < 0
    half_levels = float(2 ** (bitwidth - 1))
    levels = torch.where(signed, half_levels, 2.0 * half_levels)
    scale = levels / torch.clamp(torch.maximum(-clip_min, clip_max), min=MIN_CLIP)
    low = torch.maximum(clip_min * scale, torch.where(signed, -half_levels, 0.0))
    high = torch.minimum(clip_max * scale, levels - 1.0)
    return ActivationGrid(scale, low, high)


@lru_cache(maxsize=4096)
def _host_grid(clip_min: float, clip_max: float, bitwidth: int) -> tuple[float, float, float]:
    """activation_grid as host floats (float64, cached: a range's clip changes rarely)."""
    as_tensor = torch.tensor([clip_min, clip_max], dtype=torch.float64)
    scale, low, high = activation_grid(as_tensor[0], as_tensor[1], bitwidth)
    return float(scale), float(low), float(high)


def activation_scale(clips: Tensor, bitwidth: int) -> Tensor:
    """Grid scale of an activation range given as a (clip_min, clip_max) tensor."""
    clips = clips.detach()
    return activation_grid(clips[0], clips[1], bitwidth).scale


class _FakeQuantActivation(torch.autograd.Function):
    """Clamp and (optionally) quantize-dequantize; gradient 1 strictly inside the clip, else 0.

    On CPU the grid is read as host floats: scalar-bound kernels (clamp, and hardtanh_backward
    for the gradient) are several times faster there than tensor-bound ones. On accelerators the
    grid stays in 0-d device tensors so the forward never syncs. The arithmetic is the same on
    both paths: floor(clamp(x*s + 0.5, lo + 0.5, hi + 0.5)) / s.
    """

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        clip_min: Tensor | float,
        clip_max: Tensor | float,
        bitwidth: int,
        rounding: bool,
        host_scalars: bool,
        mode: str,
    ) -> Tensor:
        ctx.host_scalars = host_scalars
        if host_scalars:
            cmin, cmax = float(clip_min), float(clip_max)
            ctx.bounds = (cmin, cmax)
            ctx.save_for_backward(x)
            if not rounding:
                return torch.clamp(x, cmin, cmax)
            scale, low, high = _host_grid(cmin, cmax, bitwidth)
            if mode == HALF_AWAY:
                return round_half_away(x * scale).clamp_(low, high).mul_(1.0 / scale)
            if mode == HALF_EVEN:
                return torch.round(x * scale).clamp_(low, high).mul_(1.0 / scale)
            # 0.5 + scale * x in one pass; exact, as scale is a power of two.
            y = torch.add(x.new_full((), 0.5), x, alpha=scale)
            return y.clamp_(low + 0.5, high + 0.5).floor_().mul_(1.0 / scale)
        ctx.save_for_backward(x, clip_min, clip_max)
        if not rounding:
            return torch.clamp(x, clip_min, clip_max)
        scale, low, high = activation_grid(clip_min, clip_max, bitwidth)
        if mode in (HALF_AWAY, HALF_EVEN):
            rounder = round_half_away if mode == HALF_AWAY else torch.round
            rounded = torch.clamp(rounder(x * scale), low, high)
            return rounded.mul_(torch.reciprocal(scale))
        y = torch.addcmul(x.new_full((), 0.5), x, scale)
        return y.clamp_(low + 0.5, high + 0.5).floor_().mul_(torch.reciprocal(scale))

    @staticmethod
    def backward(ctx, grad: Tensor):
        if ctx.host_scalars:
            (x,) = ctx.saved_tensors
            grad_x = torch.ops.aten.hardtanh_backward(grad, x, *ctx.bounds)
        else:
            x, clip_min, clip_max = ctx.saved_tensors
            grad_x = torch.where((x > clip_min) & (x < clip_max), grad, 0.0)
        return grad_x, None, None, None, None, None, None


def fake_quantize_activation(
    x: Tensor,
    clip_min: Tensor | float,
    clip_max: Tensor | float,
    bitwidth: int = 8,
    rounding: bool = True,
    mode: str = DEFAULT_ACTIVATION_ROUNDING,
) -> Tensor:
    """Clamp x to [clip_min, clip_max] and, if rounding, snap it to the power-of-two grid.

    Signed (clip_min < 0): scale 2^(b-1)/c with c = max(-clip_min, clip_max), integers in
    [-2^(b-1), 2^(b-1)-1]; unsigned: scale 2^b/clip_max, integers in [0, 2^b-1]. Rounding is
    floor(x*scale + 0.5) (mode "half_up"), half away from zero ("half_away") or half to even
    ("half_even"). The gradient is
    1 strictly inside (clip_min, clip_max), 0 outside.
    """
    return _fake_quantize_activation(x, clip_min, clip_max, bitwidth, rounding, None, mode)


def _fake_quantize_activation(
    x: Tensor,
    clip_min: Tensor | float,
    clip_max: Tensor | float,
    bitwidth: int,
    rounding: bool,
    host_scalars: bool | None,
    mode: str = DEFAULT_ACTIVATION_ROUNDING,
) -> Tensor:
    """fake_quantize_activation with the host-scalar path forced on or off (None: by device)."""
    check_bitwidth(bitwidth)
    if host_scalars is None:
        host_scalars = x.device.type == "cpu"
    compute_dtype = torch.float32 if x.dtype in _LOW_PRECISION else x.dtype
    if host_scalars:
        clip_min, clip_max = float(clip_min), float(clip_max)
    else:
        clip_min = torch.as_tensor(clip_min, device=x.device).to(compute_dtype)
        clip_max = torch.as_tensor(clip_max, device=x.device).to(compute_dtype)
    y = _FakeQuantActivation.apply(
        x.to(compute_dtype), clip_min, clip_max, bitwidth, rounding, host_scalars, mode
    )
    return y.to(x.dtype)
