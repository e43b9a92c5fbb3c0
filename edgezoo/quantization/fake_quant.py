"""Power-of-two fake quantization: the one place that defines edgezoo's quantization grid.

Every function here is a pure function of tensors (no module state), so the QAT wrappers, the
calibration path and the deploy conversion all quantize identically. Scales are powers of two
(TIDL's fixed-point shifts), weights round half away from zero, activations round half up
(floor(x + 0.5)), and gradients pass straight through (STE) inside the clip range.
"""

from __future__ import annotations

import torch
from torch import Tensor

from edgezoo.errors import QuantizationConfigError

__all__ = [
    "MAX_BITWIDTH",
    "MIN_BITWIDTH",
    "MIN_CLIP",
    "apply_outlier_constraint",
    "ceil2",
    "check_bitwidth",
    "fake_quantize_activation",
    "fake_quantize_bias",
    "fake_quantize_weight",
    "quant_limits",
    "round_half_away",
    "round_half_up",
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


def ceil2(x: Tensor) -> Tensor:
    """Elementwise 2 ** ceil(log2(max(x, 2**-16))), exact for every float (frexp, not log2)."""
    x = torch.clamp(x, min=MIN_CLIP)
    mantissa, exponent = torch.frexp(x)
    # frexp gives x = m * 2^e with m in [0.5, 1): x is a power of two exactly when m == 0.5.
    exponent = exponent - (mantissa == 0.5).to(exponent.dtype)
    return torch.exp2(exponent.to(x.dtype))


def round_half_away(x: Tensor) -> Tensor:
    """Round to nearest, ties away from zero (weights and biases, as TI's reference does)."""
    # sign(x) * floor(|x| + 0.5), in place on the fresh |x|: on a 2.4M-element ResNet layer
    # the temporaries cost more than the arithmetic.
    sign = torch.sign(x)
    return torch.abs(x).add_(0.5).floor_().mul_(sign)


def round_half_up(x: Tensor) -> Tensor:
    """Round to nearest, ties towards +inf: floor(x + 0.5) (activations, as TIDL does)."""
    return torch.floor(x + 0.5)


def weight_scale(w: Tensor, bitwidth: int = 8, per_channel: bool = False, axis: int = 0) -> Tensor:
    """Symmetric power-of-two scale 2^(b-1) / ceil2(max|w|), per tensor (0-d) or per channel."""
    check_bitwidth(bitwidth)
    w = w.detach()
    if per_channel:
        axis = axis % w.dim()
        reduce_dims = [d for d in range(w.dim()) if d != axis]
        max_abs = torch.amax(torch.abs(w), dim=reduce_dims, keepdim=True)
    else:
        max_abs = torch.amax(torch.abs(w))
    return float(2 ** (bitwidth - 1)) / ceil2(max_abs)


class _StraightThroughWeight(torch.autograd.Function):
    """Quantize-dequantize on the forward pass, identity gradient on the backward pass."""

    @staticmethod
    def forward(ctx, w: Tensor, scale: Tensor, qmin: float, qmax: float) -> Tensor:
        q = round_half_away(w * scale).clamp_(qmin, qmax)
        return q.div_(scale)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None, None, None


def fake_quantize_weight(
    w: Tensor, bitwidth: int = 8, per_channel: bool = False, axis: int = 0
) -> Tensor:
    """Symmetric power-of-two fake quantization of weights with a straight-through gradient."""
    scale = weight_scale(w, bitwidth, per_channel, axis).to(w.dtype)
    qmin, qmax = quant_limits(bitwidth, signed=True)
    return _StraightThroughWeight.apply(w, scale, float(qmin), float(qmax))


def fake_quantize_bias(b: Tensor, scale: Tensor, bitwidth: int = 8) -> Tensor:
    """Bias on the joint grid (input scale x weight scale), saturated to +/-2^(2b-1); STE."""
    check_bitwidth(bitwidth)
    limit = float(2 ** (2 * bitwidth - 1))
    scale = torch.as_tensor(scale, dtype=b.dtype, device=b.device).detach()
    return _StraightThroughWeight.apply(b, scale, -limit, limit)


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


def _activation_grid(clip_min: float, clip_max: float, bitwidth: int) -> tuple[float, float, float]:
    """(scale, lowest integer, highest integer) of the activation grid, from host floats."""
    signed = clip_min < 0
    levels = float(2 ** (bitwidth - 1)) if signed else float(2**bitwidth)
    scale = levels / max(-clip_min, clip_max, MIN_CLIP)
    lo = max(clip_min * scale, -levels if signed else 0.0)
    hi = min(clip_max * scale, levels - 1.0)
    return scale, lo, hi


def _activation_grid_tensors(
    clip_min: Tensor, clip_max: Tensor, bitwidth: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Same as _activation_grid, as 0-d tensors on the clips' device (no host sync)."""
    signed = clip_min < 0
    half_levels = float(2 ** (bitwidth - 1))
    levels = torch.where(signed, half_levels, 2.0 * half_levels)
    scale = levels / torch.clamp(torch.maximum(-clip_min, clip_max), min=MIN_CLIP)
    lo = torch.maximum(clip_min * scale, torch.where(signed, -half_levels, 0.0))
    hi = torch.minimum(clip_max * scale, levels - 1.0)
    return scale, lo, hi


class _FakeQuantActivation(torch.autograd.Function):
    """Clamp and (optionally) quantize-dequantize; gradient 1 strictly inside the clip, else 0.

    On CPU the clip values are read as host floats: scalar-bound kernels (clamp, and
    hardtanh_backward for the gradient) are several times faster there than tensor-bound ones.
    On accelerators the grid stays in 0-d device tensors so the forward never syncs.
    The arithmetic is the same on both paths: floor(clamp(x*s + 0.5, lo + 0.5, hi + 0.5)) / s.
    """

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        clip_min: Tensor,
        clip_max: Tensor,
        bitwidth: int,
        rounding: bool,
        host_scalars: bool,
    ) -> Tensor:
        ctx.host_scalars = host_scalars
        if host_scalars:
            cmin, cmax = float(clip_min), float(clip_max)
            ctx.bounds = (cmin, cmax)
            ctx.save_for_backward(x)
            if not rounding:
                return torch.clamp(x, cmin, cmax)
            scale, lo, hi = _activation_grid(cmin, cmax, bitwidth)
            y = torch.mul(x, scale)
            return y.add_(0.5).clamp_(lo + 0.5, hi + 0.5).floor_().mul_(1.0 / scale)
        ctx.save_for_backward(x, clip_min, clip_max)
        if not rounding:
            return torch.clamp(x, clip_min, clip_max)
        scale, lo, hi = _activation_grid_tensors(clip_min, clip_max, bitwidth)
        y = torch.mul(x, scale)
        return y.add_(0.5).clamp_(lo + 0.5, hi + 0.5).floor_().mul_(torch.reciprocal(scale))

    @staticmethod
    def backward(ctx, grad: Tensor):
        if ctx.host_scalars:
            (x,) = ctx.saved_tensors
            grad_x = torch.ops.aten.hardtanh_backward(grad, x, *ctx.bounds)
        else:
            x, clip_min, clip_max = ctx.saved_tensors
            grad_x = torch.where((x > clip_min) & (x < clip_max), grad, 0.0)
        return grad_x, None, None, None, None, None


def fake_quantize_activation(
    x: Tensor,
    clip_min: Tensor | float,
    clip_max: Tensor | float,
    bitwidth: int = 8,
    rounding: bool = True,
) -> Tensor:
    """Clamp x to [clip_min, clip_max] and, if rounding, snap it to the power-of-two grid.

    Signed (clip_min < 0): scale 2^(b-1)/c with c = max(-clip_min, clip_max), integers in
    [-2^(b-1), 2^(b-1)-1]; unsigned: scale 2^b/clip_max, integers in [0, 2^b-1]. Rounding is
    floor(x*scale + 0.5). The gradient is 1 strictly inside (clip_min, clip_max), 0 outside.
    """
    return _fake_quantize_activation(x, clip_min, clip_max, bitwidth, rounding, None)


def _fake_quantize_activation(
    x: Tensor,
    clip_min: Tensor | float,
    clip_max: Tensor | float,
    bitwidth: int,
    rounding: bool,
    host_scalars: bool | None,
) -> Tensor:
    """fake_quantize_activation with the host-scalar path forced on or off (None: by device)."""
    check_bitwidth(bitwidth)
    if host_scalars is None:
        host_scalars = x.device.type == "cpu"
    compute_dtype = torch.float32 if x.dtype in _LOW_PRECISION else x.dtype
    clip_min = torch.as_tensor(clip_min, device=x.device).to(compute_dtype)
    clip_max = torch.as_tensor(clip_max, device=x.device).to(compute_dtype)
    y = _FakeQuantActivation.apply(
        x.to(compute_dtype), clip_min, clip_max, bitwidth, rounding, host_scalars
    )
    return y.to(x.dtype)
