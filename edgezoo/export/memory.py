"""Memory an export needs, estimated before it traces: refused when the machine cannot hold it.

An export runs the model (and its QAT form in float64 where it evaluates exactly), onnxruntime
and the integer simulation with every layer recorded in two arithmetics, all at the example's
size. The activations are measured with forward hooks on a smaller probe of the same aspect
(activation sizes scale with the pixel count), so nothing large is allocated to find out.
"""

import logging
import math

import torch
from torch import Tensor, nn

from edgezoo.errors import MemoryBudgetError
from edgezoo.module_state import kept_modes
from edgezoo.simulation.memory import available_memory

__all__ = ["check_export_memory"]

logger = logging.getLogger(__name__)

_PROBE_PIXELS = 128 * 128
_CHECKED_FROM = 512 * 512
"""Exports up to this many pixels are not estimated (they fit any machine edgezoo runs on)."""
_COPIES = 6
"""Float64 values of every activation held at once, at worst: PyTorch's deploy and QAT
forwards, onnxruntime, and the simulator's two recorded arithmetics (its integers and QAT's)."""


def check_export_memory(model: nn.Module, example: Tensor) -> None:
    """Raise MemoryBudgetError when exporting at the example's size would not fit in memory."""
    height, width = example.shape[-2:]
    free = available_memory()
    if free is None or height * width <= _CHECKED_FROM:
        return
    shrink = 2 ** math.ceil(math.log2(math.sqrt(height * width / _PROBE_PIXELS)))
    probe = torch.zeros(1, example.shape[1], max(1, height // shrink), max(1, width // shrink))
    elements = _activation_elements(model, probe.to(example.device))
    if elements is None:
        return
    needed = elements * shrink * shrink * 8 * _COPIES
    if needed > free * 0.8:
        raise MemoryBudgetError(
            f"exporting at {height}x{width} would need about {needed / 2**30:.0f} GiB (its "
            f"activations held in float64 by PyTorch, onnxruntime and the integer check), and "
            f"{free / 2**30:.1f} GiB is available: export at a smaller input size (the graph's "
            "input is static; TIDL runs the size it was exported at)"
        )


def _activation_elements(model: nn.Module, probe: Tensor) -> int | None:
    """Elements of every leaf output of one forward on `probe` (None if the model does not
    run at the probe's size: the estimate is then skipped)."""
    total = [0]

    def count(_module: nn.Module, _inputs, output) -> None:
        if isinstance(output, Tensor):
            total[0] += output.numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [leaf.register_forward_hook(count) for leaf in leaves]
    try:
        with kept_modes(model), torch.no_grad():
            model.eval()(probe)
    except (RuntimeError, ValueError) as err:  # a size-bound model: no estimate, no refusal
        logger.debug("no memory estimate at %s: %s", tuple(probe.shape), err)
        return None
    finally:
        for handle in handles:
            handle.remove()
    return total[0]
