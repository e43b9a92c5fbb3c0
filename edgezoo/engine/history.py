"""Per-epoch metrics written to CSV (for spreadsheets) and JSON (for programs), atomically."""

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgezoo.engine.run_dir import METRICS_CSV, METRICS_JSON
from edgezoo.fileio import write_json_atomic, write_text_atomic


def history_csv(history: Sequence[Mapping[str, Any]]) -> str:
    """The history as CSV text: one row per epoch, columns in first-seen order."""
    columns: list[str] = []
    for record in history:
        columns.extend(key for key in record if key not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for record in history:
        writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in record.items()})
    return buffer.getvalue()


def write_history(
    out_dir: str | os.PathLike,
    history: Sequence[Mapping[str, Any]],
    config: Mapping[str, Any],
    best: Mapping[str, Any] | None,
) -> None:
    """Write metrics.csv and metrics.json (history, best epoch and the run's settings)."""
    out_dir = Path(out_dir)
    write_text_atomic(out_dir / METRICS_CSV, history_csv(history))
    write_json_atomic(
        out_dir / METRICS_JSON,
        {"config": dict(config), "best": dict(best) if best else None, "history": list(history)},
    )
