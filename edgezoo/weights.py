"""Load a state_dict or checkpoint into a model and report exactly which keys fitted."""

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgezoo import hub
from edgezoo.errors import CheckpointMismatchError
from edgezoo.quantization import QuantizationConfig, named_activation_ranges, wrap_model
from edgezoo.quantization.modes import TEST
from edgezoo.text import preview

logger = logging.getLogger(__name__)

WeightsSource = Mapping[str, Any] | str | os.PathLike
# Training scripts commonly nest the weights under one of these keys.
_NESTED_STATE_DICT_KEYS = ("state_dict", "model")
_DDP_PREFIX = "module."


@dataclass(frozen=True)
class ShapeMismatch:
    """A key present in both checkpoint and model whose tensor shapes differ."""

    key: str
    checkpoint_shape: tuple[int, ...]
    model_shape: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.key}: checkpoint {self.checkpoint_shape} vs model {self.model_shape}"


@dataclass(frozen=True)
class LoadReport:
    """What load_weights did: keys loaded, and every key that did not fit, by reason."""

    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[ShapeMismatch, ...]

    @property
    def ok(self) -> bool:
        """True when every model key was loaded and every checkpoint key was used."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        parts = [f"{len(self.loaded)} keys loaded"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing in the checkpoint ({preview(self.missing)})")
        if self.unexpected:
            parts.append(
                f"{len(self.unexpected)} unexpected, not in the model ({preview(self.unexpected)})"
            )
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} shape mismatches ({preview(self.mismatched)})")
        return "; ".join(parts)


def read_state_dict(source: WeightsSource) -> dict[str, torch.Tensor]:
    """A flat state_dict from a state_dict, a checkpoint dict, a path or a file:// URL."""
    if isinstance(source, str | os.PathLike):
        source = hub.read_checkpoint(source)
    if not isinstance(source, Mapping):
        raise CheckpointMismatchError(
            f"expected a state_dict or checkpoint dict, got {type(source).__name__}"
        )
    if not _all_tensors(source):
        nested = next(
            (source[k] for k in _NESTED_STATE_DICT_KEYS if isinstance(source.get(k), Mapping)),
            None,
        )
        if nested is None or not _all_tensors(nested):
            raise CheckpointMismatchError(
                "the checkpoint is neither a state_dict of tensors nor a dict holding one under "
                f"{' or '.join(map(repr, _NESTED_STATE_DICT_KEYS))}; its top-level keys are "
                f"{preview(source.keys())}"
            )
        source = nested
    broken = [k for k, v in source.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise CheckpointMismatchError(
            f"the checkpoint holds NaN or infinite values in {preview(broken)}: training "
            "diverged before it was saved; use an earlier checkpoint"
        )
    return dict(source)


def load_weights(model: nn.Module, source: WeightsSource, strict: bool = True) -> LoadReport:
    """Load weights into model, stripping a DistributedDataParallel "module." prefix.

    strict=True loads nothing and raises CheckpointMismatchError unless every key fits;
    strict=False loads the keys whose names and shapes fit and reports the rest.
    """
    model_state = model.state_dict()
    state_dict = _align_ddp_prefix(read_state_dict(source), model_state.keys())
    loaded, unexpected, mismatched = [], [], []
    for key, tensor in state_dict.items():
        if key not in model_state:
            unexpected.append(key)
        elif tensor.shape != model_state[key].shape and not _older_flags(key, tensor):
            mismatched.append(
                ShapeMismatch(key, tuple(tensor.shape), tuple(model_state[key].shape))
            )
        else:
            loaded.append(key)
    missing = [key for key in model_state if key not in state_dict]
    report = LoadReport(tuple(loaded), tuple(missing), tuple(unexpected), tuple(mismatched))
    if strict and not report.ok:
        raise CheckpointMismatchError(
            f"the checkpoint does not fit {type(model).__name__}: {report}. Build the model to "
            "match the checkpoint (e.g. the same num_classes), or pass strict=False to load the "
            "keys that fit"
        )
    model.load_state_dict({key: state_dict[key] for key in loaded}, strict=False)
    return report


def _older_flags(key: str, tensor: torch.Tensor) -> bool:
    """A quantization module's saved flags from before flags were added at the end: they load
    (the new ones keep their current values; saved_flags.py)."""
    return key.endswith("._extra_state") and isinstance(tensor, torch.Tensor) and tensor.ndim == 1


def _align_ddp_prefix(
    state_dict: dict[str, torch.Tensor], model_keys: Iterable[str]
) -> dict[str, torch.Tensor]:
    """Drop the "module." levels a checkpoint has beyond the model's own.

    Counting levels rather than always stripping keeps a wrapper whose own child is named
    `module` (the QAT wrappers) loadable from its unwrapped and DDP-wrapped checkpoints alike.
    """
    extra = _shared_ddp_levels(state_dict) - _shared_ddp_levels(model_keys)
    if extra <= 0:
        return state_dict
    cut = len(_DDP_PREFIX) * extra
    return {key[cut:]: tensor for key, tensor in state_dict.items()}


def _shared_ddp_levels(keys: Iterable[str]) -> int:
    keys = list(keys)
    if not keys:
        return 0
    levels = 0
    while all(key.startswith(_DDP_PREFIX * (levels + 1)) for key in keys):
        levels += 1
    return levels


def _all_tensors(mapping: Mapping) -> bool:
    return bool(mapping) and all(isinstance(value, torch.Tensor) for value in mapping.values())


def load_checkpoint_into(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    mode: str | None,
    example_input: torch.Tensor,
    origin: str,
    model_name: str,
    head: str | None = None,
    config: QuantizationConfig | None = None,
) -> nn.Module:
    """Load a float or quantized checkpoint into a float model, wrapping it for `mode` first.

    The one way a checkpoint that may carry ranges is loaded (get_model and the engine use it).
    mode: None for the float model, else a wrapper mode ("train", "calibrate", "test"); the
    checkpoint's float keys load into the float model, the model is wrapped, then its range
    entries load into the wrapper's `.module`. head: the classifier's attribute, whose entries
    may have another number of classes (they are skipped with a warning); None: exact fit.
    A quantized checkpoint needs a mode. A float checkpoint wrapped for "train" or "calibrate"
    starts its ranges from their initial clip (they learn from data); for "test" a checkpoint
    without ranges raises CheckpointMismatchError naming them. config: how the wrapper
    quantizes (default QuantizationConfig()).
    """
    report = load_weights(model, state_dict, strict=False)
    skipped = [m for m in report.mismatched if head is not None and m.key.startswith(f"{head}.")]
    if report.missing or len(skipped) != len(report.mismatched):
        raise CheckpointMismatchError(
            f"checkpoint {origin} does not fit {model_name}: {report}. Use a checkpoint of "
            f"{model_name} (with its number of classes)"
        )
    if report.unexpected and mode is None:
        raise CheckpointMismatchError(
            f"checkpoint {origin} does not fit the float {model_name}: {report}. A QAT or "
            "calibrated checkpoint needs a quantized mode: pass qat='test' or 'train' (--qat "
            "on the command line); otherwise it is from another model"
        )
    if skipped:
        logger.warning(
            "%s: the head has another number of classes, so %s were skipped and keep their "
            "random initialisation; everything else was loaded",
            origin,
            ", ".join(map(str, skipped)),
        )
    if mode is None:
        return model
    wrapped = wrap_model(model, mode, example_input, config=config)
    _load_range_state(wrapped.module, {k: state_dict[k] for k in report.unexpected}, origin, mode)
    return wrapped


def _load_range_state(
    module: nn.Module, range_state: Mapping[str, torch.Tensor], origin: str, mode: str
) -> None:
    """Load a checkpoint's range entries into a wrapped model; "test" needs every range."""
    if range_state:
        report = load_weights(module, range_state, strict=False)
    else:  # a float checkpoint: nothing to load, every range entry is missing
        report = LoadReport((), tuple(module.state_dict()), (), ())
    if report.unexpected or report.mismatched:
        raise CheckpointMismatchError(
            f"weights {origin} hold keys that neither the float model nor its quantization "
            f"wrapper has: {LoadReport((), (), report.unexpected, report.mismatched)}"
        )
    # Named by their state_dict keys (a range after a folded BN is saved under the BN's name).
    absent = [k.removesuffix(".clips_act") for k in report.missing if k.endswith(".clips_act")]
    ranges = named_activation_ranges(module)
    if mode == TEST and absent:
        raise CheckpointMismatchError(
            f"weights {origin} hold no range for {len(absent)} activation range(s) "
            f"({preview(absent)}): a quantized model (export --qat, evaluate --qat, simulate) "
            "needs a QAT or calibrated checkpoint (q.module.state_dict()); use a float "
            "checkpoint in float (without --qat), or calibrate it first (edgezoo calibrate). "
            "--allow-uncalibrated only admits ranges a QAT run left untrained, not a float "
            "checkpoint's missing ones"
        )
    if absent:
        logger.info(
            "%s: %d activation ranges start from their initial clip (%s) and learn from data",
            origin,
            len(absent),
            preview(absent),
        )
    untrained = [name for name, pact in ranges.items() if not pact.trained]
    if mode == TEST and untrained:
        logger.warning(
            "%s: %d activation ranges never saw data (%s): they hold the initial clip",
            origin,
            len(untrained),
            preview(untrained),
        )
