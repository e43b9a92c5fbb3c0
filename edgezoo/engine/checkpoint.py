"""Checkpoints: written atomically with torch.save, read with edgezoo.hub.read_checkpoint
(weights_only). The run folder's rules live in run_dir.py, the random generators in rng.py and
atomic file writes in edgezoo.fileio; their names are still importable from here."""

import os
from pathlib import Path
from typing import Any

import torch

from edgezoo.engine.rng import capture_rng_state, restore_rng_state, seed_epoch, seed_everything
from edgezoo.engine.run_dir import (
    BEST,
    LAST,
    METRICS_CSV,
    METRICS_JSON,
    RUN_FILES,
    check_run_dir,
    clear_run_dir,
    holds_run,
    prepare_run_dir,
    remove_stale_run_partials,
)
from edgezoo.fileio import atomic_write, write_json_atomic, write_text_atomic
from edgezoo.hub import read_checkpoint

__all__ = [
    "BEST",
    "LAST",
    "METRICS_CSV",
    "METRICS_JSON",
    "RUN_FILES",
    "capture_rng_state",
    "check_run_dir",
    "clear_run_dir",
    "holds_run",
    "prepare_run_dir",
    "read_checkpoint",
    "remove_stale_run_partials",
    "restore_rng_state",
    "save_checkpoint",
    "seed_epoch",
    "seed_everything",
    "write_json_atomic",
    "write_text_atomic",
]


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """torch.save a checkpoint dict atomically."""
    atomic_write(Path(path), lambda f: torch.save(state, f), _tensor_bytes(state))


def _tensor_bytes(value: Any) -> int:
    """The bytes of every tensor inside nested dicts and lists (a checkpoint's size, roughly)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_tensor_bytes(v) for v in value)
    return 0
