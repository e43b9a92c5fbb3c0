"""Bias calibration for PTQ: move each bias so the quantized output mean meets the float one.

Per batch a float reference pass (float folded weights, the biases as they were before
calibration, clip-only ranges) and a quantized pass each record every weight layer's
per-channel output mean, through hooks removed after the pass. Each bias (the BN's beta where
one is folded) then moves by (mean_float - mean_quant) * 0.05 * 0.5**epoch.
"""

from typing import Any

import torch
from torch import Tensor, nn

from edgezoo.quantization.freeze import float_reference
from edgezoo.quantization.observe import observing_pre_range_outputs, weight_units
from edgezoo.quantization.weight_layers import QuantWeightMixin

BIAS_CALIBRATION_FACTOR = 0.05
"""Share of the float-minus-quantized output mean added to a bias per calibration batch."""


class BiasCalibration:
    """The calibration state of one model: its layers with a bias and their float biases."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layers = [m for _, m in weight_units(model) if m.calibration_bias() is not None]
        self.float_biases: list[Tensor] | None = None

    @torch.no_grad()
    def step(self, args: tuple[Any, ...], kwargs: dict[str, Any], epoch: int) -> Any:
        """Run one calibration batch; return the quantized output."""
        biases = [layer.calibration_bias() for layer in self.layers]
        if self.float_biases is None:
            # The float reference keeps the biases the model had before calibration moved them.
            self.float_biases = [bias.detach().clone() for bias in biases]
        calibrated = [bias.detach().clone() for bias in biases]
        try:
            for bias, original in zip(biases, self.float_biases, strict=True):
                bias.copy_(original)
            with float_reference(self.model):
                float_means = self._channel_means(args, kwargs)[0]
        finally:
            for bias, value in zip(biases, calibrated, strict=True):
                bias.copy_(value)
        quant_means, output = self._channel_means(args, kwargs)
        step = BIAS_CALIBRATION_FACTOR * 0.5**epoch
        for index, bias in enumerate(biases):
            if index in float_means and index in quant_means:
                bias.add_((float_means[index] - quant_means[index]) * step)
        return output

    def _channel_means(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[dict[int, Tensor], Any]:
        """Per-channel output means of every layer in one forward, and the forward's output."""
        means: dict[int, Tensor] = {}

        def record(index: int, layer: QuantWeightMixin, output: Tensor) -> None:
            means[index] = layer.channel_mean(output)

        with observing_pre_range_outputs(self.layers, record):
            output = self.model(*args, **kwargs)
        return means, output
