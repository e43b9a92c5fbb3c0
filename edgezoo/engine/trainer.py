"""One loop for float training, PTQ calibration and QAT; evaluation; checkpoints and resume.

The three modes differ only in what a step does: float and QAT back-propagate and step the
optimizer (QAT's wrapper quantizes inside its forward and follows the epoch freeze schedule);
calibration runs the calibration wrapper's forward without gradients.
"""

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm import tqdm

from edgezoo.engine.checkpoint import (
    BEST,
    LAST,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    seed_epoch,
)
from edgezoo.engine.distributed import (
    DistContext,
    average_floating_state,
    replica_divergence,
    setup_distributed,
)
from edgezoo.engine.history import write_history
from edgezoo.engine.metrics import make_meter, primary_metric
from edgezoo.engine.optim import build_optimizer, build_scheduler
from edgezoo.errors import CheckpointMismatchError, DataError
from edgezoo.weights import load_weights

logger = logging.getLogger(__name__)

MODES = ("float", "qat", "calibrate")
CHECKPOINT_FORMAT = "edgezoo-run-1"


@dataclass
class TrainConfig:
    """Everything that decides a run's result; saved in every checkpoint so resume repeats it."""

    task: str = "classification"
    mode: str = "float"
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
    # Free-form description of the run (model name, data, input size), kept with checkpoints.
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.task not in ("classification", "segmentation"):
            raise ValueError(f"unknown task {self.task!r}; use classification or segmentation")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON- and torch.load(weights_only)-safe)."""
        return dataclasses.asdict(self)


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
    return model.module if mode in ("qat", "calibrate") else model


def _logits(output: Tensor | dict[str, Tensor]) -> Tensor:
    return output["out"] if isinstance(output, dict) else output


def _loss(logits: Tensor, targets: Tensor, config: TrainConfig) -> Tensor:
    ignore = -100 if config.ignore_index is None else config.ignore_index
    return F.cross_entropy(
        logits, targets, ignore_index=ignore, label_smoothing=config.label_smoothing
    )


def _loader(
    dataset: Dataset, config: TrainConfig, sampler: Sampler, *, drop_last: bool
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
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
) -> dict[str, float]:
    """One pass over loader; returns the task's metrics reduced over all ranks.

    train=True puts the model in train mode (batch statistics, range updates); with an
    optimizer each step back-propagates, without one the pass runs under no_grad (calibration).
    """
    model.train(train)
    meter = make_meter(config.task, config.num_classes, config.ignore_index, device)
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
            logits = _logits(model(inputs))
            loss = _loss(logits, targets, config)
        if grad:
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the loss became {loss.item()} at step {step}; lower the learning rate"
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
    return meter.compute()


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

    QAT follows TI's freeze schedule over this run's epochs (BN frozen from epochs//2 - 1,
    ranges from epochs//2 + 1), set from the epoch number alone so a resumed run agrees;
    calibration halves its bias step each epoch.
    """
    if config.mode == "qat":
        from edgezoo.quantization import QATSchedule

        schedule = QATSchedule(config.epochs)
        schedule.step(model, epoch)
        return {
            "bn_frozen": epoch >= schedule.bn_freeze_epoch,
            "ranges_frozen": epoch >= schedule.range_freeze_epoch,
        }
    if config.mode == "calibrate":
        model.start_epoch(epoch)
    return {}


def _check_resumable(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    keys = ("task", "mode", "num_classes")
    differ = [
        f"{k}: saved {saved.get(k)!r}, now {getattr(config, k)!r}"
        for k in keys
        if saved.get(k) != getattr(config, k)
    ]
    saved_model = saved.get("metadata", {}).get("model")
    model = config.metadata.get("model")
    if saved_model and model and saved_model != model:
        differ.append(f"model: saved {saved_model!r}, now {model!r}")
    if differ:
        raise CheckpointMismatchError(
            f"cannot resume {path}: the run was started with other settings ({'; '.join(differ)}); "
            "resume with the same settings or start a new run in another directory"
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
) -> FitResult:
    """Train (float / QAT) or calibrate (PTQ) model for config.epochs, validating every epoch.

    With out_dir, rank 0 writes last.pth and best.pth after every epoch (atomically) and
    metrics.csv / metrics.json; resume=True continues from out_dir/last.pth exactly where the
    interrupted run stopped. Under torchrun the same call trains with DistributedDataParallel.
    """
    ctx = setup_distributed(config.device)
    out_dir = Path(out_dir) if out_dir is not None else None
    if resume and out_dir is None:
        raise ValueError("resume needs the out_dir that holds last.pth")
    model.to(ctx.device)
    owner = weights_module(model, config.mode)
    calibrating = config.mode == "calibrate"
    optimizer = scheduler = None
    if not calibrating:
        optimizer = build_optimizer(
            model, config.optimizer, config.lr, config.weight_decay, config.momentum
        )
        scheduler = build_scheduler(
            optimizer,
            config.schedule,
            config.epochs,
            config.warmup_epochs,
            config.step_size,
            config.gamma,
        )

    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    start_epoch = 0
    if resume:
        checkpoint = load_checkpoint(out_dir / LAST)
        _check_resumable(checkpoint["config"], config, out_dir / LAST)
        load_weights(owner, checkpoint["model"], strict=True)
        if optimizer is not None:
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
        restore_rng_state(checkpoint["rng"])
        history, best, start_epoch = checkpoint["history"], checkpoint["best"], checkpoint["epoch"]
        logger.info("resuming %s after epoch %d of %d", out_dir, start_epoch, config.epochs)

    # DDP averages gradients; calibration has none, so its replicas are averaged after each step.
    step_module = model
    if ctx.distributed and not calibrating:
        device_ids = [ctx.device] if ctx.device.type == "cuda" else None
        step_module = DistributedDataParallel(model, device_ids=device_ids)
    after_step = (
        (lambda: average_floating_state(owner)) if ctx.distributed and calibrating else None
    )

    train_sampler = DistributedSampler(
        train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=config.seed
    )
    # Calibration keeps every item; training drops a ragged last batch (BatchNorm needs > 1).
    train_loader = _loader(train_set, config, train_sampler, drop_last=not calibrating)
    if len(train_loader) == 0:
        raise DataError(
            f"the training set ({len(train_set)} items over {ctx.world_size} processes) is "
            f"smaller than one batch of {config.batch_size}; lower --batch-size"
        )
    metric = primary_metric(config.task)
    show = progress and ctx.is_main
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, config.epochs):
            started = time.perf_counter()
            seed_epoch(config.seed, epoch, ctx.rank)
            train_sampler.set_epoch(epoch)
            quant_state = _start_epoch(model, epoch, config)
            phase = "calibrate" if calibrating else "train"
            train_metrics = run_epoch(
                step_module,
                train_loader,
                config,
                ctx.device,
                optimizer=optimizer,
                after_step=after_step,
                progress=show,
                desc=f"{config.mode} {phase} {epoch + 1}/{config.epochs}",
            )
            record: dict[str, Any] = {"epoch": epoch + 1, **quant_state}
            if optimizer is not None:
                record["lr"] = optimizer.param_groups[0]["lr"]
                scheduler.step()
            val_metrics = evaluate(model, val_set, config, ctx, progress=show)
            record.update({f"train_{k}": v for k, v in train_metrics.items()})
            record.update({f"val_{k}": v for k, v in val_metrics.items()})
            if ctx.distributed:
                record["replica_divergence"] = replica_divergence(owner)
            record["time_s"] = time.perf_counter() - started
            history.append(record)
            improved = best is None or record[f"val_{metric}"] > best[f"val_{metric}"]
            if improved:
                best = record
            if ctx.is_main:
                logger.info(_describe(record, config))
                if out_dir is not None:
                    state = {
                        "format": CHECKPOINT_FORMAT,
                        "model": owner.state_dict(),
                        "optimizer": optimizer.state_dict() if optimizer else None,
                        "scheduler": scheduler.state_dict() if scheduler else None,
                        "epoch": epoch + 1,
                        "world_size": ctx.world_size,
                        "rng": capture_rng_state(),
                        "config": config.to_dict(),
                        "history": history,
                        "best": best,
                    }
                    _write_epoch(out_dir, state, improved)
    except KeyboardInterrupt:
        if ctx.is_main and out_dir is not None:
            saved = f"{out_dir / LAST} holds epoch {epoch}" if epoch else "no epoch had finished"
            logger.warning(
                "interrupted during epoch %d; %s; continue with --resume", epoch + 1, saved
            )
        raise
    return FitResult(history, best, out_dir)


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


def load_run_config(out_dir: str | os.PathLike) -> TrainConfig:
    """The settings a run in out_dir was started with (from its last.pth)."""
    saved = load_checkpoint(Path(out_dir) / LAST)["config"]
    return TrainConfig(**saved)
