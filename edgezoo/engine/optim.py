"""Optimizers (SGD, AdamW) and per-epoch learning-rate schedules (cosine, step)."""

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn
from torch.optim import SGD, AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, StepLR

from edgezoo.errors import UsageError
from edgezoo.quantization.learned_range import learned_range_parameters
from edgezoo.quantization.modes import CALIBRATE

if TYPE_CHECKING:
    from edgezoo.engine.config import TrainConfig

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")


def build_optimizer(
    model: nn.Module,
    name: str = "sgd",
    lr: float = 0.05,
    weight_decay: float = 4e-5,
    momentum: float = 0.9,
    range_lr: float | None = None,
) -> Optimizer:
    """SGD (Nesterov momentum) or AdamW over the trainable parameters.

    Weight decay skips biases and normalisation weights (1-d tensors): decaying them only
    shrinks scales the network needs. Learned ranges' log2 thresholds (QAT with learn_ranges)
    form a group of their own at range_lr (default lr), never decayed.
    """
    thresholds = learned_range_parameters(model)
    learned = {id(parameter) for parameter in thresholds}
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad and id(parameter) not in learned:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if thresholds:
        groups.append({"params": thresholds, "weight_decay": 0.0, "lr": range_lr or lr})
    if name == "sgd":
        return SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    if name == "adamw":
        return AdamW(groups, lr=lr)
    raise UsageError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")


def build_scheduler(
    optimizer: Optimizer,
    name: str = "cosine",
    epochs: int = 1,
    warmup_epochs: int = 0,
    step_size: int | None = None,
    gamma: float = 0.1,
) -> LRScheduler:
    """A schedule stepped once per epoch.

    cosine: linear warm-up over warmup_epochs, then a half cosine to zero at the end of the run.
    step: multiply by gamma every step_size epochs (default: a third of the run).
    constant: the base learning rate throughout (QAT fine-tuning often wants this).
    """
    if name == "cosine":

        def factor(epoch: int) -> float:
            if epoch < warmup_epochs:
                return (epoch + 1) / (warmup_epochs + 1)
            span = max(1, epochs - warmup_epochs)
            return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / span))

        return LambdaLR(optimizer, factor)
    if name == "step":
        return StepLR(optimizer, step_size=step_size or max(1, epochs // 3), gamma=gamma)
    if name == "constant":
        return LambdaLR(optimizer, lambda epoch: 1.0)
    raise UsageError(f"unknown schedule {name!r}; use one of {', '.join(SCHEDULES)}")


@dataclass
class Optimization:
    """The optimizer and learning-rate schedule of a run (None for calibration)."""

    optimizer: Optimizer | None = None
    scheduler: LRScheduler | None = None

    @classmethod
    def build(cls, model: nn.Module, config: "TrainConfig") -> "Optimization":
        if config.mode == CALIBRATE:
            return cls()
        optimizer = build_optimizer(
            model,
            config.optimizer,
            config.lr,
            config.weight_decay,
            config.momentum,
            range_lr=config.range_lr,
        )
        scheduler = build_scheduler(
            optimizer,
            config.schedule,
            config.epochs,
            config.warmup_epochs,
            config.step_size,
            config.gamma,
        )
        return cls(optimizer, scheduler)

    def state(self) -> dict[str, Any]:
        """The optimizer and scheduler states for a checkpoint."""
        return {
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
        }

    def load(self, checkpoint: dict[str, Any]) -> None:
        if self.optimizer is not None:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
