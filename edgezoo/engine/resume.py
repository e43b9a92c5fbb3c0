"""What a resumed run must keep from its start, one rule for fit(resume=True) and the CLI."""

import os
from pathlib import Path
from typing import Any

from edgezoo.engine.config import TrainConfig
from edgezoo.engine.run_dir import LAST
from edgezoo.errors import ResumeMismatchError
from edgezoo.hub import read_checkpoint

__all__ = ["FIXED_ON_RESUME", "check_resumable", "load_run_config", "resume_differences"]

FIXED_ON_RESUME: tuple[str, ...] = (
    "task",
    "mode",
    "num_classes",
    "batch_size",
    "lr",
    "seed",
    "optimizer",
    "momentum",
    "weight_decay",
    "schedule",
    "warmup_epochs",
    "step_size",
    "gamma",
    "label_smoothing",
    "max_batches",
    "bn_freeze_epoch",
    "range_freeze_epoch",
    "distill",
    "labels",
    "distill_temperature",
    "distill_weight",
    "range_lr",
    "model",
    "data",
    "input_size",
    "validation_split",
    "quantization",
)
"""What a resumed run keeps from its start: TrainConfig fields, then metadata keys (the same
rule for fit(resume=True) and `edgezoo train --resume`; epochs may change, extending it)."""


def resume_differences(saved: dict[str, Any], given: dict[str, Any]) -> dict[str, tuple]:
    """The fixed settings whose value in `given` (fields and metadata together, only those
    present) differs from the saved run's: key -> (saved, given)."""
    saved = {**saved, **saved.get("metadata", {})}
    return {
        key: (saved.get(key), given[key])
        for key in FIXED_ON_RESUME
        if key in given and saved.get(key) != given[key]
    }


def check_resumable(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    given = {**config.to_dict(), **config.metadata}
    given = {key: value for key, value in given.items() if key != "metadata"}
    differ = resume_differences(saved, given)
    if differ:
        listed = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in differ.items())
        raise ResumeMismatchError(
            f"cannot resume {path}: the run was started with other settings ({listed}); "
            "resume with the same settings or start a new run in another directory"
        )


def load_run_config(out_dir: str | os.PathLike) -> TrainConfig:
    """The settings a run in out_dir was started with (from its last.pth)."""
    saved = read_checkpoint(Path(out_dir) / LAST)["config"]
    return TrainConfig(**saved)
