"""Where a benchmark ran, for its report: figures mean little without the machine behind them."""

import os
import platform
import subprocess
from typing import Any

import torch


def _cpu_model_name() -> str:
    """The CPU model name from lscpu (platform's guess where lscpu is missing)."""
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    for line in output.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine_description() -> dict[str, Any]:
    """CPU model, core count, torch threads and versions: where the figures were measured."""
    return {
        "cpu": _cpu_model_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
