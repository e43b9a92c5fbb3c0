"""Checkpoints written atomically (temp file + os.replace), RNG state, and run-directory rules."""

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgezoo.errors import RunExistsError
from edgezoo.fileio import atomic_path, disk_full_error, is_disk_full, remove_stale_partials
from edgezoo.hub import load_checkpoint

logger = logging.getLogger(__name__)

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
    "load_checkpoint",
    "prepare_run_dir",
    "remove_stale_run_partials",
    "restore_rng_state",
    "save_checkpoint",
    "seed_epoch",
    "seed_everything",
    "write_json_atomic",
    "write_text_atomic",
]

LAST = "last.pth"
BEST = "best.pth"
METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
RUN_FILES = (LAST, BEST, METRICS_CSV, METRICS_JSON)


def _atomic_write(path: Path, write: Any, needed_bytes: int) -> None:
    """Call write(file) on a temp file beside path, fsync it, then os.replace it onto path.

    A full disk raises DiskFullError saying where, how much the file needs, and that the file
    it would have replaced is intact.
    """
    try:
        with atomic_path(path) as temp, open(temp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as err:
        if not is_disk_full(err, path.parent):
            raise
        kept = (
            f"the previous {path.name} is intact (continue with --resume once there is room)"
            if path.exists()
            else f"no {path.name} was written"
        )
        raise disk_full_error(path, needed_bytes, kept) from err


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """torch.save a checkpoint dict atomically."""
    _atomic_write(Path(path), lambda f: torch.save(state, f), _tensor_bytes(state))


def _tensor_bytes(value: Any) -> int:
    """The bytes of every tensor inside nested dicts and lists (a checkpoint's size, roughly)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    data = text.encode("utf-8")
    _atomic_write(Path(path), lambda f: f.write(data), len(data))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def capture_rng_state() -> dict[str, Any]:
    """The state of every random generator the engine's runs draw from."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back the generators captured by capture_rng_state."""
    torch.set_rng_state(state["torch"])
    version, *rest = state["python"]
    random.setstate((version, tuple(rest[0]), rest[1]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed torch, Python and NumPy, e.g. before building a model from random initialisation."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Seed every generator from (seed, epoch, rank), so an epoch's randomness does not depend
    on what ran before it: a resumed run repeats the uninterrupted one exactly."""
    mixed = np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0]
    torch.manual_seed(int(mixed))
    random.seed(int(mixed))
    np.random.seed(int(mixed))


def holds_run(out_dir: Path) -> bool:
    """Whether a directory already holds a run's checkpoint or metrics."""
    return any((out_dir / name).exists() for name in RUN_FILES)


def check_run_dir(out_dir: str | os.PathLike, *, resume: bool, overwrite: bool) -> Path:
    """Refuse to mix a new run into an old one; change nothing on disk.

    resume: the directory must hold last.pth. Otherwise it must hold no run unless overwrite.
    Every rank of a distributed run calls it before rank 0 changes anything.
    """
    out_dir = Path(out_dir).expanduser()
    if resume and overwrite:
        raise RunExistsError("pass --resume or --overwrite, not both")
    folders = [name for name in RUN_FILES if (out_dir / name).is_dir()]
    if folders:
        raise RunExistsError(
            f"{out_dir} holds folders named like run files ({', '.join(folders)}); edgezoo "
            "deletes files, never folders: move them, or choose another --out"
        )
    if resume:
        if not (out_dir / LAST).is_file():
            raise RunExistsError(
                f"nothing to resume: {out_dir / LAST} does not exist; start a new run without "
                "--resume"
            )
    elif holds_run(out_dir) and not overwrite:
        present = ", ".join(name for name in RUN_FILES if (out_dir / name).exists())
        raise RunExistsError(
            f"{out_dir} already holds a run ({present}); pass --resume to continue it, "
            "--overwrite to replace it, or choose another --out"
        )
    return out_dir


def remove_stale_run_partials(out_dir: str | os.PathLike) -> None:
    """Delete the temporary files a killed process left while writing this run's files."""
    remove_stale_partials(out_dir, set(RUN_FILES))


def clear_run_dir(out_dir: str | os.PathLike) -> Path:
    """Create out_dir and remove a previous run's files from it (nothing else is touched)."""
    out_dir = Path(out_dir).expanduser()
    removed = [name for name in RUN_FILES if (out_dir / name).exists()]
    for name in removed:
        (out_dir / name).unlink()  # check_run_dir refused folders
    if removed:
        logger.info("removed the previous run's %s from %s", ", ".join(removed), out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def prepare_run_dir(out_dir: str | os.PathLike, *, resume: bool, overwrite: bool) -> Path:
    """check_run_dir, then (for a new run) clear_run_dir: the single-process shortcut."""
    out_dir = check_run_dir(out_dir, resume=resume, overwrite=overwrite)
    return out_dir if resume else clear_run_dir(out_dir)
