"""Atomic file replacement: an interrupted write leaves the old file or the new, never half.

A write goes to a temporary `.<name>.<pid>.<random>.partial` beside its target, then
os.replace moves it into place. A process killed mid-write leaves that file behind;
remove_stale_partials deletes the ones whose writing process no longer runs.
"""

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgezoo.errors import DiskFullError, RunExistsError, UsageError

logger = logging.getLogger(__name__)

_PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{32}\.partial$")
_LEGACY_PARTIAL = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{32}\.partial$")
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp path beside path, os.replace it onto path on success, delete it on error.

    The caller creates the temp file with a plain open, so it gets the user's umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.partial")
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def remove_stale_partials(folder: str | os.PathLike, names: set[str] | None = None) -> list[Path]:
    """Delete the temporary files in folder left by writers that are no longer running.

    names: only the partials of these target file names (default: every partial). Returns the
    files removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        match = _PARTIAL.match(entry.name) or _LEGACY_PARTIAL.match(entry.name)
        if match is None or (names is not None and match["name"] not in names):
            continue
        pid = match.groupdict().get("pid")
        if pid is not None and _is_running(int(pid)):
            continue
        entry.unlink(missing_ok=True)
        removed.append(entry)
    if removed:
        logger.info("removed %d stale partial file(s) in %s", len(removed), folder)
    return removed


def _is_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_disk_full(err: BaseException, folder: str | os.PathLike, needed_bytes: int = 0) -> bool:
    """Whether a failed write was (most likely) the disk running full.

    torch.save reports a full disk as a RuntimeError ("unexpected pos ..."), so besides
    ENOSPC/EDQUOT a write error counts when the folder has less room than the file needs (or
    under 1 MB). The free space is measured after the partial file was deleted, which gives
    back what it held: a few MB free then still cannot hold a file of tens of MB.
    """
    if isinstance(err, OSError) and err.errno in _DISK_FULL_ERRNOS:
        return True
    if isinstance(err, OSError | RuntimeError):
        return free_bytes(folder) < max(1 << 20, needed_bytes)
    return False


def free_bytes(folder: str | os.PathLike) -> int:
    """Free bytes on the filesystem holding folder (its nearest existing parent)."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def disk_full_error(path: Path, needed_bytes: int, kept: str) -> DiskFullError:
    """The DiskFullError for a write of about needed_bytes to path; kept says what is intact."""
    free_mb = free_bytes(path.parent) / 2**20
    return DiskFullError(
        f"the disk holding {path.parent} is full ({free_mb:.0f} MB free) while writing "
        f"{path.name} (about {needed_bytes / 2**20:.0f} MB needed); {kept}. Free some space, "
        "then run again"
    )


def atomic_write(path: Path, write: Any, needed_bytes: int) -> None:
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
        if not is_disk_full(err, path.parent, needed_bytes):
            raise
        kept = (
            f"the previous {path.name} is intact (continue with --resume once there is room)"
            if path.exists()
            else f"no {path.name} was written"
        )
        raise disk_full_error(path, needed_bytes, kept) from err


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    data = text.encode("utf-8")
    atomic_write(Path(path), lambda f: f.write(data), len(data))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def writable_destination(path: str | os.PathLike) -> Path:
    """path as the file an export writes, checked before any work: not a folder, and in a
    folder this process may write (UsageError naming it, never a raw OSError later)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a folder: give the file to write, e.g. {path / 'model.onnx'}")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(
            f"{folder} cannot be written (read-only or no permission): choose another path for "
            f"{path.name}"
        )
    return path


LOCK_NAME = ".edgezoo.lock"
"""The file that marks a folder as being written by one edgezoo process."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold `folder` for one writer: a second edgezoo process writing there is refused (naming
    the holder) instead of silently replacing its files. A lock whose process is gone (killed)
    is stale and taken over. The folder is created if needed; the lock is removed on exit."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(
            f"cannot create the output folder {folder} ({err.strerror or err}): choose another"
        ) from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{folder} cannot be written (read-only or no permission): choose another")
    lock = folder / LOCK_NAME
    record = {"pid": os.getpid(), "host": os.uname().nodename, "what": what}
    while True:
        try:
            with open(lock, "x", encoding="utf-8") as handle:
                json.dump(record, handle)
            break
        except FileExistsError:
            _refuse_or_clear(lock, folder)
    try:
        yield lock
    finally:
        lock.unlink(missing_ok=True)


def _refuse_or_clear(lock: Path, folder: Path) -> None:
    """A live holder of `lock` is refused with its pid and task; a dead one's lock is removed."""
    try:
        holder = json.loads(lock.read_text("utf-8"))
        pid, host = int(holder["pid"]), str(holder["host"])
    except (OSError, ValueError, KeyError, TypeError):
        holder, pid, host = {}, None, None
    if pid is not None and host == os.uname().nodename and not _is_running(pid):
        logger.warning("removing the stale lock %s of process %d, which is gone", lock, pid)
        lock.unlink(missing_ok=True)
        return
    who = f"process {pid} on {host} ({holder.get('what', 'edgezoo')})" if pid else "another process"
    raise RunExistsError(
        f"{folder} is being written by {who}: wait for it to finish, or choose another output "
        f"folder. If no such process runs, delete {lock}"
    )
