"""QuantConv2d and QuantLinear: a weight layer, its folded BatchNorm and its ranges, as one unit.

The unit takes the slot of the conv (or linear) it replaces and holds everything it computes as
real children: `bn` (the BatchNorm it folds, whose slot becomes an nn.Identity), `input_quant`
(the range it applies to its input, only where nothing before quantizes that input, e.g. the
model input) and `output_quant` (the range of its output, where no activation follows). It also
reads `input_grid`, the range that quantized its input (input_grid.py), for the bias grid.

Folding (TI's, from BN running statistics): s = gamma / sqrt(running_var + eps) per output
channel, W' = W * s, b' = (b - running_mean) * s + beta. The forward costs one convolution, in
either of two forms (Krishnamoorthi 2018, torch.ao's ConvBn QAT):
- folded (eval, BN frozen, or no BN): conv(x, fq(W'), fq_bias(b')), the exact arithmetic the
  deployed network runs;
- batch statistics (training with an unfrozen BN): bn(conv(x, fq(W * s) / s, b)), the BN
  normalising with batch statistics and updating its running statistics. Dividing the quantized
  weight (not the output) by s is exact in real arithmetic since s is per output channel, and
  costs a weight-sized op instead of an activation-sized one.

fq is per-tensor symmetric power-of-two fake quantization (per channel for depthwise convs when
asked) with a straight-through gradient; the bias goes on the joint grid of the input's scale
times the weight scale. The outlier constraint clips W' once, in place on W, at the first
training forward.

State-dict keys stay those of the float model: the folded BN's entries (and the output range of
a conv that folds a BN) are saved under the BN's own name, as they were before folding.
"""

import logging
from functools import partial
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgezoo.quantization.batch_norm import QUANT_BATCH_NORMS, QuantBatchNorm2d
from edgezoo.quantization.exact import exact_conv2d
from edgezoo.quantization.grid import (
    BIAS_JOINT,
    BIAS_RULES,
    apply_outlier_constraint,
    check_bias_rule,
    check_bitwidth,
    fake_quantize_bias,
    keep_scale_on_import,
    quantize_weight_ste,
)
from edgezoo.quantization.input_grid import InputGridMixin
from edgezoo.quantization.pact2 import PACT2
from edgezoo.quantization.saved_flags import SavedFlagsMixin

logger = logging.getLogger(__name__)

__all__ = [
    "QuantConv2d",
    "QuantLinear",
    "QuantWeightMixin",
    "bn_folded_bias",
    "bn_scale",
    "conv2d_like",
    "is_depthwise",
    "load_folded_bn_under_its_name",
]


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


class QuantWeightMixin(InputGridMixin, SavedFlagsMixin):
    """Shared QAT logic of weight layers (mixed into an nn.Conv2d or nn.Linear subclass).

    Subclasses supply `_build_like(layer, **kwargs)` (an empty layer of the same geometry),
    `_layer_op(x, weight, bias)` (the one conv or matmul), `_channel_shape` (how a
    per-output-channel vector broadcasts over the weight) and `_channel_dim` (the output's
    channel axis). `quantize_weights` (off only inside the float reference of calibration and
    layer_report), `outlier_check_pending`, the bias rule (an index into grid.BIAS_RULES) and
    whether weights are per-channel are saved with the model.
    """

    FLAGS = (
        "quantize_weights",
        "outlier_check_pending",
        "bias_rule_index",
        "per_channel",
        "bitwidth",
        "bias_bitwidth",
    )
    SCHEME_FLAGS: ClassVar[dict[str, str]] = {
        "per_channel": "QuantizationConfig(per_channel_weights=...) with its target "
        "(--per-channel-weights --target ...)",
        "bitwidth": "QuantizationConfig(bitwidth_weights=..., layer_bits=...) as it was trained "
        "(CLI: --layer-bits)",
        "bias_bitwidth": "QuantizationConfig(bitwidth_*=..., layer_bits=...) as it was trained "
        "(CLI: --layer-bits)",
        "bias_rule_index": "QuantizationConfig(bias_rule=...) as it was trained (CLI: "
        "--bias-rule; the default is ti_v1 for TDA4VM Clip graphs, joint for QDQ)",
    }
    FLAG_NAMES: ClassVar[dict[str, tuple[str, ...]]] = {"bias_rule_index": BIAS_RULES}
    weight: nn.Parameter
    bias: nn.Parameter | None
    bn: QuantBatchNorm2d | None
    input_quant: PACT2 | None
    output_quant: PACT2 | None
    input_grid: PACT2 | None
    _channel_shape: tuple[int, ...]
    _channel_dim: int

    @classmethod
    def from_float(
        cls,
        layer: nn.Module,
        bitwidth: int = 8,
        per_channel: bool = False,
        bias_bitwidth: int | None = None,
        *,
        bias_rule: str = BIAS_JOINT,
        bn: tuple[str, nn.modules.batchnorm._BatchNorm] | None = None,
        input_quant: PACT2 | None = None,
        output_quant: PACT2 | None = None,
        input_grid: PACT2 | None = None,
    ):
        """The unit for `layer`, sharing its parameter tensors (same state_dict keys).

        bias_rule: how the device holds the bias (grid.BIAS_RULES). bn: (its attribute name
        beside the layer, the BatchNorm) to fold; that name is where its
        entries stay in the state_dict. input_grid: the range that quantized the layer's input
        (input_quant, when given, is that range).
        """
        quant = cls._build_like(layer, device="meta")
        for name, param in layer.named_parameters(recurse=False):
            setattr(quant, name, param)
        quant.bitwidth = check_bitwidth(bitwidth)
        # The bias grid holds 2*b-1 bits; b is the model's widest tensor (8 -> +/-32768).
        quant.bias_bitwidth = check_bitwidth(bias_bitwidth or bitwidth)
        quant.per_channel = per_channel
        quant.bias_rule_index = BIAS_RULES.index(check_bias_rule(bias_rule))
        quant.quantize_weights = True
        quant.outlier_check_pending = True
        quant.input_quant = input_quant
        quant.bn_slot = None if bn is None else bn[0]
        quant.bn = None if bn is None else QUANT_BATCH_NORMS[type(bn[1])].from_float(bn[1])
        quant.output_quant = output_quant
        quant._attach_input_grid(None if input_quant is not None else input_grid)
        quant._init_saved_flags()
        if bn is not None:
            quant.register_state_dict_post_hook(_save_under_bn_name)
        quant.train(layer.training)
        return quant

    @property
    def bias_input_range(self) -> PACT2 | None:
        """The range whose grid this layer's input lies on (it sets the bias grid), or None."""
        return self.input_quant if self.input_quant is not None else self.input_grid

    def folded_weight_bias(self) -> tuple[Tensor, Tensor | None]:
        """Float W' = W*s and b' = (b - mean)*s + beta from the BN's running statistics."""
        if self.bn is None:
            return self.weight, self.bias
        scale = bn_scale(self.bn)
        weight = self.weight * scale.reshape(self._channel_shape)
        return weight, bn_folded_bias(self.bn, self.bias, scale)

    @property
    def bias_rule(self) -> str:
        """How the device holds this layer's bias (grid.BIAS_RULES)."""
        return BIAS_RULES[self.bias_rule_index]

    def quantized_weight_bias(
        self, bias_dtype: torch.dtype | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Folded weights on the power-of-two grid and the bias the device adds (on the joint,
        input x weight, grid, under the layer's bias rule).

        bias_dtype: also give the bias in this precision, as the device imports it: the exported
        float32 bias read back onto its grid (float64 holds every 2b-bit integer exactly, where
        float32 rounds 16-bit biases above 2^24 and the saturation 2^31 - 1 to 2^31).
        """
        weight, bias, _, joint_scale = self._quantized_parts()
        if joint_scale is None:
            return weight, bias
        rule_args = (self.bias_bitwidth, *self._bias_rule_args())
        bias = fake_quantize_bias(bias, joint_scale, *rule_args)
        if bias_dtype is not None:
            bias = fake_quantize_bias(bias.to(bias_dtype), joint_scale, *rule_args, imported=True)
        return weight, bias

    def deployed_weight_bias(self) -> tuple[Tensor, Tensor | None]:
        """The float weights and bias an export writes: TIDL's import of them (per-tensor
        weight scales re-derived from max|w|, grid.imported_bias_integers for the bias) gives
        back exactly what quantized_weight_bias computes."""
        weight, bias, scale, joint_scale = self._quantized_parts()
        if joint_scale is not None:
            bias = fake_quantize_bias(
                bias, joint_scale, self.bias_bitwidth, *self._bias_rule_args()
            )
        if scale is not None and not self.per_channel:
            weight = keep_scale_on_import(weight.detach(), scale, self.bitwidth)
        return weight, bias

    def _quantized_parts(self) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
        """(grid weights, float folded bias, weight scale, joint scale); the scales are None
        where weights are not quantized, the joint scale also where the bias has no grid."""
        weight, bias = self.folded_weight_bias()
        if not self.quantize_weights:
            return weight, bias, None, None
        quant_weight, scale = quantize_weight_ste(
            weight, self.bitwidth, self.per_channel, None, self._channel_shape
        )
        input_range = self.bias_input_range
        if bias is None or input_range is None:
            return quant_weight, bias, scale, None
        joint_scale = input_range.grid_scale().to(scale.dtype) * scale
        return quant_weight, bias, scale, joint_scale.reshape(-1)

    def _bias_rule_args(self) -> tuple[str, Tensor]:
        """(rule, whether the input grid is signed, a 0-d tensor read without a host sync)."""
        return self.bias_rule, self.bias_input_range.clips_act[0] < 0

    def enable_weight_quantization(self, enabled: bool = True) -> None:
        """Quantize the folded weights onto the grid (False: use them in float, as the float
        reference of calibration does)."""
        self.quantize_weights = enabled

    @torch.no_grad()
    def write_back_quantized_weights(self) -> None:
        """Replace the float weights by the quantized ones (TI's v1 does this once, at the
        first QAT iteration): W <- fq(W * s) / s, so QAT starts from weights on the grid."""
        if self.per_channel or not self.quantize_weights:
            return
        scale = None if self.bn is None else bn_scale(self.bn)
        weight, _ = quantize_weight_ste(
            self.weight, self.bitwidth, False, scale, self._channel_shape
        )
        self.weight.copy_(weight)

    @torch.no_grad()
    def constrain_outliers(self) -> None:
        """Apply TI's outlier constraint to the folded weights, writing the result back to W."""
        self.outlier_check_pending = False
        folded, _ = self.folded_weight_bias()
        clipped, clip = apply_outlier_constraint(folded)
        if clip is None:
            return
        if self.bn is None:
            self.weight.copy_(clipped)
        else:
            scale = bn_scale(self.bn).reshape(self._channel_shape)
            self.weight.copy_(torch.where(clipped != folded, clipped / scale, self.weight))
        logger.info(
            "%s: outlier constraint clipped folded weights to +/-%g",
            type(self).__name__,
            float(clip),
        )

    def _forward_batch_statistics(self, x: Tensor) -> Tensor:
        weight = self.weight
        if self.quantize_weights:
            weight, _ = quantize_weight_ste(
                weight, self.bitwidth, self.per_channel, bn_scale(self.bn), self._channel_shape
            )
        return self.bn(self._layer_op(x, weight, self.bias))

    def _forward_folded(self, x: Tensor) -> Tensor:
        """The deployed arithmetic: conv(x, fq(W'), fq(b')).

        With a float64 input every product and sum is computed exactly (the quantized weights
        and biases are float32 values on their grids and convert exactly): the integer
        graph's arithmetic, without float32's accumulation rounding.
        """
        if x.dtype == torch.float64:
            return self._exact_op(x, *self.quantized_weight_bias(bias_dtype=torch.float64))
        weight, bias = self.quantized_weight_bias()
        return self._layer_op(x, weight, bias)

    def calibration_bias(self) -> nn.Parameter | None:
        """The parameter that shifts this layer's folded bias: the BN's beta, else the bias."""
        if self.bn is not None:
            return self.bn.bias
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
        if self.bn is not None and self.bn.uses_batch_statistics:
            y = self._forward_batch_statistics(x)
        else:
            y = self._forward_folded(x)
        if self.output_quant is not None:
            y = self.output_quant(y)
        return y

    def extra_repr(self) -> str:
        per_channel = ", per_channel=True" if self.per_channel else ""
        return f"{super().extra_repr()}, bitwidth={self.bitwidth}{per_channel}"


def _parent_prefix(prefix: str) -> str:
    """The state_dict prefix of the module holding the one at `prefix` ("a.b.c." -> "a.b.")."""
    parent, dot, _ = prefix.rstrip(".").rpartition(".")
    return parent + dot if dot else ""


def _bn_prefixes(unit: QuantWeightMixin, prefix: str) -> dict[str, str]:
    """Own key prefix -> the prefix the float model saved the same entries under."""
    bn_prefix = f"{_parent_prefix(prefix)}{unit.bn_slot}."
    return {f"{prefix}bn.": bn_prefix, f"{prefix}output_quant.": f"{bn_prefix}output_quant."}


def _save_under_bn_name(
    unit: QuantWeightMixin, state_dict: dict[str, Tensor], prefix: str, local_metadata: dict
) -> None:
    """State-dict post-hook: the folded BN (and the range after it) keep their float keys."""
    renames = _bn_prefixes(unit, prefix)
    for key in [k for k in state_dict if k.startswith(tuple(renames))]:
        own = next(p for p in renames if key.startswith(p))
        state_dict[renames[own] + key[len(own) :]] = state_dict.pop(key)


def load_folded_bn_under_its_name(parent: nn.Module, conv_slot: str, bn_slot: str) -> None:
    """Let `parent` load the entries of the BN folded into its child `conv_slot` from the BN's
    float keys `bn_slot.*`: only the parent's load sees both slots' keys."""
    parent.register_load_state_dict_pre_hook(partial(_load_from_bn_name, conv_slot, bn_slot))


def _load_from_bn_name(
    conv_slot: str, bn_slot: str, parent: nn.Module, state_dict: dict, prefix: str, *_: object
) -> None:
    """Load pre-hook of the parent: `bn.*` (and `bn.output_quant.*`) go to the conv unit."""
    saved_bn, saved_range = f"{prefix}{bn_slot}.", f"{prefix}{bn_slot}.output_quant."
    for key in [k for k in state_dict if k.startswith(saved_bn)]:
        if key.startswith(saved_range):
            own = f"{prefix}{conv_slot}.output_quant.{key[len(saved_range) :]}"
        else:
            own = f"{prefix}{conv_slot}.bn.{key[len(saved_bn) :]}"
        state_dict[own] = state_dict.pop(key)


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
    """Conv2d unit: on-the-fly BN folding, power-of-two fake-quantized weights and bias."""

    _channel_shape = (-1, 1, 1, 1)
    _channel_dim = 1

    @classmethod
    def _build_like(cls, layer: nn.Conv2d, **kwargs):
        return conv2d_like(layer, cls, **kwargs)

    def _layer_op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return self._conv_forward(x, weight, bias)

    def _exact_op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            return self._conv_forward(x, weight.double(), _double(bias))
        return exact_conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class QuantLinear(QuantWeightMixin, nn.Linear):
    """Linear unit: power-of-two fake-quantized weights and a bias on the joint grid."""

    _channel_shape = (-1, 1)
    _channel_dim = -1

    @classmethod
    def _build_like(cls, layer: nn.Linear, **kwargs):
        return cls(layer.in_features, layer.out_features, bias=layer.bias is not None, **kwargs)

    def _layer_op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    def _exact_op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight.double(), _double(bias))


def _double(tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else tensor.double()


def is_depthwise(conv: nn.Conv2d) -> bool:
    """A conv with one group per input channel (and more than one channel)."""
    return conv.groups > 1 and conv.groups == conv.in_channels
