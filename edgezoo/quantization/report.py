"""layer_report: which layer of a quantized model loses the most signal, and why.

For every conv/linear layer it lists the power-of-two weight clip, the activation range after
the layer (clip and running statistics) and the SQNR of the layer's output (before its range)
in the quantized forward against the float reference forward on the same data: float folded
weights and activations clipped to the same ranges but not rounded. The SQNR is cumulative: a
layer's figure includes the error its inputs carry from earlier layers, so the first layer
where it drops sharply is the one to look at.
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from typing import Any

import torch
from torch import Tensor, nn

from edgezoo.errors import QuantizationConfigError
from edgezoo.quantization.fake_quant import weight_scale
from edgezoo.quantization.freeze import float_reference
from edgezoo.quantization.graph import iter_tensors
from edgezoo.quantization.insertion import is_quantized
from edgezoo.quantization.quant_weight import QuantWeightMixin


@dataclass(frozen=True)
class LayerStats:
    """Quantization figures of one conv/linear layer."""

    name: str
    layer_type: str
    weight_clip: float
    output_clip: tuple[float, float] | None
    output_running_range: tuple[float, float] | None
    sqnr_db: float


@dataclass
class LayerReport:
    """Per-layer quantization figures and the SQNR of the model output."""

    layers: list[LayerStats] = field(default_factory=list)
    output_sqnr_db: float = math.inf
    batches: int = 0

    def worst(self, count: int = 5) -> list[LayerStats]:
        """The layers with the lowest SQNR."""
        return sorted(self.layers, key=lambda stats: stats.sqnr_db)[:count]

    def __str__(self) -> str:
        header = (
            f"{'layer':<36} {'type':<12} {'w clip':>8} {'out clip':>17} "
            f"{'running range':>21} {'SQNR dB':>8}"
        )
        lines = [header, "-" * len(header)]
        for stats in self.layers:
            clip = _pair(stats.output_clip, "g")
            running = _pair(stats.output_running_range, ".3g")
            lines.append(
                f"{stats.name:<36} {stats.layer_type:<12} {stats.weight_clip:>8g} "
                f"{clip:>17} {running:>21} {stats.sqnr_db:>8.1f}"
            )
        lines.append(f"model output SQNR: {self.output_sqnr_db:.1f} dB over {self.batches} batches")
        return "\n".join(lines)


def _pair(values: tuple[float, float] | None, spec: str) -> str:
    return "-" if values is None else f"({values[0]:{spec}}, {values[1]:{spec}})"


def _sqnr_db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _store(outputs: dict[int, Tensor], index: int, output: Tensor) -> None:
    outputs[index] = output


def layer_report(model: nn.Module, data: Iterable[Any], max_batches: int = 8) -> LayerReport:
    """Per-layer weight clip, output range and SQNR of a quantized model on some batches.

    `model` is a quantization wrapper (or its .module); `data` yields input tensors or
    (input, target) pairs. Runs in eval mode without gradients or range updates and restores
    the model's modes afterwards. Memory: one batch of every layer's float output is held.
    """
    source = getattr(model, "module", model)
    if not is_quantized(source):
        raise QuantizationConfigError(
            f"{type(source).__name__} holds no quantization modules: layer_report takes a "
            f"QuantTrainModule, QuantCalibrateModule or QuantTestModule (or its .module)"
        )
    layers = [(n, m) for n, m in source.named_modules() if isinstance(m, QuantWeightMixin)]
    signal = [0.0] * len(layers)
    noise = [0.0] * len(layers)
    output_signal = output_noise = 0.0
    batches = 0
    modes = {module: module.training for module in source.modules()}
    try:
        for module in source.modules():
            module.training = False
        for batch in islice(data, max_batches):
            inputs = batch[0] if isinstance(batch, tuple | list) else batch
            float_outputs: dict[int, Tensor] = {}
            quant_outputs: dict[int, Tensor] = {}
            with torch.no_grad():
                for index, (_, layer) in enumerate(layers):
                    layer.output_observer = partial(_store, float_outputs, index)
                with float_reference(source):
                    reference = list(iter_tensors(source(inputs)))
                for index, (_, layer) in enumerate(layers):
                    layer.output_observer = partial(_store, quant_outputs, index)
                quantized = list(iter_tensors(source(inputs)))
            for index, float_output in float_outputs.items():
                error = float_output - quant_outputs[index]
                signal[index] += float(float_output.double().square().sum())
                noise[index] += float(error.double().square().sum())
            for float_output, quant_output in zip(reference, quantized, strict=True):
                output_signal += float(float_output.double().square().sum())
                output_noise += float((float_output - quant_output).double().square().sum())
            batches += 1
    finally:
        for _, layer in layers:
            layer.output_observer = None
        for module, training in modes.items():
            module.training = training
    report = LayerReport(output_sqnr_db=_sqnr_db(output_signal, output_noise), batches=batches)
    for index, (name, layer) in enumerate(layers):
        with torch.no_grad():
            folded, _ = layer.folded_weight_bias()
            scale = weight_scale(folded, layer.bitwidth, layer.per_channel)
        output_range = layer.output_range
        report.layers.append(
            LayerStats(
                name=name,
                layer_type=type(layer).__name__,
                weight_clip=float(2 ** (layer.bitwidth - 1) / scale.min()),
                output_clip=output_range.clip_range() if output_range is not None else None,
                output_running_range=(
                    (float(output_range.running_min), float(output_range.running_max))
                    if output_range is not None
                    else None
                ),
                sqnr_db=_sqnr_db(signal[index], noise[index]),
            )
        )
    return report
