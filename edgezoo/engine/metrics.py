"""Running metrics that are exact under DistributedDataParallel: each rank accumulates sums
(correct counts, a confusion matrix) and one all_reduce combines them before any ratio is taken."""

import torch
from torch import Tensor

from edgezoo.engine.distributed import all_reduce_sum
from edgezoo.tasks import CLASSIFICATION


class ClassificationMeter:
    """Loss, top-1 and top-5 accuracy (percent) over everything seen on every rank."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        # loss sum, sample count, top-1 correct, top-5 correct
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, logits: Tensor, targets: Tensor, loss: Tensor) -> None:
        """Add one batch (loss is the batch mean)."""
        k = min(5, self.num_classes)
        top = logits.topk(k, dim=1).indices
        hits = top.eq(targets[:, None])
        n = targets.numel()
        batch = torch.stack(
            [
                loss.detach().double() * n,
                torch.tensor(n, dtype=torch.float64, device=self.sums.device),
                hits[:, 0].sum().double(),
                hits.any(dim=1).sum().double(),
            ]
        )
        self.sums += batch.to(self.sums.device)

    def compute(self) -> dict[str, float]:
        """Reduce over ranks and return {"loss", "top1", "top5"} (top5 only with >= 5 classes)."""
        sums = all_reduce_sum(self.sums.clone())
        loss, n, top1, top5 = sums.tolist()
        n = max(n, 1.0)
        metrics = {"loss": loss / n, "top1": 100.0 * top1 / n}
        if self.num_classes >= 5:
            metrics["top5"] = 100.0 * top5 / n
        return metrics


class SegmentationMeter:
    """Loss, mIoU and pixel accuracy (percent) from a confusion matrix summed over ranks."""

    def __init__(
        self, num_classes: int, ignore_index: int | None = 255, device: torch.device | str = "cpu"
    ) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)
        self.loss_sum = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, batches

    @torch.no_grad()
    def update(self, logits: Tensor, targets: Tensor, loss: Tensor) -> None:
        """Add one batch: logits (N, C, H, W), targets (N, H, W) class ids."""
        predictions = logits.argmax(dim=1)
        valid = (targets >= 0) & (targets < self.num_classes)
        if self.ignore_index is not None:
            valid &= targets != self.ignore_index
        index = targets[valid] * self.num_classes + predictions[valid]
        counts = torch.bincount(index, minlength=self.num_classes**2)
        self.confusion += counts.view(self.num_classes, self.num_classes).to(self.confusion)
        n = targets.shape[0]
        self.loss_sum += torch.stack(
            [loss.detach().double().to(self.loss_sum.device) * n, self.loss_sum.new_tensor(n)]
        )

    def compute(self) -> dict[str, float]:
        """Reduce over ranks and return {"loss", "miou", "pixel_acc"}.

        mIoU averages the classes that occur in the targets or the predictions.
        """
        confusion = all_reduce_sum(self.confusion.clone())
        loss, n = all_reduce_sum(self.loss_sum.clone()).tolist()
        true_positive = confusion.diag()
        union = confusion.sum(0) + confusion.sum(1) - true_positive
        present = union > 0
        iou = true_positive[present] / union[present]
        total = confusion.sum()
        return {
            "loss": loss / max(n, 1.0),
            "miou": 100.0 * float(iou.mean()) if present.any() else 0.0,
            "pixel_acc": 100.0 * float(true_positive.sum() / total) if total > 0 else 0.0,
        }


def make_meter(
    task: str, num_classes: int, ignore_index: int | None = 255, device: torch.device | str = "cpu"
) -> ClassificationMeter | SegmentationMeter:
    """The meter of a task."""
    if task == CLASSIFICATION:
        return ClassificationMeter(num_classes, device)
    return SegmentationMeter(num_classes, ignore_index, device)


def primary_metric(task: str) -> str:
    """The metric that ranks checkpoints: top-1 for classification, mIoU for segmentation."""
    return "top1" if task == CLASSIFICATION else "miou"
