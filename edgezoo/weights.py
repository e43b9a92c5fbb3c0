"""Load a state_dict or checkpoint into a model and report exactly which keys fitted."""

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgezoo import hub
from edgezoo.errors import CheckpointMismatchError

WeightsSource = Mapping[str, Any] | str | os.PathLike
# Training scripts commonly nest the weights under one of these keys.
_NESTED_STATE_DICT_KEYS = ("state_dict", "model")
_DDP_PREFIX = "module."
_PREVIEW = 5


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
            parts.append(
                f"{len(self.missing)} missing in the checkpoint ({_preview(self.missing)})"
            )
        if self.unexpected:
            parts.append(
                f"{len(self.unexpected)} unexpected, not in the model ({_preview(self.unexpected)})"
            )
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} shape mismatches ({_preview(self.mismatched)})")
        return "; ".join(parts)


def read_state_dict(source: WeightsSource) -> dict[str, torch.Tensor]:
    """A flat state_dict from a state_dict, a checkpoint dict, a path or a file:// URL."""
    if isinstance(source, str | os.PathLike):
        source = hub.load_checkpoint(source)
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
                f"{_preview(source.keys())}"
            )
        source = nested
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
        elif tensor.shape != model_state[key].shape:
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


def _preview(items: Iterable[Any]) -> str:
    items = list(items)
    shown = ", ".join(map(str, items[:_PREVIEW]))
    return shown if len(items) <= _PREVIEW else f"{shown}, ... ({len(items)} in all)"
