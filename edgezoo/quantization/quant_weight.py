"""Conv2d and Linear with BN folding and power-of-two weight quantization: one conv per forward.

Folding (TI's, from BN running statistics): s = gamma / sqrt(running_var + eps) per output
channel, W' = W * s, b' = (b - running_mean) * s + beta.

The forward costs one convolution, in either of two forms (Krishnamoorthi 2018, torch.ao's
ConvBn QAT):
- folded (eval, BN frozen, or no BN): conv(x, fq(W'), fq_bias(b')), the exact arithmetic the
  deployed network runs; the paired BatchNorm passes its input through.
- batch statistics (training with an unfrozen BN): conv(x, fq(W * s) / s, b), then the paired
  BatchNorm normalises with batch statistics and updates its running statistics. Dividing the
  quantized weight (not the output) by s is exact in real arithmetic since s is per output
  channel, and it costs a weight-sized op instead of an activation-sized one.

fq is per-tensor symmetric power-of-two fake quantization (per channel for depthwise convs when
asked), with a straight-through gradient; the bias goes on the joint grid of the input range's
scale times the weight scale. The outlier constraint clips W' once, in place on W, at the first
training forward.
"""

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgezoo.quantization.fake_quant import (
    MIN_CLIP,
    apply_outlier_constraint,
    ceil2,
    check_bitwidth,
    fake_quantize_bias,
    quant_limits,
    round_half_away,
    weight_scale,
)
from edgezoo.quantization.range_io import RangeIOMixin

logger = logging.getLogger(__name__)


def bn_scale(bn: nn.modules.batchnorm._BatchNorm) -> Tensor:
    """Per-channel folding scale s = gamma / sqrt(running_var + eps) (gamma = 1 without affine)."""
    std = torch.sqrt(bn.running_var + bn.eps)
    return 1.0 / std if bn.weight is None else bn.weight / std


def bn_folded_bias(
    bn: nn.modules.batchnorm._BatchNorm, bias: Tensor | None, scale: Tensor
) -> Tensor:
    """Per-channel folded bias b' = (b - running_mean) * s + beta (b = 0 without a bias)."""
    centred = -bn.running_mean if bias is None else bias - bn.running_mean
    shifted = centred * scale
    return shifted if bn.bias is None else shifted + bn.bias


def activation_scale(clips: Tensor, bitwidth: int) -> Tensor:
    """Grid scale of an activation range: 2^(b-1)/c signed, 2^b/c unsigned (c = max |clip|)."""
    clip_min, clip_max = clips[0].detach(), clips[1].detach()
    clip = torch.clamp(torch.maximum(-clip_min, clip_max), min=MIN_CLIP)
    levels = torch.where(clip_min < 0, 2.0 ** (bitwidth - 1), 2.0**bitwidth)
    return levels / clip


def _grid_scale(weight: Tensor, bitwidth: int, per_channel: bool) -> Tensor:
    """weight_scale(weight) with the per-tensor max taken in one pass (aminmax, no abs copy)."""
    if per_channel:
        return weight_scale(weight, bitwidth, per_channel=True).to(weight.dtype)
    low, high = torch.aminmax(weight.detach())
    return float(2 ** (bitwidth - 1)) / ceil2(torch.maximum(-low, high))


class _FakeQuantWeight(torch.autograd.Function):
    """fake_quantize_weight with the grid scale as a second output, optionally rescaled.

    With channel_scale s it returns fq(W * s) / s for the batch-statistics form; its gradient
    w.r.t. W is the identity (straight through: d/dW [fq(W*s)/s] = 1, and d/ds = 0, so no
    weight-sized op runs in the backward). Values equal edgezoo.quantization.fake_quant's
    fake_quantize_weight bit for bit (same scale, round_half_away and clamp; multiplying by
    the exact power-of-two 1/scale instead of dividing), with fewer weight-sized passes and
    temporaries.
    s = 0 (gamma = 0) gives W*s = 0 and divides by 1 instead, keeping the weight 0, not NaN.
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
            scale = _grid_scale(weight, bitwidth, per_channel)
            scaled = weight * scale
        else:
            channel_scale = channel_scale.reshape(channel_shape)
            scaled = weight * channel_scale  # a temporary: scaled in place below
            scale = _grid_scale(scaled, bitwidth, per_channel)
            scaled.mul_(scale)
        qmin, qmax = quant_limits(bitwidth, signed=True)
        quantized = round_half_away(scaled).clamp_(qmin, qmax)
        if channel_scale is None:
            inverse = 1.0 / scale
        else:
            inverse = 1.0 / (scale * torch.where(channel_scale == 0, 1.0, channel_scale))
        ctx.mark_non_differentiable(scale)
        return quantized.mul_(inverse), scale

    @staticmethod
    def backward(ctx, grad: Tensor, _grad_scale: Tensor):
        return grad, None, None, None, None


class QuantWeightMixin(RangeIOMixin):
    """Shared QAT logic of weight layers.

    Subclasses supply `_build_like(layer, **kwargs)` (an empty layer of the same geometry),
    `_layer_op(x, weight, bias)` (the one conv or matmul), `_channel_shape` (how a
    per-output-channel vector broadcasts over the weight) and `_channel_dim` (the output's
    channel axis). `output_observer`, when set, receives the layer's output before any range
    (bias calibration and layer_report use it).
    """

    weight: nn.Parameter
    bias: nn.Parameter | None
    _channel_shape: tuple[int, ...]

    def __init__(
        self,
        *args,
        bitwidth: int = 8,
        per_channel: bool = False,
        bias_bitwidth: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.bitwidth = check_bitwidth(bitwidth)
        # The bias grid holds 2*b-1 bits; b is the model's widest tensor (8 -> +/-32768).
        self.bias_bitwidth = check_bitwidth(bias_bitwidth or bitwidth)
        self.per_channel = per_channel
        self.quantize_weights = True
        self.outlier_check_pending = True
        # Set only for the duration of a calibration or diagnostic pass (never in training).
        self.output_observer: Callable[[Tensor], None] | None = None
        # References to sibling modules, held in tuples so they are not registered as children
        # (that would duplicate their state_dict keys under this layer's name).
        self._paired_bn: tuple[nn.Module, ...] = ()
        self._input_range: tuple[nn.Module, ...] = ()
        self._output_range: tuple[nn.Module, ...] = ()
        self._init_range_io()

    @classmethod
    def from_float(
        cls,
        layer: nn.Module,
        bitwidth: int = 8,
        per_channel: bool = False,
        bias_bitwidth: int | None = None,
    ):
        """A QAT layer sharing layer's parameter tensors, so its state_dict keys are unchanged."""
        quant = cls._build_like(
            layer,
            bitwidth=bitwidth,
            per_channel=per_channel,
            bias_bitwidth=bias_bitwidth,
            device="meta",
        )
        for name, param in layer.named_parameters(recurse=False):
            setattr(quant, name, param)
        quant.train(layer.training)
        return quant

    @property
    def paired_bn(self) -> nn.Module | None:
        """The BatchNorm folded into this layer, or None."""
        return self._paired_bn[0] if self._paired_bn else None

    @property
    def input_range(self) -> nn.Module | None:
        """The PACT2 whose grid this layer's input lies on (sets the bias scale), or None."""
        return self._input_range[0] if self._input_range else None

    @property
    def output_range(self) -> nn.Module | None:
        """The PACT2 that clips this layer's (BN-folded) output, or None."""
        return self._output_range[0] if self._output_range else None

    def pair_with(
        self,
        bn: nn.Module | None,
        input_range: nn.Module | None,
        output_range: nn.Module | None = None,
    ) -> None:
        """Record the folded BatchNorm and the input and output ranges (quantization setup)."""
        self._paired_bn = () if bn is None else (bn,)
        self._input_range = () if input_range is None else (input_range,)
        self._output_range = () if output_range is None else (output_range,)
        if bn is not None:
            bn.folded_into_conv = True

    def folded_weight_bias(self) -> tuple[Tensor, Tensor | None]:
        """Float W' = W*s and b' = (b - mean)*s + beta from the BN's running statistics."""
        bn = self.paired_bn
        if bn is None:
            return self.weight, self.bias
        scale = bn_scale(bn)
        weight = self.weight * scale.reshape(self._channel_shape)
        return weight, bn_folded_bias(bn, self.bias, scale)

    def quantized_weight_bias(self) -> tuple[Tensor, Tensor | None]:
        """Folded weights on the power-of-two grid and bias on the joint (input x weight) grid."""
        weight, bias = self.folded_weight_bias()
        if not self.quantize_weights:
            return weight, bias
        quant_weight, scale = _FakeQuantWeight.apply(
            weight, None, self.bitwidth, self.per_channel, self._channel_shape
        )
        input_range = self.input_range
        if bias is not None and input_range is not None:
            joint_scale = activation_scale(input_range.clips_act, input_range.bitwidth) * scale
            bias = fake_quantize_bias(bias, joint_scale.reshape(-1), self.bias_bitwidth)
        return quant_weight, bias

    @torch.no_grad()
    def constrain_outliers(self) -> None:
        """Apply TI's outlier constraint to the folded weights, writing the result back to W."""
        self.outlier_check_pending = False
        folded, _ = self.folded_weight_bias()
        clipped, clip = apply_outlier_constraint(folded)
        if clip is None:
            return
        bn = self.paired_bn
        if bn is None:
            self.weight.copy_(clipped)
        else:
            scale = bn_scale(bn).reshape(self._channel_shape)
            self.weight.copy_(torch.where(clipped != folded, clipped / scale, self.weight))
        logger.info(
            "%s: outlier constraint clipped folded weights to +/-%g",
            type(self).__name__,
            float(clip),
        )

    def _forward_batch_statistics(self, x: Tensor, bn: nn.Module) -> Tensor:
        weight = self.weight
        if self.quantize_weights:
            weight, _ = _FakeQuantWeight.apply(
                weight, bn_scale(bn), self.bitwidth, self.per_channel, self._channel_shape
            )
        return self._layer_op(x, weight, self.bias)

    def calibration_bias(self) -> nn.Parameter | None:
        """The parameter that shifts this layer's folded bias: the BN's beta, else the bias."""
        bn = self.paired_bn
        if bn is not None:
            return bn.bias
        return self.bias

    def channel_mean(self, y: Tensor) -> Tensor:
        """Per-output-channel mean of an output of this layer."""
        channel_dim = self._channel_dim % y.dim()
        return y.mean(dim=[d for d in range(y.dim()) if d != channel_dim])

    def forward(self, x: Tensor) -> Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        if self.training and self.outlier_check_pending:
            self.constrain_outliers()
        bn = self.paired_bn
        if bn is not None and bn.uses_batch_statistics:
            y = self._forward_batch_statistics(x, bn)
        else:
            y = self._layer_op(x, *self.quantized_weight_bias())
        if self.output_observer is not None:
            self.output_observer(y.detach())
        if self.output_quant is not None:
            y = self.output_quant(y)
        return y

    def extra_repr(self) -> str:
        per_channel = ", per_channel=True" if self.per_channel else ""
        folded = ", bn_folded=True" if self._paired_bn else ""
        return f"{super().extra_repr()}, bitwidth={self.bitwidth}{per_channel}{folded}"


def conv2d_like(layer: nn.Conv2d, cls: type[nn.Conv2d] = nn.Conv2d, **kwargs) -> nn.Conv2d:
    """An empty cls with layer's geometry; kwargs (bias, device, ...) override or add options.

    One list of Conv2d's constructor arguments, for wrapping a conv and for deploying one.
    """
    options = {
        "stride": layer.stride,
        "padding": layer.padding,
        "dilation": layer.dilation,
        "groups": layer.groups,
        "bias": layer.bias is not None,
        "padding_mode": layer.padding_mode,
    }
    return cls(layer.in_channels, layer.out_channels, layer.kernel_size, **{**options, **kwargs})


class QuantConv2d(QuantWeightMixin, nn.Conv2d):
    """Conv2d with on-the-fly BN folding and power-of-two fake-quantized weights and bias."""

    _channel_shape = (-1, 1, 1, 1)
    _channel_dim = 1

    @classmethod
    def _build_like(cls, layer: nn.Conv2d, **kwargs):
        return conv2d_like(layer, cls, **kwargs)

    def _layer_op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return self._conv_forward(x, weight, bias)


class QuantLinear(QuantWeightMixin, nn.Linear):
    """Linear with power-of-two fake-quantized weights and a bias on the joint grid."""

    _channel_shape = (-1, 1)
    _channel_dim = -1

    @classmethod
    def _build_like(cls, layer: nn.Linear, **kwargs):
        return cls(layer.in_features, layer.out_features, bias=layer.bias is not None, **kwargs)

    def _layer_op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)


def is_depthwise(conv: nn.Conv2d) -> bool:
    """A conv with one group per input channel (and more than one channel)."""
    return conv.groups > 1 and conv.groups == conv.in_channels
