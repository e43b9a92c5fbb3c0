"""QuantTrainModule (QAT), QuantCalibrateModule (PTQ) and QuantTestModule (evaluation).

Each wrapper refuses an already-quantized model, checks the model with check_model (module-only
rules; violations that torch.fx conversion fixes are converted, edgezoo.make_module_only, unless
convert=False), then quantizes it in place (planner.py): `.module` stays the user's model object
(or its converted GraphModule, sharing its tensors) with its original state_dict keys plus range
buffers, so `q.module.state_dict()` is a complete QAT
checkpoint and float checkpoints load into `q.module` before or after wrapping. How to quantize
is a QuantizationConfig (`config=`), or its fields as keyword arguments.
"""

import dataclasses
import logging
from typing import Any

import torch
from torch import Tensor, nn

from edgezoo.check import CheckReport, check_model
from edgezoo.conversion import make_module_only
from edgezoo.errors import (
    ConversionError,
    ModuleOnlyViolationError,
    QuantizationConfigError,
    QuantizationModeError,
    TIDLRuleError,
    UsageError,
)
from edgezoo.quantization.bias_calibration import BiasCalibration
from edgezoo.quantization.config import QuantizationConfig
from edgezoo.quantization.float_islands import float_islands
from edgezoo.quantization.freeze import QATSchedule
from edgezoo.quantization.freeze import freeze_bn as _freeze_bn
from edgezoo.quantization.freeze import freeze_quant_range as _freeze_quant_range
from edgezoo.quantization.modes import CALIBRATE, TEST, TRAIN, wrapper_mode
from edgezoo.quantization.planner import insert_quantization
from edgezoo.quantization.quantized_model import refuse_quantized

logger = logging.getLogger(__name__)

ExampleInput = Tensor | tuple[Any, ...]


class _QuantWrapper(nn.Module):
    """Common part of the three wrappers: check, quantize in place, forward to `.module`."""

    # Whether loading a checkpoint without some range's entries keeps that range.
    _keep_missing_ranges = True
    # Whether ranges may skip measuring batches while their clip stays put (QAT only).
    _sparse_range_updates = False
    # Whether ranges may be trained by gradient (config.learn_ranges; QAT only).
    _gradient_ranges = False

    def __init__(
        self,
        module: nn.Module,
        example_input: ExampleInput | None = None,
        config: QuantizationConfig | None = None,
        *,
        tidl_rules: bool = True,
        convert: bool = True,
        **settings: Any,
    ) -> None:
        super().__init__()
        if isinstance(module, _QuantWrapper):
            raise QuantizationConfigError(
                f"{type(module).__name__} is already a quantization wrapper: wrap the float "
                f"model (or use its .module with a fresh float model's checkpoint)"
            )
        self.config = QuantizationConfig.resolve(config, **settings)
        example_input = _example_input(example_input)
        refuse_quantized(module)
        module = _check_before_wrapping(module, example_input, tidl_rules, convert)
        self.module = insert_quantization(
            module,
            example_input,
            self.config,
            keep_missing_ranges=self._keep_missing_ranges,
            range_update_gap=self.config.max_range_update_gap if self._sparse_range_updates else 1,
            learn_ranges=self.config.learn_ranges and self._gradient_ranges,
        )
        self.training = module.training

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The model's forward; in eval with config.evaluates_exactly, in float64 (exact)."""
        if self.training or not self.config.evaluates_exactly:
            return self.module(*args, **kwargs)
        return _in_float64(self.module, args, kwargs)


def _example_input(example_input: ExampleInput | None) -> ExampleInput:
    """The example input the wrapper traces with; UsageError when it is missing."""
    if example_input is None:
        raise UsageError(
            "the wrapper traces the model once: pass example_input, a batch of the size the "
            "model takes (e.g. torch.rand(1, 3, 224, 224))"
        )
    return example_input


def _in_float64(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """module(*args) with float inputs in float64; its outputs stay float64 (exact values).
    Layers left in float compute in their own dtype (float_islands)."""
    with float_islands(module):
        return module(*_floats_to(args, torch.float64), **_floats_to(kwargs, torch.float64))


def _floats_to(value: Any, dtype: torch.dtype) -> Any:
    """value with every floating tensor inside (tuples, lists, dicts) converted to dtype."""
    if isinstance(value, Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, tuple | list):
        return type(value)(_floats_to(item, dtype) for item in value)
    if isinstance(value, dict):
        return {key: _floats_to(item, dtype) for key, item in value.items()}
    return value


def _check_before_wrapping(
    module: nn.Module, example_input: ExampleInput, tidl_rules: bool, convert: bool
) -> nn.Module:
    """The model to quantize: module-only rules must hold (after torch.fx conversion when
    `convert` and they do not); TIDL's rules too, unless tidl_rules=False (then a warning), so a
    layer TIDL cannot import is named before hours of training, not at export."""
    report = check_model(module, example_input, tidl_rules=True)
    if convert and _module_only_violations(report):
        module = _converted(module, example_input, tidl_rules, report)
        report = check_model(module, example_input, tidl_rules=True)
    tidl = [v for v in report.violations if v.is_tidl_rule]
    module_only = _module_only_violations(report)
    if module_only:
        dataclasses.replace(report, violations=module_only).raise_if_failed()
    if tidl:
        _refuse_or_warn_tidl(module, tidl, tidl_rules)
    return module


def _module_only_violations(report: CheckReport) -> list:
    return [v for v in report.violations if not v.is_tidl_rule]


def _converted(
    module: nn.Module, example_input: ExampleInput, tidl_rules: bool, report: CheckReport
) -> nn.Module:
    """make_module_only of the model, one log line per kind of change; a model it cannot
    convert raises the check's violations with the reason."""
    try:
        converted, changes = make_module_only(
            module, example_input, tidl_rules=tidl_rules, return_report=True
        )
    except ConversionError as error:
        raise ModuleOnlyViolationError(
            f"{report}\nautomatic conversion (edgezoo.make_module_only) failed: {error}"
        ) from error
    for kind, count in sorted(changes.changes.items()):
        logger.info("%s converted to module-only: %s x%d", type(module).__name__, kind, count)
    return converted


def _refuse_or_warn_tidl(module: nn.Module, tidl: list, tidl_rules: bool) -> None:
    listing = "\n".join(f"  {violation}" for violation in tidl)
    if tidl_rules:
        raise TIDLRuleError(
            f"{type(module).__name__} has layers TIDL cannot import, so its export would be "
            f"refused after training:\n{listing}\nfix them, or pass tidl_rules=False to train "
            "for another target anyway"
        )
    logger.warning(
        "%s: layers TIDL cannot import (tidl_rules=False):\n%s", type(module).__name__, listing
    )


class QuantTrainModule(_QuantWrapper):
    """Quantization-aware training: power-of-two fake quantization with learned ranges.

    In training, activation ranges update from batch statistics (unless frozen), convs fold
    their BatchNorm on the fly (one convolution per layer) and gradients pass straight through
    the quantizers. eval() evaluates the quantized network; train() resumes range learning.
    With `total_epochs`, call `start_epoch(epoch)` at the start of every epoch to freeze BN
    (from epoch total_epochs//2 - 1) and ranges (from total_epochs//2 + 1) as TI does.
    Ranges are measured every batch while their clip moves, and at least every
    config.max_range_update_gap batches while it stays put.
    """

    _sparse_range_updates = True
    _gradient_ranges = True

    def __init__(
        self,
        module: nn.Module,
        example_input: ExampleInput | None = None,
        total_epochs: int | None = None,
        config: QuantizationConfig | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(module, example_input, config, **settings)
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
        example_input: ExampleInput | None = None,
        bias_calibration: bool = True,
        config: QuantizationConfig | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(module, example_input, config, **settings)
        self.bias_calibration = bias_calibration
        self.epoch = 0
        self._calibration = BiasCalibration(self.module)
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
                return super().forward(*args, **kwargs)  # in eval, exact when it must be
            return self._calibration.step(args, kwargs, self.epoch)


class QuantTestModule(_QuantWrapper):
    """Evaluate a QAT or calibrated checkpoint: eval mode only, training raises an error.

    Load the checkpoint into `.module` (`q.module.load_state_dict(torch.load(path))`); a
    checkpoint that lacks some range's entries fails to load, naming them, since evaluating
    with untrained ranges would report a model nobody trained.
    """

    _keep_missing_ranges = False

    def __init__(
        self,
        module: nn.Module,
        example_input: ExampleInput | None = None,
        config: QuantizationConfig | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(module, example_input, config, **settings)
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


WRAPPERS: dict[str, type[_QuantWrapper]] = {
    TRAIN: QuantTrainModule,
    CALIBRATE: QuantCalibrateModule,
    TEST: QuantTestModule,
}
"""Wrapper mode -> the wrapper class (modes.py names the modes)."""

QUANT_WRAPPERS = tuple(WRAPPERS.values())


def wrap_model(
    model: nn.Module,
    mode: bool | str,
    example_input: ExampleInput,
    config: QuantizationConfig | None = None,
    **settings: Any,
) -> nn.Module:
    """Wrap a float model for quantization: True/"train"/"qat" -> QuantTrainModule, "calibrate" ->
    QuantCalibrateModule, "test" -> QuantTestModule. get_model(qat=...) calls this."""
    name = wrapper_mode(mode) if mode is not False else None
    if name is None:
        raise QuantizationConfigError(
            "wrap_model needs a quantization mode: True or 'train' (QAT), 'calibrate' (PTQ) or "
            "'test' (evaluation)"
        )
    return WRAPPERS[name](model, example_input, config=config, **settings)
