"""convert_to_deploy: the plain float network a QAT model stands for, ready for ONNX export.

Every conv/linear carries the folded weights and bias the quantized forward used (weights on
their power-of-two grid, after the outlier constraint; bias on its joint-scale grid), and every
activation range becomes a Clip with its constant bounds (a unit's input and output ranges
around its plain layer). The slots of folded BatchNorms are already nn.Identity. The result has
no fake-quant op: its forward equals the wrapper's eval forward in clip_only mode, and TIDL
re-derives the quantization from the weights and the Clip ranges.
"""

import copy

import torch
from torch import nn

from edgezoo.errors import QuantizationConfigError
from edgezoo.quantization.batch_norm import (
    QUANT_BATCH_NORMS,
    QuantBatchNormMixin,
    QuantFrozenBatchNorm2d,
)
from edgezoo.quantization.clip import Clip
from edgezoo.quantization.pact2 import PACT2
from edgezoo.quantization.parameter_free import InputGridLayer, QuantizedLayer
from edgezoo.quantization.quantized_model import is_quantized
from edgezoo.quantization.weight_layers import (
    QuantConv2d,
    QuantLinear,
    QuantWeightMixin,
    conv2d_like,
)


class DeployedConv2d(nn.Conv2d):
    """A plain Conv2d whose weights lie on a `bitwidth`-bit power-of-two grid; it exports as
    an ordinary Conv, and the export records its width per tensor."""

    def __init__(self, *args, bitwidth: int = 8, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bitwidth = bitwidth


class DeployedLinear(nn.Linear):
    """A plain Linear whose weights lie on a `bitwidth`-bit power-of-two grid (see above)."""

    def __init__(self, *args, bitwidth: int = 8, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bitwidth = bitwidth


def range_to_clip(pact: PACT2) -> Clip:
    """The constant clamp an activation range applies at deployment, at the range's width."""
    clip_min, clip_max = pact.clip_range()
    return Clip(clip_min, clip_max, pact.bitwidth)


def _with_clips(unit: nn.Module, core: nn.Module) -> nn.Module:
    """core between Clips of the unit's input and output ranges (where it has them)."""
    parts = []
    if unit.input_quant is not None:
        parts.append(range_to_clip(unit.input_quant))
    parts.append(core)
    if unit.output_quant is not None:
        parts.append(range_to_clip(unit.output_quant))
    return core if len(parts) == 1 else nn.Sequential(*parts)


def _deploy_weight_layer(layer: QuantWeightMixin) -> nn.Module:
    weight, bias = layer.deployed_weight_bias()
    options = {"bias": bias is not None, "device": "meta", "bitwidth": layer.bitwidth}
    if isinstance(layer, QuantConv2d):
        plain: nn.Module = conv2d_like(layer, DeployedConv2d, **options)
    elif isinstance(layer, QuantLinear):
        plain = DeployedLinear(layer.in_features, layer.out_features, **options)
    else:
        raise QuantizationConfigError(f"no deploy form for {type(layer).__name__}")
    plain.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
    if bias is not None:
        plain.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    return _with_clips(layer, plain)


def _deploy_batch_norm(bn: QuantBatchNormMixin) -> nn.Module:
    if isinstance(bn, QuantFrozenBatchNorm2d):
        return _with_clips(bn, bn.to_float())
    float_type = next(f for f, q in QUANT_BATCH_NORMS.items() if q is type(bn))
    plain = float_type(
        bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, device="meta"
    )
    own_state = {
        key: value
        for key, value in bn.state_dict().items()
        if not key.startswith(("input_quant.", "output_quant.", "_extra_state"))
    }
    plain.load_state_dict(own_state, assign=True)
    return _with_clips(bn, plain)


def _deploy_module(module: nn.Module) -> nn.Module | None:
    """The deploy form of a quantization module, or None for modules kept as they are."""
    if isinstance(module, QuantWeightMixin):
        return _deploy_weight_layer(module)
    if isinstance(module, QuantBatchNormMixin):
        return _deploy_batch_norm(module)
    if isinstance(module, QuantizedLayer):
        return _with_clips(module, module.module)
    if isinstance(module, InputGridLayer):
        return module.module  # TIDL keeps the output on the input's grid by itself
    if isinstance(module, PACT2):
        return range_to_clip(module)
    return None


def _convert_children(parent: nn.Module) -> None:
    for name, child in parent.named_children():
        deployed = _deploy_module(child)
        if deployed is None:
            _convert_children(child)
        else:
            setattr(parent, name, deployed)


@torch.no_grad()
def convert_to_deploy(q: nn.Module) -> nn.Module:
    """A float copy of a quantized model (wrapper or its .module) for export, in eval mode."""
    source = getattr(q, "module", q)
    if not is_quantized(source):
        raise QuantizationConfigError(
            f"{type(source).__name__} holds no quantization modules: convert_to_deploy takes a "
            f"QuantTrainModule, QuantCalibrateModule or QuantTestModule (or its .module)"
        )
    model = copy.deepcopy(source)
    _convert_children(model)
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()
