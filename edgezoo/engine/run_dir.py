"""A run's folder: which files make a run, and the rules that keep a new run from mixing into
(or silently replacing) an old one."""

import logging
import os
from pathlib import Path

from edgezoo.errors import RunExistsError
from edgezoo.fileio import remove_stale_partials

logger = logging.getLogger(__name__)

__all__ = [
    "BEST",
    "HELD_OUT",
    "LAST",
    "METRICS_CSV",
    "METRICS_JSON",
    "RUN_FILES",
    "TEST_METRICS",
    "check_run_dir",
    "clear_run_dir",
    "holds_run",
    "prepare_run_dir",
    "remove_stale_run_partials",
]

LAST = "last.pth"
BEST = "best.pth"
METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
HELD_OUT = "held_out.json"
TEST_METRICS = "test_metrics.json"
RUN_FILES = (LAST, BEST, METRICS_CSV, METRICS_JSON, HELD_OUT, TEST_METRICS)


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
