"""A task: what a model's outputs mean, and how they are trained, measured, exported and shown.

The engine, export, simulation, CLI and demo ask the model's task (edgezoo.tasks.get_task)
instead of testing its name, so a new task is one module that subclasses Task and registers an
instance (edgezoo/tasks/registry.py).
"""

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import onnx
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgezoo.data.sources import TaskData
from edgezoo.data.transforms import Size

Reduce = Callable[[Tensor], Tensor]
"""Sums a tensor over processes (the engine passes all_reduce_sum under torch.distributed)."""


def no_reduce(tensor: Tensor) -> Tensor:
    """One process: the sums are already complete."""
    return tensor


class Meter(Protocol):
    """Accumulates a task's metrics batch by batch (sums only, so processes can add theirs)."""

    def update(self, outputs: Tensor, targets: Tensor, loss: Tensor) -> None: ...

    def compute(self, reduce: Reduce = no_reduce) -> dict[str, float]: ...


@dataclass(frozen=True)
class DemoDefaults:
    """`edgezoo demo`'s settings for a task, chosen to finish in minutes on two CPU cores."""

    model: str
    data: str
    full_data: str
    input_size: int
    batch_size: int
    float_epochs: int
    qat_epochs: int
    calibration_batches: int
    lr: float
    qat_lr: float
    # (train, val) composite scenes; None: one per item.
    scenes: tuple[int | None, int | None] = (None, None)
    # Whether torchvision publishes weights for the backbone only (not the whole model).
    backbone_weights: bool = False


class Task:
    """One task's loss, metrics, data, exported outputs, TIDL settings and presentation."""

    name: ClassVar[str]
    primary_metric: ClassVar[str]
    """The metric that ranks checkpoints (higher is better)."""
    metric_label: ClassVar[str]
    """How reports and plots name the primary metric."""
    output_rank: ClassVar[int]
    """The rank of the model's (logit) output: how a bare graph's task is recognised."""
    tidl_post_proc_type: ClassVar[int]
    """TIDL's postProcType (edgezoo.tidl.options)."""
    export_argmax: ClassVar[bool] = False
    """Whether the demo's export ends the graph in TIDL's ArgMax."""
    composite_scenes: ClassVar[bool] = False
    """Whether the built-in Fashion-MNIST sets of this task are composite scenes (say so)."""
    builtin_input_size: ClassVar[int]
    """The input size for the built-in Fashion-MNIST sets."""
    demo: ClassVar[DemoDefaults]
    collate_fn: ClassVar[Callable[[list[Any]], Any] | None] = None
    """How a DataLoader batches this task's items (None: torch's default collation)."""
    supports_distillation: ClassVar[bool] = True
    """Whether edgezoo's logit distillation (edgezoo.distillation) applies to its outputs."""

    def bind(self, model: nn.Module) -> "Task":
        """This task for `model` (a task whose loss or metrics depend on the model, as
        detection's prior boxes do, returns a copy that holds what it needs)."""
        return self

    def bind_graph(self, proto: "onnx.ModelProto") -> "Task":
        """This task for an exported graph (what `bind` is for a model)."""
        return self

    def make_meter(
        self, num_classes: int, ignore_index: int | None, device: torch.device | str = "cpu"
    ) -> Meter:
        """A fresh meter of this task's metrics."""
        raise NotImplementedError

    def outputs(self, output: Tensor | dict[str, Tensor]) -> Tensor:
        """The tensor the loss and metrics read from a model's output."""
        return output["out"] if isinstance(output, dict) else output

    def loss(
        self, outputs: Tensor, targets: Tensor, ignore_index: int | None, label_smoothing: float
    ) -> Tensor:
        """The training loss against labels: cross entropy (per pixel for dense outputs)."""
        ignore = -100 if ignore_index is None else ignore_index
        return F.cross_entropy(
            outputs, targets, ignore_index=ignore, label_smoothing=label_smoothing
        )

    def build_data(
        self,
        data: str | os.PathLike,
        input_size: Size,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        num_classes: int | None,
        augment: bool,
        composite_seed: int,
        composite_scenes: tuple[int | None, int | None],
    ) -> TaskData:
        """This task's train and validation sets from a data name or directory."""
        raise NotImplementedError

    def example_picture(
        self,
        model: nn.Module,
        dataset: Any,
        classes: Sequence[str],
        normalisation: tuple[Sequence[float], Sequence[float]],
        path: "os.PathLike[str]",
    ) -> bool:
        """Save a picture of the model's results on the first items of `dataset` where the
        task has one to show (True), else write nothing (False)."""
        return False

    def model_config_postprocess(self, argmax: bool) -> dict[str, object]:
        """What edgeai-modelzoo's model configuration says runs after the graph."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
