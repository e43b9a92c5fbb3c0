"""Freezing BatchNorm statistics and activation ranges, TI's epoch schedule, clip-only mode.

Freezing is an explicit state, set only by these functions: train() and eval() never freeze or
unfreeze anything, so validating between epochs does not stop range learning.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from edgezoo.errors import QuantizationConfigError, QuantizationModeError
from edgezoo.quantization.batch_norm import QuantBatchNormMixin
from edgezoo.quantization.pact2 import PACT2
from edgezoo.quantization.quantized_model import activation_ranges, quant_batch_norms
from edgezoo.quantization.weight_layers import QuantWeightMixin


def freeze_bn(model: nn.Module, frozen: bool = True) -> int:
    """Freeze (or unfreeze) every BatchNorm of a quantized model; returns how many changed state.

    A frozen BN normalises with its running statistics, which stop updating; the conv unit that
    folds it then runs the folded quantized form conv(x, fq(W'), fq(b')) in training too.
    """
    plain = [
        type(m).__name__
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, QuantBatchNormMixin)
    ]
    if plain:
        raise QuantizationModeError(
            f"freeze_bn needs a model wrapped for quantization (QuantTrainModule); this one "
            f"holds plain {', '.join(sorted(set(plain)))} layers, whose only freeze is .eval(), "
            f"which the next .train() undoes"
        )
    units = quant_batch_norms(model)
    before = [bn.bn_frozen for bn in units]
    model.apply(lambda m: m.freeze_bn(frozen) if isinstance(m, QuantBatchNormMixin) else None)
    return sum(old != bn.bn_frozen for old, bn in zip(before, units, strict=True))


def write_back_quantized_weights(model: nn.Module) -> int:
    """Replace every weight layer's float weights by its quantized ones, once (TI's v1 recipe at
    the first QAT iteration); returns how many layers changed. Measured against leaving them
    float in docs/accuracy.md."""
    units = [m for m in model.modules() if isinstance(m, QuantWeightMixin)]
    for unit in units:
        unit.write_back_quantized_weights()
    return len(units)


def freeze_quant_range(model: nn.Module, frozen: bool = True) -> int:
    """Stop (or resume) activation-range updates; clipping and quantization go on."""
    ranges = activation_ranges(model)
    before = [pact.range_frozen for pact in ranges]
    model.apply(lambda m: m.freeze_range(frozen) if isinstance(m, PACT2) else None)
    return sum(old != pact.range_frozen for old, pact in zip(before, ranges, strict=True))


class QATSchedule:
    """The epochs from which BN and the ranges stay frozen; by default TI's: BN from
    total_epochs//2 - 1, ranges from total_epochs//2 + 1.

    bn_freeze_epoch / range_freeze_epoch (counted from 0) replace TI's rule: 0 freezes from the
    start, total_epochs or more never. Call `step(model, epoch)` (or
    `QuantTrainModule.start_epoch(epoch)`) at the start of every epoch, epochs counted from 0.
    The schedule sets the freeze state from the epoch number in both directions, so resuming
    at any epoch restores the right state.
    """

    def __init__(
        self,
        total_epochs: int,
        bn_freeze_epoch: int | None = None,
        range_freeze_epoch: int | None = None,
    ) -> None:
        _check_epoch("total_epochs", total_epochs, smallest=1)
        for name, value in (
            ("bn_freeze_epoch", bn_freeze_epoch),
            ("range_freeze_epoch", range_freeze_epoch),
        ):
            if value is not None:
                _check_epoch(name, value, smallest=0)
        self.total_epochs = total_epochs
        self.bn_freeze_epoch = total_epochs // 2 - 1 if bn_freeze_epoch is None else bn_freeze_epoch
        self.range_freeze_epoch = (
            total_epochs // 2 + 1 if range_freeze_epoch is None else range_freeze_epoch
        )

    def step(self, model: nn.Module, epoch: int) -> None:
        """Set BN and range freezing for the epoch that is about to start."""
        freeze_bn(model, frozen=epoch >= self.bn_freeze_epoch)
        freeze_quant_range(model, frozen=epoch >= self.range_freeze_epoch)

    def __repr__(self) -> str:
        return (
            f"QATSchedule(total_epochs={self.total_epochs}, bn_freeze_epoch="
            f"{self.bn_freeze_epoch}, range_freeze_epoch={self.range_freeze_epoch})"
        )


def _check_epoch(name: str, value: object, smallest: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
        raise QuantizationConfigError(
            f"{name} must be an int >= {smallest} (epochs counted from 0), got {value!r}"
        )


@contextmanager
def clip_only(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, activation ranges clip without rounding (the exported graph's math)."""
    ranges = activation_ranges(model)
    previous = [pact.rounding_enabled for pact in ranges]
    try:
        model.apply(lambda m: m.enable_rounding(False) if isinstance(m, PACT2) else None)
        yield model
    finally:
        for pact, enabled in zip(ranges, previous, strict=True):
            pact.enable_rounding(enabled)


@contextmanager
def float_reference(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block: float folded weights, clip-only ranges that do not update."""
    layers = [m for m in model.modules() if isinstance(m, QuantWeightMixin)]
    ranges = activation_ranges(model)
    previous = [layer.quantize_weights for layer in layers], [p.range_frozen for p in ranges]
    try:
        model.apply(
            lambda m: (
                m.enable_weight_quantization(False) if isinstance(m, QuantWeightMixin) else None
            )
        )
        model.apply(lambda m: m.freeze_range(True) if isinstance(m, PACT2) else None)
        with clip_only(model):
            yield model
    finally:
        for layer, quantize in zip(layers, previous[0], strict=True):
            layer.enable_weight_quantization(quantize)
        for pact, frozen in zip(ranges, previous[1], strict=True):
            pact.freeze_range(frozen)
