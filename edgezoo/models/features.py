"""Backbone feature maps, as timm's `features_only`: the maps a classifier computes on its way to
its head, returned as a list, with what each map is (`feature_info`).

A classifier family says which of its modules run in order (its trunk) and which of them end a
stage (`FeaturePlan`); `FeatureMaps` keeps those modules under their own names (so the
classifier's checkpoints load, less the head) and returns the chosen stages' outputs.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from edgezoo.errors import UsageError
from edgezoo.module_state import kept_modes

__all__ = ["FeatureInfo", "FeatureMaps", "FeaturePlan", "feature_maps"]

PROBE_SIZE = 64
"""The input side the reductions are measured at (a multiple of every stride in the zoo)."""


@dataclass(frozen=True)
class FeaturePlan:
    """A trunk: its modules in execution order (dotted names; a Sequential's items by index) and
    the ones whose outputs end a stage (the feature maps on offer, shallow to deep)."""

    steps: tuple[str, ...]
    taps: tuple[str, ...]


@dataclass(frozen=True)
class FeatureInfo:
    """One feature map: the module it is taken after, its channels and its reduction (input size
    over map size)."""

    module: str
    channels: int
    reduction: int


class FeatureMaps(nn.Module):
    """The feature maps of `model`'s trunk at `out_indices` (indices into its plan's taps;
    negative counts from the deepest), as a list, shallow to deep.

    Modules after the deepest chosen map (the head, deeper stages) are left out; their
    checkpoint keys are named in `unused_checkpoint_prefixes`. `feature_info` lists what each
    returned map is; `channels` and `reductions` are its columns.
    """

    def __init__(
        self, model: nn.Module, plan: FeaturePlan, out_indices: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        chosen = _chosen_taps(plan, out_indices)
        last_step = max(plan.steps.index(tap) for tap in chosen)
        self.steps = plan.steps[: last_step + 1]
        self.taps = tuple(chosen)
        self.unused_checkpoint_prefixes = _keep_modules(self, model, self.steps)
        self.feature_info = _measure(self)

    @property
    def channels(self) -> list[int]:
        return [info.channels for info in self.feature_info]

    @property
    def reductions(self) -> list[int]:
        return [info.reduction for info in self.feature_info]

    def forward(self, x: Tensor) -> list[Tensor]:
        maps = []
        for step in self.steps:
            # Looked up by name each time: quantization replaces modules in their slots.
            x = self.get_submodule(step)(x)
            if step in self.taps:
                maps.append(x)
        return maps


def _chosen_taps(plan: FeaturePlan, out_indices: Sequence[int] | None) -> list[str]:
    count = len(plan.taps)
    indices = range(count) if out_indices is None else list(out_indices)
    if not indices or any(not -count <= i < count for i in indices):
        raise UsageError(
            f"out_indices {list(indices)} must pick from the {count} feature maps on offer "
            f"(0..{count - 1}, or negative from the deepest): {', '.join(plan.taps)}"
        )
    chosen = [plan.taps[i] for i in indices]
    if len(set(chosen)) != len(chosen) or chosen != sorted(chosen, key=plan.taps.index):
        raise UsageError(f"out_indices {list(indices)} must be distinct and shallow to deep")
    return chosen


def _keep_modules(owner: nn.Module, model: nn.Module, steps: Sequence[str]) -> tuple[str, ...]:
    """Register the trunk modules `steps` reach under their own names (a Sequential cut after
    the last index used); return the key prefixes of what is left out."""
    used: dict[str, int | None] = {}
    for step in steps:
        top, _, index = step.partition(".")
        used[top] = max(used.get(top) or 0, int(index)) if index else None
    left_out = []
    for name, child in model.named_children():
        if name not in used:
            left_out += [f"{name}."] if child.state_dict() else []
            continue
        last = used[name]
        if last is not None:
            dropped = range(last + 1, len(child))
            left_out += [f"{name}.{i}." for i in dropped if child[i].state_dict()]
            child = child[: last + 1]
        owner.add_module(name, child)
    return tuple(left_out)


def _measure(maps: FeatureMaps) -> tuple[FeatureInfo, ...]:
    """Channels and reductions of the returned maps, from one small eval-mode forward."""
    parameter = next(maps.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    probe = torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE, device=device)
    with kept_modes(maps), torch.no_grad():
        maps.eval()
        outputs = maps(probe)
    return tuple(
        FeatureInfo(tap, int(out.shape[1]), PROBE_SIZE // int(out.shape[-1]))
        for tap, out in zip(maps.taps, outputs, strict=True)
    )


def feature_maps(model: nn.Module, out_indices: Sequence[int] | None = None) -> FeatureMaps:
    """The feature maps of a zoo classifier that has a `feature_plan()` (ResNet family,
    MobileNetV2); UsageError naming the ones that do for any other model."""
    plan = getattr(model, "feature_plan", None)
    if plan is None:
        raise UsageError(
            f"{type(model).__name__} does not describe its stages: features_only is for the "
            "ResNet family and MobileNetV2"
        )
    return FeatureMaps(model, plan(), out_indices)
