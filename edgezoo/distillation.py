"""DistillationLoss: the float model teaches the quantized one, with or without labels.

Knowledge distillation (Hinton et al. 2015) on temperature-softened logits: the student's
log-probabilities at temperature T are pulled towards the teacher's probabilities at T by the
KL divergence, scaled by T^2 so its gradients keep their size as T changes. For segmentation
the divergence is taken per pixel (over the class axis) and averaged over the pixels that are
not ignored. With labels, the task loss (cross entropy) is mixed in:

    loss = weight * T^2 * KL(teacher_T || student_T) + (1 - weight) * cross_entropy(student, y)

Without labels (targets=None, or weight=1) the loss is the distillation term alone: the float
model teaches the QAT model on unlabelled images, as TI's newest tooling does.
"""

import torch.nn.functional as F
from torch import Tensor, nn

from edgezoo.errors import UsageError

__all__ = ["DistillationLoss"]


class DistillationLoss(nn.Module):
    """KL divergence on temperature-softened logits, plus the task loss when labels are given.

    temperature: T > 0 (2 by default; 1 compares the plain distributions). weight: the share of
    the distillation term in [0, 1] (0.5 by default; 1 ignores the labels). ignore_index:
    target value of pixels left out of both terms (segmentation). label_smoothing: for the
    cross-entropy term.
    """

    def __init__(
        self,
        temperature: float = 2.0,
        weight: float = 0.5,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise UsageError(f"temperature must be > 0, got {temperature!r}")
        if not 0.0 <= weight <= 1.0:
            raise UsageError(f"weight is the distillation term's share in [0, 1], got {weight!r}")
        self.temperature = float(temperature)
        self.weight = float(weight)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing

    def forward(self, student: Tensor, teacher: Tensor, targets: Tensor | None = None) -> Tensor:
        """student and teacher logits (N, C) or (N, C, H, W); targets (N) / (N, H, W) or None."""
        if student.shape != teacher.shape:
            raise UsageError(
                f"student logits {tuple(student.shape)} and teacher logits "
                f"{tuple(teacher.shape)} differ in shape: distil a model of the same task and "
                "number of classes"
            )
        distill = self._distillation(student, teacher.detach(), targets)
        if targets is None or self.weight == 1.0:
            return distill
        task = F.cross_entropy(
            student,
            targets,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
        )
        return self.weight * distill + (1.0 - self.weight) * task

    def _distillation(self, student: Tensor, teacher: Tensor, targets: Tensor | None) -> Tensor:
        """T^2 * KL(teacher_T || student_T), per sample (or pixel), averaged over kept ones."""
        t = self.temperature
        log_student = F.log_softmax(student / t, dim=1)
        log_teacher = F.log_softmax(teacher / t, dim=1)
        per_item = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=1)
        if targets is not None and per_item.dim() > 1:
            kept = targets != self.ignore_index
            per_item = per_item[kept] if bool(kept.any()) else per_item.new_zeros(1)
        return per_item.mean() * t * t

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:g}, weight={self.weight:g}"
