"""QuantTrainModule (QAT), QuantCalibrateModule (PTQ) and QuantTestModule (evaluation).

Each wrapper checks the model with check_model (module-only rules), then quantizes it in place
(insertion.py): `.module` stays the user's model object with its original state_dict keys plus
range buffers, so `q.module.state_dict()` is a complete QAT checkpoint and float checkpoints
load into `q.module` before or after wrapping.
"""

import logging
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from edgezoo.check import check_model
from edgezoo.errors import QuantizationConfigError, QuantizationModeError
from edgezoo.quantization.freeze import QATSchedule, float_reference
from edgezoo.quantization.freeze import freeze_bn as _freeze_bn
from edgezoo.quantization.freeze import freeze_quant_range as _freeze_quant_range
from edgezoo.quantization.insertion import QuantizationConfig, insert_quantization
from edgezoo.quantization.quant_weight import QuantWeightMixin

logger = logging.getLogger(__name__)

BIAS_CALIBRATION_FACTOR = 0.05
"""Share of the float-minus-quantized output mean added to a bias per calibration batch."""


class _QuantWrapper(nn.Module):
    """Common part of the three wrappers: check, quantize in place, forward to `.module`."""

    def __init__(
        self,
        module: nn.Module,
        dummy_input: Tensor | tuple[Any, ...],
        *,
        bitwidth_weights: int = 8,
        bitwidth_activations: int = 8,
        per_channel_depthwise: bool = False,
        quantize_input: bool = True,
        quantize_output: bool = False,
        range_shrink_percentile: float = 0.01,
    ) -> None:
        super().__init__()
        if isinstance(module, _QuantWrapper):
            raise QuantizationConfigError(
                f"{type(module).__name__} is already a quantization wrapper: wrap the float "
                f"model (or use its .module with a fresh float model's checkpoint)"
            )
        self.config = QuantizationConfig(
            bitwidth_weights=bitwidth_weights,
            bitwidth_activations=bitwidth_activations,
            per_channel_depthwise=per_channel_depthwise,
            quantize_input=quantize_input,
            quantize_output=quantize_output,
            range_shrink_percentile=range_shrink_percentile,
        )
        check_model(module, dummy_input, tidl_rules=False).raise_if_failed()
        self.module = insert_quantization(module, dummy_input, self.config)
        self.training = module.training

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


class QuantTrainModule(_QuantWrapper):
    """Quantization-aware training: power-of-two fake quantization with learned ranges.

    In training, activation ranges update from batch statistics (unless frozen), convs fold
    their BatchNorm on the fly (one convolution per layer) and gradients pass straight through
    the quantizers. eval() evaluates the quantized network; train() resumes range learning.
    With `total_epochs`, call `start_epoch(epoch)` at the start of every epoch to freeze BN
    (from epoch total_epochs//2 - 1) and ranges (from total_epochs//2 + 1) as TI does.
    """

    def __init__(
        self,
        module: nn.Module,
        dummy_input: Tensor | tuple[Any, ...],
        total_epochs: int | None = None,
        bitwidth_weights: int = 8,
        bitwidth_activations: int = 8,
        per_channel_depthwise: bool = False,
        quantize_input: bool = True,
        quantize_output: bool = False,
        range_shrink_percentile: float = 0.01,
    ) -> None:
        super().__init__(
            module,
            dummy_input,
            bitwidth_weights=bitwidth_weights,
            bitwidth_activations=bitwidth_activations,
            per_channel_depthwise=per_channel_depthwise,
            quantize_input=quantize_input,
            quantize_output=quantize_output,
            range_shrink_percentile=range_shrink_percentile,
        )
        self.schedule = QATSchedule(total_epochs) if total_epochs is not None else None

    def start_epoch(self, epoch: int) -> None:
        """Apply the total_epochs freeze schedule for the epoch about to start (from 0)."""
        if self.schedule is None:
            raise QuantizationConfigError(
                "start_epoch needs a schedule: pass total_epochs=... to QuantTrainModule, or "
                "call freeze_bn() / freeze_quant_range() yourself"
            )
        self.schedule.step(self, epoch)

    def freeze_bn(self, frozen: bool = True) -> None:
        """Freeze (or unfreeze) BatchNorm statistics; see edgezoo.quantization.freeze_bn."""
        _freeze_bn(self, frozen)

    def freeze_quant_range(self, frozen: bool = True) -> None:
        """Freeze (or unfreeze) activation ranges; see edgezoo.quantization.freeze_quant_range."""
        _freeze_quant_range(self, frozen)


class QuantCalibrateModule(_QuantWrapper):
    """Post-training quantization: collect ranges (and calibrate biases) without gradients.

    Run training-mode forwards over calibration data (TI uses about 1000 batches); BatchNorms
    stay frozen and dropout stays off. With bias_calibration, each batch runs a float reference
    pass (float folded weights with the biases as they were at the first calibration batch,
    clip-only ranges) and a quantized pass, and every conv/linear bias (the BN's beta where one
    is folded) moves by (mean_float - mean_quant) * 0.05 * 0.5**epoch per channel (so load
    weights before the first batch). `start_epoch(epoch)` sets that epoch (default 0); eval()
    then evaluates the result.
    """

    def __init__(
        self,
        module: nn.Module,
        dummy_input: Tensor | tuple[Any, ...],
        bias_calibration: bool = True,
        bitwidth_weights: int = 8,
        bitwidth_activations: int = 8,
        per_channel_depthwise: bool = False,
        quantize_input: bool = True,
        quantize_output: bool = False,
        range_shrink_percentile: float = 0.01,
    ) -> None:
        super().__init__(
            module,
            dummy_input,
            bitwidth_weights=bitwidth_weights,
            bitwidth_activations=bitwidth_activations,
            per_channel_depthwise=per_channel_depthwise,
            quantize_input=quantize_input,
            quantize_output=quantize_output,
            range_shrink_percentile=range_shrink_percentile,
        )
        self.bias_calibration = bias_calibration
        self.epoch = 0
        self._float_biases: list[Tensor] | None = None
        _freeze_bn(self)
        self.train()

    def start_epoch(self, epoch: int) -> None:
        """Set the epoch that scales the bias-calibration step by 0.5**epoch."""
        self.epoch = epoch

    def train(self, mode: bool = True) -> "QuantCalibrateModule":
        super().train(mode)
        # Calibration statistics must see the network as deployed: never drop activations.
        for module in self.modules():
            if isinstance(module, nn.modules.dropout._DropoutNd):
                module.train(False)
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            if not (self.training and self.bias_calibration):
                return self.module(*args, **kwargs)
            return self._forward_calibrating_biases(args, kwargs)

    def _forward_calibrating_biases(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        layers = [
            m
            for m in self.module.modules()
            if isinstance(m, QuantWeightMixin) and m.calibration_bias() is not None
        ]
        biases = [layer.calibration_bias() for layer in layers]
        if self._float_biases is None:
            # The float reference keeps the biases the model had before calibration moved them.
            self._float_biases = [bias.detach().clone() for bias in biases]
        calibrated = [bias.detach().clone() for bias in biases]
        means: dict[int, Tensor] = {}
        for index, layer in enumerate(layers):
            layer.output_observer = partial(_store_channel_mean, means, index, layer)
        try:
            try:
                with float_reference(self.module):
                    for bias, original in zip(biases, self._float_biases, strict=True):
                        bias.copy_(original)
                    self.module(*args, **kwargs)
            finally:
                for bias, value in zip(biases, calibrated, strict=True):
                    bias.copy_(value)
            float_means = dict(means)
            output = self.module(*args, **kwargs)
            step = BIAS_CALIBRATION_FACTOR * 0.5**self.epoch
            for index, bias in enumerate(biases):
                if index in float_means and index in means:
                    bias.add_((float_means[index] - means[index]) * step)
        finally:
            for layer in layers:
                layer.output_observer = None
        return output


def _store_channel_mean(
    means: dict[int, Tensor], index: int, layer: QuantWeightMixin, output: Tensor
) -> None:
    means[index] = layer.channel_mean(output)


class QuantTestModule(_QuantWrapper):
    """Evaluate a QAT or calibrated checkpoint: eval mode only, training raises an error.

    Load the checkpoint into `.module` (`q.module.load_state_dict(torch.load(path))`).
    """

    def __init__(
        self,
        module: nn.Module,
        dummy_input: Tensor | tuple[Any, ...],
        bitwidth_weights: int = 8,
        bitwidth_activations: int = 8,
        per_channel_depthwise: bool = False,
        quantize_input: bool = True,
        quantize_output: bool = False,
        range_shrink_percentile: float = 0.01,
    ) -> None:
        super().__init__(
            module,
            dummy_input,
            bitwidth_weights=bitwidth_weights,
            bitwidth_activations=bitwidth_activations,
            per_channel_depthwise=per_channel_depthwise,
            quantize_input=quantize_input,
            quantize_output=quantize_output,
            range_shrink_percentile=range_shrink_percentile,
        )
        _freeze_bn(self)
        super().train(False)

    def train(self, mode: bool = True) -> "QuantTestModule":
        if mode:
            raise QuantizationModeError(
                "QuantTestModule only evaluates: use QuantTrainModule for quantization-aware "
                "training (or QuantCalibrateModule for calibration), then load its "
                "q.module.state_dict() into a QuantTestModule"
            )
        return super().train(False)


_MODES = {
    True: QuantTrainModule,
    "train": QuantTrainModule,
    "calibrate": QuantCalibrateModule,
    "test": QuantTestModule,
}


def wrap_model(
    model: nn.Module, mode: bool | str, example_input: Tensor | tuple[Any, ...], **kwargs: Any
) -> nn.Module:
    """Wrap a float model: True/"train" -> QuantTrainModule, "calibrate", "test"."""
    wrapper = _MODES.get(mode) if isinstance(mode, bool | str) else None
    if wrapper is None:
        raise QuantizationConfigError(
            f"unknown quantization mode {mode!r}: use True or 'train' (QAT), 'calibrate' (PTQ) "
            f"or 'test' (evaluation)"
        )
    return wrapper(model, example_input, **kwargs)
