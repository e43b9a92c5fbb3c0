"""TrainConfig: everything that decides a run's result, saved in every checkpoint."""

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from edgezoo.engine.recipes import DEFAULT_RANGE_LR
from edgezoo.errors import UsageError
from edgezoo.quantization.modes import CALIBRATE, FLOAT_RUN, RUN_MODES
from edgezoo.tasks import CLASSIFICATION, get_task

__all__ = ["MODES", "TrainConfig"]

MODES = RUN_MODES


@dataclass
class TrainConfig:
    """Everything that decides a run's result; saved in every checkpoint so resume repeats it."""

    task: str = CLASSIFICATION
    mode: str = FLOAT_RUN
    num_classes: int = 10
    epochs: int = 1
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 4e-5
    schedule: str = "cosine"
    warmup_epochs: int = 0
    step_size: int | None = None
    gamma: float = 0.1
    label_smoothing: float = 0.0
    ignore_index: int | None = 255
    max_batches: int | None = None
    num_workers: int = 0
    seed: int = 0
    device: str | None = None
    # QAT's freeze epochs (counted from 0); None: TI's rule (epochs//2 - 1 and epochs//2 + 1).
    bn_freeze_epoch: int | None = None
    range_freeze_epoch: int | None = None
    # Distillation from a float teacher (fit(teacher=...)): see edgezoo.DistillationLoss.
    distill: bool = False
    distill_temperature: float = 2.0
    distill_weight: float = 0.5
    labels: bool = True
    # The learning rate of learned ranges' log2 thresholds (QuantizationConfig.learn_ranges).
    range_lr: float = DEFAULT_RANGE_LR
    # Free-form description of the run (model name, data, input size), kept with checkpoints.
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        get_task(self.task)
        if self.epochs < 1 or self.batch_size < 1:
            raise UsageError("epochs and batch_size must be at least 1")
        if not self.labels and not self.distill:
            raise UsageError(
                "training without labels needs a teacher to learn from: set distill=True "
                "(--distill) and give the float model as teacher"
            )
        if self.distill and self.mode == CALIBRATE:
            raise UsageError("calibration has no loss to distil into: distil in QAT (--qat)")

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON- and torch.load(weights_only)-safe)."""
        return dataclasses.asdict(self)
