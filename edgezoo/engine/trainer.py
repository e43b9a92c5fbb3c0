"""One loop for float training, PTQ calibration and QAT; evaluation; checkpoints and resume.

The three modes differ only in what a step does: float and QAT back-propagate and step the
optimizer (QAT's wrapper quantizes inside its forward and follows the epoch freeze schedule);
calibration runs the calibration wrapper's forward without gradients.
"""

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm import tqdm

from edgezoo.distillation import DistillationLoss
from edgezoo.engine.checkpoint import save_checkpoint
from edgezoo.engine.config import TrainConfig
from edgezoo.engine.distributed import (
    DistContext,
    all_reduce_sum,
    as_distributed_error,
    average_buffers,
    average_floating_state,
    replica_divergence,
    setup_distributed,
)
from edgezoo.engine.history import write_history
from edgezoo.engine.optim import Optimization
from edgezoo.engine.resume import check_resumable
from edgezoo.engine.rng import capture_rng_state, restore_rng_state, seed_epoch
from edgezoo.engine.run_dir import BEST, LAST, remove_stale_run_partials
from edgezoo.errors import DataError, TrainingDivergedError, UsageError
from edgezoo.hub import read_checkpoint
from edgezoo.quantization.modes import CALIBRATE, QAT_RUN
from edgezoo.tasks import get_task
from edgezoo.weights import load_weights

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "edgezoo-run-1"


@dataclass
class FitResult:
    """What a run produced: per-epoch history, the best epoch's record and the final one."""

    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    out_dir: Path | None

    @property
    def final(self) -> dict[str, Any]:
        """The last epoch's record."""
        return self.history[-1]


class ShardSampler(Sampler[int]):
    """Rank r of w takes items r, r + w, ...: every item evaluated exactly once, no padding."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def weights_module(model: nn.Module, mode: str) -> nn.Module:
    """The module whose state_dict a checkpoint holds: for QAT and calibration the user's model
    inside the wrapper (original keys plus range buffers), else the model itself."""
    return model.module if mode in (QAT_RUN, CALIBRATE) else model


Criterion = Callable[[Tensor, Tensor, Tensor], Tensor]
"""(inputs, logits, targets) -> the training loss."""


def _criterion(config: TrainConfig, teacher: nn.Module | None) -> Criterion | None:
    """The training loss of a run when it is not the task's own (None): distillation from the
    float teacher (without labels when config.labels is False)."""
    if not config.distill:
        return None
    if not get_task(config.task).supports_distillation:
        raise UsageError(
            f"distillation matches logits, which the {config.task} task's outputs are not; "
            "train without distill (CLI: without --distill)"
        )
    if teacher is None:
        raise UsageError(
            "distill=True needs the float model to learn from: fit(..., teacher=float_model)"
        )
    teacher.eval()  # its BN normalises with running statistics; no_grad below keeps it fixed
    distillation = DistillationLoss(
        config.distill_temperature,
        config.distill_weight,
        -100 if config.ignore_index is None else config.ignore_index,
        config.label_smoothing,
    )

    def criterion(inputs: Tensor, logits: Tensor, targets: Tensor) -> Tensor:
        with torch.no_grad():
            teacher_logits = get_task(config.task).outputs(teacher(inputs))
        return distillation(logits, teacher_logits, targets if config.labels else None)

    return criterion


def _loader(
    dataset: Dataset, config: TrainConfig, sampler: Sampler, *, drop_last: bool
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        collate_fn=get_task(config.task).collate_fn,
        num_workers=config.num_workers,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
    )


def run_epoch(
    model: nn.Module,
    loader: DataLoader,
    config: TrainConfig,
    device: torch.device,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    train: bool = True,
    after_step: Callable[[], None] | None = None,
    progress: bool = True,
    desc: str = "",
    criterion: Criterion | None = None,
) -> dict[str, float]:
    """One pass over loader; returns the task's metrics reduced over all ranks.

    train=True puts the model in train mode (batch statistics, range updates); with an
    optimizer each step back-propagates, without one the pass runs under no_grad (calibration).
    criterion: the training loss (default: cross entropy); metrics always use the labels.
    """
    model.train(train)
    task = get_task(config.task).bind(model)
    meter = task.make_meter(config.num_classes, config.ignore_index, device)
    total = len(loader) if config.max_batches is None else min(len(loader), config.max_batches)
    grad = optimizer is not None
    bar = tqdm(
        loader, total=total, desc=desc, disable=not progress, leave=False, dynamic_ncols=True
    )
    for step, (inputs, targets) in enumerate(bar):
        if step >= total:
            break
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with torch.set_grad_enabled(grad):
            logits = task.outputs(model(inputs))
            if criterion is None:
                loss = task.loss(logits, targets, config.ignore_index, config.label_smoothing)
            else:
                loss = criterion(inputs, logits, targets)
        if grad:
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"the loss became {loss.item()} at step {step}: lower the learning rate "
                    "(--lr) or check the input data"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if after_step is not None:
            after_step()
        meter.update(logits, targets, loss)
        if progress:
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    return meter.compute(all_reduce_sum)


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    config: TrainConfig,
    ctx: DistContext | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Metrics of model on dataset in eval mode (each rank takes a shard; results reduced)."""
    ctx = ctx or setup_distributed(config.device)
    model.to(ctx.device)
    loader = _loader(
        dataset, config, ShardSampler(len(dataset), ctx.rank, ctx.world_size), drop_last=False
    )
    with torch.no_grad():
        return run_epoch(
            model,
            loader,
            config,
            ctx.device,
            train=False,
            progress=progress and ctx.is_main,
            desc="eval",
        )


def _start_epoch(model: nn.Module, epoch: int, config: TrainConfig) -> dict[str, Any]:
    """Set a quantization wrapper's state for the epoch about to start; return it for the log.

    QAT follows its freeze schedule over this run's epochs (by default TI's: BN frozen from
    epochs//2 - 1, ranges from epochs//2 + 1), set from the epoch number alone so a resumed run
    agrees; calibration halves its bias step each epoch.
    """
    if config.mode == QAT_RUN:
        from edgezoo.quantization import QATSchedule

        schedule = QATSchedule(config.epochs, config.bn_freeze_epoch, config.range_freeze_epoch)
        schedule.step(model, epoch)
        return {
            "bn_frozen": epoch >= schedule.bn_freeze_epoch,
            "ranges_frozen": epoch >= schedule.range_freeze_epoch,
        }
    if config.mode == CALIBRATE:
        model.start_epoch(epoch)
    return {}


@dataclass
class _Progress:
    """Where a run stands: the epochs done, their records and the best one."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    epochs_done: int = 0


def _resume(
    out_dir: Path, owner: nn.Module, optimization: Optimization, config: TrainConfig
) -> _Progress:
    """Load out_dir/last.pth into the model, optimizer and RNGs; return the run's progress."""
    checkpoint = read_checkpoint(out_dir / LAST)
    check_resumable(checkpoint["config"], config, out_dir / LAST)
    load_weights(owner, checkpoint["model"], strict=True)
    optimization.load(checkpoint)
    restore_rng_state(checkpoint["rng"])
    logger.info("resuming %s after epoch %d of %d", out_dir, checkpoint["epoch"], config.epochs)
    return _Progress(checkpoint["history"], checkpoint["best"], checkpoint["epoch"])


def _checkpoint_state(
    owner: nn.Module,
    optimization: Optimization,
    progress: _Progress,
    config: TrainConfig,
    ctx: DistContext,
) -> dict[str, Any]:
    """Everything resume needs, as written to last.pth / best.pth."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model": owner.state_dict(),
        **optimization.state(),
        "epoch": progress.epochs_done,
        "world_size": ctx.world_size,
        "rng": capture_rng_state(),
        "config": config.to_dict(),
        "history": progress.history,
        "best": progress.best,
    }


@dataclass
class _Run:
    """What one fit() call trains with: model views, data, optimisation and where it writes."""

    model: nn.Module
    owner: nn.Module
    step_module: nn.Module
    train_loader: DataLoader
    train_sampler: DistributedSampler
    val_set: Dataset
    config: TrainConfig
    ctx: DistContext
    optimization: Optimization
    out_dir: Path | None
    progress_bars: bool
    criterion: Criterion | None

    def epoch(self, epoch: int) -> dict[str, Any]:
        """Train (or calibrate) one epoch, validate, and return the epoch's record."""
        config, ctx = self.config, self.ctx
        started = time.perf_counter()
        seed_epoch(config.seed, epoch, ctx.rank)
        self.train_sampler.set_epoch(epoch)
        record: dict[str, Any] = {"epoch": epoch + 1, **_start_epoch(self.model, epoch, config)}
        optimizer = self.optimization.optimizer
        after_step = None
        if ctx.distributed and optimizer is None:
            # Calibration has no gradients for DDP to average: average the replicas instead.
            after_step = partial(average_floating_state, self.owner)
        train_metrics = run_epoch(
            self.step_module,
            self.train_loader,
            config,
            ctx.device,
            optimizer=optimizer,
            after_step=after_step,
            progress=self.progress_bars,
            desc=f"{config.mode} {'train' if optimizer else 'calibrate'} "
            f"{epoch + 1}/{config.epochs}",
            criterion=self.criterion,
        )
        if optimizer is not None:
            record["lr"] = optimizer.param_groups[0]["lr"]
            self.optimization.scheduler.step()
        if ctx.distributed:
            average_buffers(self.owner)  # BN statistics: one per rank's shard -> their mean
        val_metrics = evaluate(self.model, self.val_set, config, ctx, progress=self.progress_bars)
        record.update({f"train_{k}": v for k, v in train_metrics.items()})
        record.update({f"val_{k}": v for k, v in val_metrics.items()})
        if ctx.distributed:
            record["replica_divergence"] = replica_divergence(self.owner)
        record["time_s"] = time.perf_counter() - started
        return record

    def finish_epoch(self, progress: _Progress, record: dict[str, Any]) -> None:
        """Add the record, keep the best epoch, log and (rank 0) write the checkpoints."""
        metric = f"val_{get_task(self.config.task).primary_metric}"
        progress.history.append(record)
        progress.epochs_done = record["epoch"]
        improved = progress.best is None or record[metric] > progress.best[metric]
        if improved:
            progress.best = record
        if not self.ctx.is_main:
            return
        logger.info(_describe(record, self.config))
        if self.out_dir is not None:
            state = _checkpoint_state(
                self.owner, self.optimization, progress, self.config, self.ctx
            )
            _write_epoch(self.out_dir, state, improved)


def _prepare_run(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    config: TrainConfig,
    out_dir: Path | None,
    progress: bool,
    teacher: nn.Module | None = None,
) -> _Run:
    """Move the model (and teacher) to its device, wrap it for DDP, and build its loader,
    optimizer and loss."""
    ctx = setup_distributed(config.device)
    model.to(ctx.device)
    if teacher is not None:
        teacher.to(ctx.device)
    owner = weights_module(model, config.mode)
    optimization = Optimization.build(model, config)
    step_module = model
    if ctx.distributed and optimization.optimizer is not None:
        device_ids = [ctx.device] if ctx.device.type == "cuda" else None
        step_module = DistributedDataParallel(model, device_ids=device_ids)
    sampler = DistributedSampler(
        train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=config.seed
    )
    # Calibration keeps every item; training drops a ragged last batch (BatchNorm needs > 1).
    loader = _loader(train_set, config, sampler, drop_last=optimization.optimizer is not None)
    if len(loader) == 0:
        raise DataError(
            f"the training set ({len(train_set)} items over {ctx.world_size} processes) is "
            f"smaller than one batch of {config.batch_size}; lower --batch-size"
        )
    return _Run(
        model,
        owner,
        step_module,
        loader,
        sampler,
        val_set,
        config,
        ctx,
        optimization,
        out_dir,
        progress and ctx.is_main,
        _criterion(config, teacher),
    )


def fit(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    config: TrainConfig,
    out_dir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    teacher: nn.Module | None = None,
) -> FitResult:
    """Train (float / QAT) or calibrate (PTQ) model for config.epochs, validating every epoch.

    teacher: the float model a QAT run distils from when config.distill (edgezoo.
    DistillationLoss; without labels when config.labels is False); it is put in eval mode and
    never updated. With
    out_dir, rank 0 writes last.pth and best.pth after every epoch (atomically) and
    metrics.csv / metrics.json; resume=True continues from out_dir/last.pth exactly where the
    interrupted run stopped. Under torchrun the same call trains with DistributedDataParallel.
    """
    out_dir = Path(out_dir) if out_dir is not None else None
    if resume and out_dir is None:
        raise UsageError("resume needs the out_dir that holds last.pth")
    run = _prepare_run(model, train_set, val_set, config, out_dir, progress, teacher)
    if run.ctx.is_main and out_dir is not None:
        remove_stale_run_partials(out_dir)
    state = _resume(out_dir, run.owner, run.optimization, config) if resume else _Progress()
    epoch = state.epochs_done
    try:
        for epoch in range(state.epochs_done, config.epochs):
            run.finish_epoch(state, run.epoch(epoch))
    except RuntimeError as err:
        lost = as_distributed_error(err, run.ctx.rank) if run.ctx.distributed else None
        if lost is None:
            raise
        raise lost from err
    except KeyboardInterrupt:
        if run.ctx.is_main and out_dir is not None:
            saved = f"{out_dir / LAST} holds epoch {epoch}" if epoch else "no epoch had finished"
            logger.warning(
                "interrupted during epoch %d; %s; continue with --resume", epoch + 1, saved
            )
        raise
    return FitResult(state.history, state.best, out_dir)


def _write_epoch(out_dir: Path, state: dict[str, Any], improved: bool) -> None:
    """last.pth (and best.pth when the epoch improved), then the metrics files, each atomic."""
    save_checkpoint(state, out_dir / LAST)
    if improved:
        save_checkpoint(state, out_dir / BEST)
    write_history(out_dir, state["history"], state["config"], state["best"])


def _describe(record: dict[str, Any], config: TrainConfig) -> str:
    parts = [f"{config.mode} epoch {record['epoch']}/{config.epochs}"]
    for key, value in record.items():
        if key != "epoch" and isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
    return ", ".join(parts)
