"""Watching a quantized model's layers with forward hooks, removed when the watch ends.

Bias calibration and layer_report need each weight layer's output before any range rounds it.
A unit with an output range hands that value to its `output_quant` child (caught by a forward
pre-hook there); a unit without one returns it (caught by a forward hook on the unit).
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from torch import Tensor, nn

from edgezoo.quantization.weight_layers import QuantWeightMixin

Observer = Callable[[int, QuantWeightMixin, Tensor], None]


def weight_units(model: nn.Module) -> list[tuple[str, QuantWeightMixin]]:
    """Every conv/linear unit of a quantized model with its name, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantWeightMixin)]


@contextmanager
def observing_pre_range_outputs(
    units: Sequence[QuantWeightMixin], observer: Observer
) -> Iterator[None]:
    """Within the block, observer(index, unit, output) sees each unit's output before ranges."""
    handles = []
    try:
        for index, unit in enumerate(units):
            handles.append(_watch(index, unit, observer))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _watch(index: int, unit: QuantWeightMixin, observer: Observer):
    if unit.output_quant is not None:

        def before_range(_module: nn.Module, args: tuple) -> None:
            observer(index, unit, args[0].detach())

        return unit.output_quant.register_forward_pre_hook(before_range)

    def after_unit(_module: nn.Module, _args: tuple, output: Tensor) -> None:
        observer(index, unit, output.detach())

    return unit.register_forward_hook(after_unit)
