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
from itertools import islice
from typing import Any

import torch
from torch import Tensor, nn

from edgezoo.errors import QuantizationConfigError
from edgezoo.module_state import kept_modes
from edgezoo.quantization.freeze import float_reference
from edgezoo.quantization.graph import iter_tensors
from edgezoo.quantization.grid import weight_scale
from edgezoo.quantization.observe import observing_pre_range_outputs, weight_units
from edgezoo.quantization.pact2 import PACT2
from edgezoo.quantization.quantized_model import activation_ranges, is_quantized
from edgezoo.quantization.weight_layers import QuantWeightMixin


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


def _following_ranges(
    model: nn.Module, units: list[tuple[str, QuantWeightMixin]], inputs: Any
) -> dict[int, PACT2]:
    """For each unit (by index), the range that clips its output: its own output range, or the
    activation that reads its output (found by watching one forward with hooks)."""
    following = {i: u.output_quant for i, (_, u) in enumerate(units) if u.output_quant is not None}
    produced: dict[int, int] = {}
    outputs: list[Tensor] = []  # keeps the watched outputs alive so their ids stay unique
    handles = []

    def after_unit(index: int):
        def hook(_module: nn.Module, _args: tuple, output: Tensor) -> None:
            produced[id(output)] = index
            outputs.append(output)

        return hook

    def before_range(pact: PACT2, args: tuple) -> None:
        index = produced.get(id(args[0]))
        if index is not None:
            following.setdefault(index, pact)

    try:
        for index, (_, unit) in enumerate(units):
            if unit.output_quant is None:
                handles.append(unit.register_forward_hook(after_unit(index)))
        for pact in activation_ranges(model):
            handles.append(pact.register_forward_pre_hook(before_range))
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return following


def _store_in(outputs: dict[int, Tensor]):
    """An observer that keeps each layer's output by index."""

    def store(index: int, _unit: QuantWeightMixin, output: Tensor) -> None:
        outputs[index] = output

    return store


def _accumulate(
    model: nn.Module, units: list[QuantWeightMixin], inputs: Any, sums: dict[str, list[float]]
) -> None:
    """Add one batch's signal and noise energies (per layer and at the output) to sums."""
    float_outputs: dict[int, Tensor] = {}
    quant_outputs: dict[int, Tensor] = {}
    with torch.no_grad():
        with observing_pre_range_outputs(units, _store_in(float_outputs)), float_reference(model):
            reference = list(iter_tensors(model(inputs)))
        with observing_pre_range_outputs(units, _store_in(quant_outputs)):
            quantized = list(iter_tensors(model(inputs)))
    for index, float_output in float_outputs.items():
        error = float_output - quant_outputs[index]
        sums["signal"][index] += float(float_output.double().square().sum())
        sums["noise"][index] += float(error.double().square().sum())
    for float_output, quant_output in zip(reference, quantized, strict=True):
        sums["output"][0] += float(float_output.double().square().sum())
        sums["output"][1] += float((float_output - quant_output).double().square().sum())


def _layer_stats(name: str, layer: QuantWeightMixin, clip_range: PACT2 | None, sqnr: float):
    with torch.no_grad():
        folded, _ = layer.folded_weight_bias()
        scale = weight_scale(folded, layer.bitwidth, layer.per_channel)
    return LayerStats(
        name=name,
        layer_type=type(layer).__name__,
        weight_clip=float(2 ** (layer.bitwidth - 1) / scale.min()),
        output_clip=clip_range.clip_range() if clip_range is not None else None,
        output_running_range=(
            (float(clip_range.running_min), float(clip_range.running_max))
            if clip_range is not None
            else None
        ),
        sqnr_db=sqnr,
    )


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
    named = weight_units(source)
    units = [unit for _, unit in named]
    sums = {"signal": [0.0] * len(units), "noise": [0.0] * len(units), "output": [0.0, 0.0]}
    batches, following = 0, {}
    with kept_modes(source):
        source.eval()
        for batch in islice(data, max_batches):
            inputs = batch[0] if isinstance(batch, tuple | list) else batch
            if not batches:
                following = _following_ranges(source, named, inputs)
            _accumulate(source, units, inputs, sums)
            batches += 1
    report = LayerReport(output_sqnr_db=_sqnr_db(*sums["output"]), batches=batches)
    for index, (name, unit) in enumerate(named):
        sqnr = _sqnr_db(sums["signal"][index], sums["noise"][index])
        report.layers.append(_layer_stats(name, unit, following.get(index), sqnr))
    return report
