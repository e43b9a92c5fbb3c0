"""Checkpoints: written atomically with torch.save (read back with edgezoo.hub.read_checkpoint,
weights_only)."""

import os
from pathlib import Path
from typing import Any

import torch

from edgezoo.fileio import atomic_write

__all__ = ["save_checkpoint"]


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
